"""Spark engine (local Spark, ``$BRONZE_SPARK_MASTER``, default local[CPU count]) next to the local
engine, in one run: the initial load of all ten tables and one hourly tick (bench_ingest's change
model on inventory, order_details and orders), each engine into its own bronze root from the same
source. A report, no target: two cores are not a cluster.

    python benchmarks/bench_spark.py --scales 1 10 [--json out.json]

Each engine runs in its own process (the phases), so Spark's JVM start is counted in its times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest  # the seed, COPY and tick phases, the phase runner

PHASE_SCRIPT = Path(__file__).resolve()
TICK_TABLES = bench_ingest.TICK_TABLES


def _windows(name: str, tick: bool) -> tuple[tuple[datetime, datetime] | None, bool]:
    """The partition a scheduled run loads (the open day or month; the go-live day is today) and
    whether it reads only the changes (the hourly tick), as the Dagster schedule does."""
    from bronze_assets.contracts import CONTRACTS, PartitionKind
    from bronze_assets.lib.load import month_start, next_month
    from bronze_assets.settings import Settings

    contract, now = CONTRACTS[name], datetime.now(UTC)
    kind = contract.partitioning.kind
    if kind is PartitionKind.NONE:
        return None, False
    if kind is PartitionKind.MONTHLY_BUSINESS_DATE:
        first = datetime.combine(Settings.from_env().partitions_start, datetime.min.time(), UTC)
        return ((month_start(now), next_month(now)) if tick else (first, next_month(now))), tick
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return (day, day + timedelta(days=1)), tick


def phase_engine(engine: str, tables: list[str], tick: bool) -> dict:
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings, bronze_root

    dsn, root = resolve_source_dsn(Settings.from_env()), bronze_root()
    started = time.perf_counter()
    rows = written = 0
    if engine == "spark":
        from bronze_assets.lib.spark.load import SparkLoader
        from bronze_assets.lib.spark.session import spark_session
        from bronze_assets.settings import Settings

        loader = SparkLoader(spark_session(Settings.from_env(), "bench"), root)
        session_seconds = time.perf_counter() - started
        for name in tables:
            partition, changes_only = _windows(name, tick)
            result = loader.load(CONTRACTS[name], dsn, partition=partition, changes_only=changes_only)
            rows += result.rows
            written += result.merge.inserted + result.merge.updated + result.merge.soft_deleted
    else:
        from bronze_assets.lib.delta.merger import BronzeMerger
        from bronze_assets.lib.load import extract_and_stage

        session_seconds = 0.0
        for name in tables:
            contract = CONTRACTS[name]
            partition, changes_only = _windows(name, tick)
            staged = extract_and_stage(contract, dsn, root, partition=partition, changes_only=changes_only)
            try:
                merged = BronzeMerger(contract, root).merge(staged)
            finally:
                staged.cleanup()
            rows += staged.rows
            written += merged.inserted + merged.updated + merged.soft_deleted
    return {"seconds": time.perf_counter() - started, "session_seconds": session_seconds, "rows": rows,
            "written": written, "rss_mb": bench_ingest._rss_mb()}


def bench(scale: float) -> dict[str, Any]:
    from bronze_assets.contracts import CONTRACTS

    results: dict[str, Any] = {}
    with bench_ingest.scratch_source("bench-spark-") as (tmp, env):
        results["rows"] = bench_ingest.run_phase("seed", env, "--scale", str(scale))["rows"]
        results["copy"] = bench_ingest.run_phase("copy", env)
        everything = ",".join(CONTRACTS)
        for engine in ("local", "spark"):
            results[f"{engine}_initial"] = bench_ingest.run_phase(
                "engine", env | {"BRONZE_ROOT": f"{tmp}/{engine}"}, "--engine", engine,
                "--tables", everything, script=PHASE_SCRIPT)
        bench_ingest.run_phase("tick", env, "--variant", "uniform", "--tick", "0",
                               "--state", f"{tmp}/deleted.json")
        for engine in ("local", "spark"):
            results[f"{engine}_tick"] = bench_ingest.run_phase(
                "engine", env | {"BRONZE_ROOT": f"{tmp}/{engine}"}, "--engine", engine,
                "--tables", ",".join(TICK_TABLES), "--tick", script=PHASE_SCRIPT)
    copy = results["copy"]["wall"]
    print(f"\nscale {scale:g}: {results['rows']:,} rows, COPY {copy:.1f} s", file=sys.stderr)
    for key in ("local_initial", "spark_initial", "local_tick", "spark_tick"):
        r = results[key]
        print(f"  {key:14s} {r['wall']:7.1f} s  ({r['wall'] / copy:4.1f}× COPY; Spark session "
              f"{r['session_seconds']:.1f} s)  rows read {r['rows']:>10,}  written {r['written']:>10,}  "
              f"peak RSS (driver) {r['rss_mb']:.0f} MB", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--phase", choices=["engine"])
    parser.add_argument("--engine", choices=["local", "spark"])
    parser.add_argument("--tables")
    parser.add_argument("--tick", action="store_true")
    args = parser.parse_args()
    if args.phase == "engine":
        print(json.dumps(phase_engine(args.engine, args.tables.split(","), args.tick)))
        return
    out = {str(s): bench(s) for s in args.scales}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
