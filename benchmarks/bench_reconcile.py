"""Reconciliation benchmark (issue #25): ``bronze reconcile`` of all ten tables with nothing wrong,
against the unchanged re-load of the same run, and the source's CPU against a raw COPY.

On a fresh embedded PostgreSQL seeded at the given scale (go-live today, as bench_ingest): raw
binary COPY of the ten tables (psql → /dev/null; again at the end: "PG cpu x COPY" divides by
their median), the initial load through Dagster (no checks),
then ``rounds`` times: an unchanged re-load, and a reconcile of the ten tables (one source snapshot,
the local engine's DataFusion side), which must find nothing. Then the floors of hashing in SQL,
one pass over the ten tables each: the §2.2 hash of every row alone (no buckets, no checksums), and
md5 over each row's own text (``md5(t::text)``: one rendering of the row, no lengths). Each phase
runs in a process of its own; "wall s" is in-process after imports, "cpu s" the phase process's
user+sys (imports included), "PG cpu s" the PostgreSQL server's CPU during the phase, read from
``/proc``.

Usage: python benchmarks/bench_reconcile.py [--scale 10] [--rounds 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest  # the seed, copy and load phases, the phase runner, the scratch source

SCRIPT = Path(__file__).resolve()


def phase_reconcile() -> dict[str, Any]:
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.delta.storage import Storage
    from bronze_assets.lib.reconcile import reconcile
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings

    settings = Settings.from_env()
    dsn, storage = resolve_source_dsn(settings), Storage(settings.bronze_root, settings=settings)
    started = time.perf_counter()
    run = reconcile(list(CONTRACTS.values()), dsn, storage)
    seconds = time.perf_counter() - started
    if not run.healthy or any(t.mismatches for t in run.tables):
        raise SystemExit(f"reconcile found differences in an unchanged bronze: {run.as_json()}")
    return {"seconds": seconds, "rows": sum(t.source_rows for t in run.tables),
            "buckets": sum(t.buckets_compared for t in run.tables),
            "tables": {t.table: round(t.seconds, 2) for t in run.tables}}


FLOORS = {"hash": "the §2.2 hash alone", "md5row": "md5(row::text)"}


def phase_floor(kind: str) -> dict[str, Any]:
    """One pass over the ten tables computing only the hash of ``kind`` (see :data:`FLOORS`)."""
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.source.ddl import qualified
    from bronze_assets.lib.source.postgres import connect, resolve_source_dsn
    from bronze_assets.lib.source.pushdown import hash_sql
    from bronze_assets.settings import Settings

    started = time.perf_counter()
    with connect(resolve_source_dsn(Settings.from_env()), autocommit=True) as conn, conn.cursor() as cur:
        for contract in CONTRACTS.values():
            expr = hash_sql(contract) if kind == "hash" else "md5(t::text)"
            table = qualified(contract.source_schema, contract.source_name)
            cur.execute(f"SELECT count({expr}) FROM {table} t")
            cur.fetchall()
    return {"seconds": time.perf_counter() - started}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench(scale: float, rounds: int) -> dict[str, Any]:
    with bench_ingest.scratch_source("bench-reconcile-") as (tmp, env):
        root = Path(tmp) / "bronze"
        env = env | {"BRONZE_ROOT": str(root)}
        pgdata = Path(tmp) / "data" / "pgdata"
        results: dict[str, Any] = {"load": os.getloadavg()}

        def phase(label: str, name: str, script: Path = bench_ingest.PHASE_SCRIPT) -> dict[str, Any]:
            pg, cpu = bench_ingest.pg_cpu_seconds(pgdata), _children_cpu()
            result = bench_ingest.run_phase(name, env, script=script)
            after = bench_ingest.pg_cpu_seconds(pgdata)
            result["pg_cpu_seconds"] = None if pg is None or after is None else after - pg
            result["cpu_seconds"] = _children_cpu() - cpu
            results.setdefault(label, []).append(result)
            print(f"  {label}: {result['wall']:.1f} s, cpu {result['cpu_seconds']:.1f} s, "
                  f"PG cpu {result['pg_cpu_seconds']:.2f} s", file=sys.stderr, flush=True)
            return result

        bench_ingest.run_phase("seed", env, "--scale", str(scale), script=bench_ingest.PHASE_SCRIPT)
        phase("copy", "copy")
        phase("initial", "load")
        for _ in range(rounds):
            phase("unchanged", "load")
            phase("reconcile", "reconcile", script=SCRIPT)
        for kind in FLOORS:
            phase(kind, f"floor-{kind}", script=SCRIPT)
        phase("copy", "copy")  # again, pages warm like the others' (the first also sets hint bits)
        results["load_after"] = os.getloadavg()
        return results


def report(scale: float, results: dict[str, Any]) -> None:
    copy_cpu = statistics.median(r["pg_cpu_seconds"] for r in results["copy"])
    print(f"\nscale {scale:g}; load average before {results['load'][0]:.1f}, "
          f"after {results['load_after'][0]:.1f} (2 cores)")
    print(f"{'phase':<10} {'wall s':>14} {'cpu s':>14} {'PG cpu s':>14} {'PG cpu x COPY':>14} {'RSS MB':>8}")
    for label in ("copy", "initial", "unchanged", "reconcile", *FLOORS):
        runs = results[label]

        def cells(key: str, runs: list[dict[str, Any]] = runs) -> str:
            values = [r[key] for r in runs if r.get(key) is not None]
            return "/".join(f"{v:.1f}" for v in values) or "-"

        ratio = "/".join(f"{r['pg_cpu_seconds'] / copy_cpu:.2f}" for r in runs)
        rss = max(r["rss_mb"] for r in runs)
        print(f"{label:<10} {cells('wall'):>14} {cells('cpu_seconds'):>14} {cells('pg_cpu_seconds'):>14} "
              f"{ratio:>14} {rss:>8.0f}")
    rec = [r["wall"] for r in results["reconcile"]]
    same = [r["wall"] for r in results["unchanged"]]
    ratio = statistics.median(rec) / statistics.median(same)
    print(f"reconcile / unchanged re-load (wall, median): {ratio:.2f}")
    cpu = [r["cpu_seconds"] + r["pg_cpu_seconds"] for r in results["reconcile"]]
    same_cpu = [r["cpu_seconds"] + r["pg_cpu_seconds"] for r in results["unchanged"]]
    print(f"reconcile / unchanged re-load (client + PG cpu, median): "
          f"{statistics.median(cpu) / statistics.median(same_cpu):.2f}")
    print("per table (s, last reconcile): " + ", ".join(
        f"{t} {s}" for t, s in results["reconcile"][-1]["tables"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--phase", choices=["reconcile", *(f"floor-{k}" for k in FLOORS)])
    args = parser.parse_args()
    if args.phase:
        result = phase_reconcile() if args.phase == "reconcile" else phase_floor(args.phase.split("-", 1)[1])
        result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    results = bench(args.scale, args.rounds)
    report(args.scale, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
