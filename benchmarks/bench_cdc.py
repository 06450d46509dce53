"""Log-based CDC vs the watermark pattern: the hourly tick of inventory, order_details and orders
with the same absolute number of changed rows at scale 1 and scale 10. With CDC the tick should
cost the change, not the table (issue #13: within 30 % between the scales). One run, a report.

    python benchmarks/bench_cdc.py --scales 1 10 [--changes 600] [--rounds 3] [--scattered] [--optimize]
                                   [--json out.json]

``--scattered`` updates keys spread over the whole table instead of the oldest ones;
``--optimize`` runs the maintenance OPTIMIZE Z-ORDER on both bronze roots before the ticks.

Each phase runs in its own process (bench_ingest's runner); both variants load the same source
into their own bronze roots. A tick is measured ``--rounds`` times (a change, then both ticks),
and its median is compared: one tick varies by ±20 % from run to run on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest  # the seed phase, the phase runner
import bench_spark  # the watermark loads (library path) with the schedule's windows

PHASE_SCRIPT = Path(__file__).resolve()
TABLES = bench_ingest.TICK_TABLES


def phase_cdc(tables: list[str]) -> dict:
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.cdc import cdc_load
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings, bronze_root

    dsn, root = resolve_source_dsn(Settings.from_env()), bronze_root()
    started = time.perf_counter()
    rows = written = 0
    modes = set()
    for name in tables:
        batch, merged = cdc_load(CONTRACTS[name], dsn, root)
        modes.add(batch.mode)
        rows += merged.rows_read
        written += merged.inserted + merged.updated + merged.soft_deleted
    return {"seconds": time.perf_counter() - started, "rows": rows, "written": written,
            "modes": sorted(modes)}


def phase_maintain(tables: list[str]) -> dict:
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.delta.maintenance import maintain_table
    from bronze_assets.settings import bronze_root

    started = time.perf_counter()
    for name in tables:
        maintain_table(bronze_root(), CONTRACTS[name].bronze_table, CONTRACTS[name])
    return {"seconds": time.perf_counter() - started}


def phase_change(tables: list[str], changes: int, scattered: bool = False) -> dict:
    """The same absolute change at any scale: per table ``changes`` keys, 80 % updated (some
    twice), 10 % deleted, 10 % inserted. The updated keys are the oldest ones, or with
    ``scattered`` spread evenly over the table."""
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.source.postgres import connect, resolve_source_dsn
    from bronze_assets.settings import Settings

    updates, deletes, inserts = int(changes * 0.8), changes // 10, changes // 10
    with connect(resolve_source_dsn(Settings.from_env())) as conn, conn.cursor() as cur:
        for name in tables:
            c = CONTRACTS[name]
            pk, others = c.primary_key[0], [col for col in c.column_names if col not in (c.primary_key[0],
                                                                                          "updated_at")]
            cur.execute(f"SELECT max({pk}) FROM tests.{name}")
            (top,) = cur.fetchone()
            step = max(1, top // updates) if scattered else 1
            picked = f"(SELECT {pk} FROM tests.{name} WHERE {pk} % {step} = 0 ORDER BY {pk} LIMIT {updates})"
            cur.execute(f"UPDATE tests.{name} SET updated_at = now() WHERE {pk} IN {picked}")
            cur.execute(f"UPDATE tests.{name} SET updated_at = now() WHERE {pk} IN "
                        f"(SELECT {pk} FROM tests.{name} WHERE {pk} % {step} = 0 ORDER BY {pk} "
                        f"LIMIT {updates // 4})")
            cur.execute(f"DELETE FROM tests.{name} WHERE {pk} IN (SELECT {pk} FROM tests.{name} "
                        f"ORDER BY {pk} DESC LIMIT {deletes})")
            cols = ", ".join(others)
            cur.execute(f"INSERT INTO tests.{name} ({pk}, {cols}, updated_at) SELECT {pk} + {top}, {cols}, "
                        f"now() FROM tests.{name} ORDER BY {pk} LIMIT {inserts}")
        conn.commit()
    return {"changes": changes}


def bench(scale: float, changes: int, rounds: int, scattered: bool = False, optimize: bool = False
          ) -> dict[str, Any]:
    results: dict[str, Any] = {}
    tables = ",".join(TABLES)
    with bench_ingest.scratch_source("bench-cdc-") as (tmp, env):
        results["rows"] = bench_ingest.run_phase("seed", env, "--scale", str(scale))["rows"]
        cdc_env, mark_env = env | {"BRONZE_ROOT": f"{tmp}/cdc"}, env | {"BRONZE_ROOT": f"{tmp}/mark"}
        results["cdc_initial"] = bench_ingest.run_phase("cdc", cdc_env, "--tables", tables,
                                                        script=PHASE_SCRIPT)
        results["watermark_initial"] = bench_ingest.run_phase(
            "engine", mark_env, "--engine", "local", "--tables", tables, script=bench_spark.PHASE_SCRIPT)
        if optimize:
            for variant_env in (cdc_env, mark_env):
                bench_ingest.run_phase("maintain", variant_env, "--tables", tables, script=PHASE_SCRIPT)
        ticks: dict[str, list[dict]] = {"cdc_tick": [], "watermark_tick": []}
        for _ in range(rounds):
            time.sleep(1.0)  # the changes land after the last watermark
            bench_ingest.run_phase("change", env, "--tables", tables, "--changes", str(changes),
                                   *(["--scattered"] if scattered else []), script=PHASE_SCRIPT)
            ticks["cdc_tick"].append(bench_ingest.run_phase("cdc", cdc_env, "--tables", tables,
                                                            script=PHASE_SCRIPT))
            ticks["watermark_tick"].append(bench_ingest.run_phase(
                "engine", mark_env, "--engine", "local", "--tables", tables, "--tick",
                script=bench_spark.PHASE_SCRIPT))
        for key, runs in ticks.items():
            median = statistics.median(r["wall"] for r in runs)
            results[key] = min(runs, key=lambda r: abs(r["wall"] - median)) | {
                "wall": median, "rounds": [round(r["wall"], 3) for r in runs]}
    print(f"\nscale {scale:g}: {results['rows']:,} rows, {changes} changed keys per table", file=sys.stderr)
    for key in ("cdc_initial", "watermark_initial", "cdc_tick", "watermark_tick"):
        r = results[key]
        spread = f"  (rounds {', '.join(f'{w:.2f}' for w in r['rounds'])})" if "rounds" in r else ""
        print(f"  {key:18s} {r['wall']:7.2f} s  rows read {r['rows']:>10,}  written {r['written']:>8,}"
              f"{spread}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--changes", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3, help="ticks measured per scale (the median counts)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--scattered", action="store_true", help="update keys spread over the table")
    parser.add_argument("--optimize", action="store_true", help="OPTIMIZE Z-ORDER before the ticks")
    parser.add_argument("--phase", choices=["cdc", "change", "maintain"])
    parser.add_argument("--tables")
    args = parser.parse_args()
    if args.phase == "cdc":
        print(json.dumps(phase_cdc(args.tables.split(","))))
        return
    if args.phase == "change":
        print(json.dumps(phase_change(args.tables.split(","), args.changes, args.scattered)))
        return
    if args.phase == "maintain":
        print(json.dumps(phase_maintain(args.tables.split(","))))
        return
    runs = {scale: bench(scale, args.changes, args.rounds, args.scattered, args.optimize)
            for scale in args.scales}
    if len(runs) >= 2:
        small, large = runs[min(runs)], runs[max(runs)]
        for variant in ("cdc", "watermark"):
            ratio = large[f"{variant}_tick"]["wall"] / small[f"{variant}_tick"]["wall"]
            print(f"{variant} tick, scale {max(runs):g} / scale {min(runs):g}: {ratio:.2f}×", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2, default=str))


if __name__ == "__main__":
    main()
