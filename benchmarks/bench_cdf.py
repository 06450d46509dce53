"""The change data feed's cost on the initial load (issue #25: with CDF on ≤ 1.1× without): the
initial load of one table (default order_details) at one scale into an empty bronze root, with
``delta.enableChangeDataFeed`` on (as every bz_* table is) and off, ``--rounds`` times each,
alternating, each load in a process of its own; the medians are compared, of wall time and of the
load's CPU time (user+sys of its process, all threads: on a shared machine wall time moves with the
others' load, CPU time much less).

    python benchmarks/bench_cdf.py [--scale 1] [--table order_details] [--rounds 3] [--json out.json]

A first write records no ``_change_data`` files (a reader derives the inserts from the add
actions), so the feed should cost the initial load nothing but its table property; the MERGEs
that follow write their updates' pre- and postimages as well (not measured here).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest  # the seed phase, the phase runner, the scratch source

PHASE_SCRIPT = Path(__file__).resolve()
FEED = "delta.enableChangeDataFeed"


def phase_load(table: str, feed: bool, root: str) -> dict:
    """One initial load of ``table`` into the empty ``root``; with ``feed`` off, the table is created
    without the property (the load path is otherwise the same)."""
    from deltalake import DeltaTable

    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.delta import merger
    from bronze_assets.lib.delta.merger import BronzeMerger
    from bronze_assets.lib.load import extract_and_stage
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings

    if not feed:  # the same write, its configuration without the feed's property
        write = merger.write_deltalake

        def write_without_feed(*args: Any, configuration: dict[str, str] | None = None, **kwargs: Any) -> Any:
            rest = {k: v for k, v in (configuration or {}).items() if k != FEED} or None
            return write(*args, configuration=rest, **kwargs)

        merger.write_deltalake = write_without_feed
    contract = CONTRACTS[table]
    cpu = _cpu()
    started = time.perf_counter()
    staged = extract_and_stage(contract, resolve_source_dsn(Settings.from_env()), Path(root))
    try:
        staged_at = time.perf_counter()
        result = BronzeMerger(contract, Path(root)).merge(staged)
    finally:
        staged.cleanup()
    ended = time.perf_counter()
    cpu = _cpu() - cpu
    dt = DeltaTable(str(Path(root) / contract.bronze_table))
    on = str(dt.metadata().configuration.get(FEED, "")).lower() == "true"
    assert on == feed, f"the table's feed is {on}, expected {feed}"
    return {"seconds": ended - started, "write_seconds": ended - staged_at, "cpu_seconds": cpu,
            "rows": result.inserted,
            "change_data_files": sum(1 for _ in (Path(root) / contract.bronze_table).rglob("_change_data/*"))}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench(scale: float, table: str, rounds: int) -> dict:
    with bench_ingest.scratch_source("bench-cdf-") as (tmp, env):
        seeded = bench_ingest.run_phase("seed", env, "--scale", str(scale), script=bench_ingest.PHASE_SCRIPT)
        runs: dict[str, list[dict]] = {"on": [], "off": []}
        for index in range(rounds):
            for variant in ("off", "on") if index % 2 == 0 else ("on", "off"):
                root = tempfile.mkdtemp(prefix=f"bronze-{variant}-", dir=tmp)
                result = bench_ingest.run_phase("load", env, "--table", table, "--feed", variant,
                                                "--root", root, script=PHASE_SCRIPT)
                runs[variant].append(result)
                print(f"  {variant:>3}: {result['seconds']:.2f} s (write {result['write_seconds']:.2f} s, "
                      f"cpu {result['cpu_seconds']:.2f} s), "
                      f"{result['rows']:,} rows, {result['change_data_files']} _change_data files",
                      flush=True)
    out = {"scale": scale, "table": table, "rounds": rounds, "source_rows": seeded["rows"]}
    for variant, results in runs.items():
        out[variant] = {"median_seconds": round(statistics.median(r["seconds"] for r in results), 3),
                        "median_write_seconds":
                            round(statistics.median(r["write_seconds"] for r in results), 3),
                        "median_cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in results), 3),
                        "seconds": [round(r["seconds"], 3) for r in results],
                        "cpu_seconds": [round(r["cpu_seconds"], 3) for r in results]}
    out["ratio"] = round(out["on"]["median_seconds"] / out["off"]["median_seconds"], 3)
    out["cpu_ratio"] = round(out["on"]["median_cpu_seconds"] / out["off"]["median_cpu_seconds"], 3)
    out["write_ratio"] = round(out["on"]["median_write_seconds"] / out["off"]["median_write_seconds"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--table", default="order_details")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--feed", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "load":
        print(json.dumps(phase_load(args.table, args.feed == "on", args.root)))
        return
    out = bench(args.scale, args.table, args.rounds)
    print(f"\nscale {out['scale']:g}, initial load of {out['table']} (median of {out['rounds']}): "
          f"CDF on {out['on']['median_seconds']:.2f} s, off {out['off']['median_seconds']:.2f} s, "
          f"ratio {out['ratio']:.2f} (write only: {out['write_ratio']:.2f}); CPU on "
          f"{out['on']['median_cpu_seconds']:.2f} s, off {out['off']['median_cpu_seconds']:.2f} s, ratio "
          f"{out['cpu_ratio']:.2f} (target ≤ 1.1)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
