"""Landing benchmark (issue #24): the landing-zone files of ``shipment_events`` landed by the
product vs the raw lower bound vs dlt, in one run.

The files: ``bronze seed``'s event files at ``--scale`` (≈ 2 events per shipment, 45,000
shipments per scale unit, 5,000 events per file, the seed's value defects: NULL and unknown
statuses, orphan shipment ids, times that do not parse), each event with a carrier's payload
(≈ 1 KB: tracking number, carrier / scan / dimensions objects, a description, a signature) —
scale 10 ≈ 0.9 M events, ≈ 0.9 GB of JSON Lines. No bad lines, so that every reader reads them.

Phases, each in a process of its own (its peak RSS and CPU seconds are its own; wall time excludes
interpreter start-up and imports):
  ``raw``: ``polars.read_ndjson`` of the files, a group of ≈ 128 MB at a time, each group appended
  with ``deltalake.write_deltalake`` (schema merged): the lower bound — no validation, typing,
  metadata, score, dedup or ledger;
  ``product``: one landing run through the load lifecycle on the local engine (the files listed,
  read and typed, six payload fields added as columns with inferred types, every value rescued or
  scored, one record per key, the ledger in the data commit), checks left out;
  ``unchanged``: the same run again with no new file (the listing, then nothing to do);
  ``dlt``: dlt's ``filesystem`` source with ``read_jsonl`` into a Delta table on the local file
  system (``write_disposition="merge"`` on ``event_id``, as the product keeps one record per key)
  — needs ``pip install 'dlt[deltalake]'``; skipped otherwise.

Usage: python benchmarks/bench_landing.py [--scale 10] [--json FILE] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
GROUP_BYTES = 128 << 20


def _settings(work: Path) -> Any:
    from bronze_assets.settings import Settings

    return Settings(data_dir=work, bronze_root=str(work / "bronze"), landing_root=str(work / "landing"),
                    stage_dir=work / "stage")


def _files(work: Path) -> list[Path]:
    return sorted((work / "landing" / "shipment_events").rglob("*.jsonl"))


def phase_generate(work: Path, scale: float) -> dict:
    from bronze_assets.demo.event_files import write_event_files
    from bronze_assets.demo.generator import SeedOptions

    started = time.perf_counter()
    written = write_event_files(str(work / "landing"), round(45_000 * scale), SeedOptions(scale=scale),
                                payload=True, with_bad_lines=False)
    return {"seconds": time.perf_counter() - started, "events": written.events, "files": len(written.files),
            "bytes": sum(p.stat().st_size for p in _files(work))}


def phase_raw(work: Path) -> dict:
    import polars as pl
    from deltalake import write_deltalake

    started = time.perf_counter()
    rows, group, size = 0, [], 0
    target = str(work / "raw")

    def flush() -> int:
        frame = pl.concat([pl.read_ndjson(f) for f in group], how="diagonal_relaxed")
        write_deltalake(target, frame.to_arrow(), mode="append", schema_mode="merge")
        return frame.height

    for f in _files(work):
        group.append(f)
        size += f.stat().st_size
        if size >= GROUP_BYTES:
            rows += flush()
            group, size = [], 0
    if group:
        rows += flush()
    return {"seconds": time.perf_counter() - started, "rows": rows}


def phase_product(work: Path) -> dict:
    from bronze_assets.contracts import LANDING_CONTRACTS
    from bronze_assets.lib.delta.storage import Storage
    from bronze_assets.lib.load.engine import LocalEngine
    from bronze_assets.lib.load.landing_source import list_new_files
    from bronze_assets.lib.load.lifecycle import Lifecycle, LoadRequest

    settings = _settings(work)
    storage = Storage(settings.bronze_root, settings=settings)
    contract = LANDING_CONTRACTS["shipment_events"]
    started = time.perf_counter()
    listed = list_new_files(contract, storage)
    listing = time.perf_counter() - started
    started = time.perf_counter()
    report = Lifecycle(LoadRequest(contract, None), LocalEngine(storage), "", storage).run()
    seconds = time.perf_counter() - started
    meta = report.metadata
    return {"seconds": seconds, "listing_seconds": listing, "listed": len(listed.files),
            "files": meta.get("landing_files"), "rows": report.outcome.rows_read,
            "stage_seconds": report.outcome.extract_seconds,
            "merge_seconds": report.outcome.result.merge_seconds}


def phase_dlt(work: Path) -> dict:
    try:
        import dlt
        from dlt.sources.filesystem import filesystem, read_jsonl
    except ImportError:
        return {"skipped": "dlt is not installed: pip install 'dlt[deltalake]'"}
    started = time.perf_counter()
    files = filesystem(bucket_url=(work / "landing" / "shipment_events").as_uri(), file_glob="**/*.jsonl")
    events = (files | read_jsonl()).with_name("shipment_events")
    events.apply_hints(primary_key="event_id",
                       write_disposition={"disposition": "merge", "strategy": "upsert"})
    pipeline = dlt.pipeline(pipeline_name="bench_landing", pipelines_dir=str(work / "dlt_pipelines"),
                            destination=dlt.destinations.filesystem(bucket_url=(work / "dlt_lake").as_uri()),
                            dataset_name="bronze")
    pipeline.run(events, table_format="delta")
    counts = pipeline.last_trace.last_normalize_info.row_counts
    return {"seconds": time.perf_counter() - started,
            "rows": sum(n for t, n in counts.items() if not t.startswith("_dlt"))}


WARM = {  # what each phase imports (CPU seconds count the phase, not the imports)
    "generate": ["bronze_assets.demo.event_files"], "raw": ["polars", "deltalake"],
    # pandas: DuckDB's Arrow export imports it on first use
    "product": ["bronze_assets.lib.load.lifecycle", "bronze_assets.lib.load.engine", "pandas"],
    "unchanged": ["bronze_assets.lib.load.lifecycle", "bronze_assets.lib.load.engine", "pandas"],
    "dlt": ["dlt", "dlt.sources.filesystem", "deltalake"],
}
PHASES = {"generate": phase_generate, "raw": phase_raw, "product": phase_product, "unchanged": phase_product,
          "dlt": phase_dlt}


def run_phase(name: str, work: Path, *args: str) -> dict:
    """Run phase ``name`` in a process of its own; its last line of output is its JSON result."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--phase", name, "--work", str(work), *args],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"phase {name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child_phase(name: str, work: Path, scale: float) -> None:
    """Run one phase here: its result, CPU seconds (user + system of every thread, the phase only)
    and peak RSS (the process's, imports included)."""
    import resource

    for module in WARM[name]:  # imported before the clock starts, as the phase functions' own imports
        __import__(module)
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = PHASES[name](work, scale) if name == "generate" else PHASES[name](work)
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["peak_rss_gb"] = after.ru_maxrss / 2**20
    print(json.dumps(result))


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--phase", choices=list(PHASES))
    args = parser.parse_args()
    if args.phase:
        _child_phase(args.phase, args.work, args.scale)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_landing-"))
    machine = {"cpus": os.cpu_count(), "load_before": load_average(),
               "date": datetime.now(UTC).isoformat(timespec="seconds")}
    results: dict[str, dict[str, Any]] = {"machine": machine}
    for name in ("generate", "raw", "product", "unchanged", "dlt"):
        results[name] = run_phase(name, work, "--scale", str(args.scale))
        results[name]["load_after"] = load_average()
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(results: dict[str, dict[str, Any]]) -> None:
    gen, raw = results["generate"], results["raw"]
    print(f"\n{gen['events']:,} events in {gen['files']} files, {gen['bytes'] / 1e9:.2f} GB "
          f"(load average before {results['machine']['load_before']})")
    print("| phase | s | CPU s | × raw (s / CPU s) | peak RSS GB | rows |")
    print("|---|---|---|---|---|---|")
    for name in ("raw", "product", "unchanged", "dlt"):
        r = results[name]
        if "skipped" in r:
            print(f"| {name} | skipped: {r['skipped']} | | | | |")
            continue
        ratio = f"{r['seconds'] / raw['seconds']:.2f} / {r['cpu'] / raw['cpu']:.2f}"
        print(f"| {name} | {r['seconds']:.2f} | {r['cpu']:.1f} | {ratio} | {r['peak_rss_gb']:.2f} | "
              f"{r.get('rows', 0):,} |")
    print(f"unchanged re-run: listing {results['unchanged']['listing_seconds']:.2f} s, "
          f"the run {results['unchanged']['seconds']:.2f} s")


if __name__ == "__main__":
    main()
