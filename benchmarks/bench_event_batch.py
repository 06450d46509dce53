"""What ``DAGSTER_EVENT_BATCH_SIZE`` buys on PostgreSQL instance storage (issue #23, README "Deploying").

One ranged run of ``bz_orders`` over all of its monthly partitions (84: 2020-01 … 2026-12), in
process, on an instance whose storage is PostgreSQL (dagster-postgres, a fresh database on an
embedded server) or SQLite (a fresh folder), with ``DAGSTER_EVENT_BATCH_SIZE`` unset (Dagster's
default: every event is one write) or 1000 (a step's per-partition events are handed to the
storage as one batch), and with ``DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS`` unset (one
"planned" event per partition before the run starts) or ``true`` (one for the whole range, as
``bronze demo`` sets it). The source is seeded once; each repetition loads into a fresh bronze
root (and drops the replication slot the load made for log-based CDC), without asset checks
(they are per asset, not per partition, and would only add noise).
The configurations alternate, so a load spike on a shared machine spreads over all of them.

Reported per configuration (median of the repetitions): the run's wall time, the part of it spent
in the event log storage's writes (``store_event`` / ``store_event_batch``, timed by wrapping them),
the number of write calls, and the events stored.

Usage: python benchmarks/bench_event_batch.py [--scale 0.1] [--repeat 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.assets import build_bronze_asset
from bronze_assets.defs.partitions import partitions_def
from bronze_assets.defs.resources import BronzeStorage, PostgresSource, build_resources
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.demo.seed import seed_source
from bronze_assets.lib.source.embedded import EmbeddedPostgres
from bronze_assets.lib.source.postgres import connect

TABLE = "orders"
BATCH, SUBSET = "DAGSTER_EVENT_BATCH_SIZE", "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
CONFIGS = [  # (storage, DAGSTER_EVENT_BATCH_SIZE, DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS)
    ("postgres", None, None), ("postgres", "1000", None),
    ("postgres", None, "true"), ("postgres", "1000", "true"),
    ("sqlite", None, "true"), ("sqlite", "1000", "true"),
]


@contextmanager
def _env(**values: str | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


class _TimedWrites:
    """Wraps the event log storage's write methods of one instance: seconds, calls and events of
    the outermost calls (a storage without a batch write of its own loops over ``store_event``)."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.seconds, self.calls, self.events = 0.0, 0, 0
        self._depth = threading.local()
        storage = instance.event_log_storage
        for name in ("store_event", "store_event_batch"):
            setattr(storage, name, self._timed(getattr(storage, name), batch=name.endswith("batch")))

    def _timed(self, write, *, batch: bool):
        def timed(arg):
            depth = getattr(self._depth, "n", 0)
            self._depth.n = depth + 1
            started = time.perf_counter()
            try:
                return write(arg)
            finally:
                self._depth.n = depth
                if depth == 0:
                    self.seconds += time.perf_counter() - started
                    self.calls += 1
                    self.events += len(arg) if batch else 1
        return timed


def _instance_yaml(storage: str, admin: str, work: Path) -> str:
    if storage == "sqlite":
        return yaml.safe_dump({"storage": {"sqlite": {"base_dir": str(work / "history")}},
                               "telemetry": {"enabled": False}})
    name = f"dagster_{uuid.uuid4().hex[:10]}"
    with connect(admin, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = admin.replace("/postgres?", f"/{name}?").replace("postgresql://", "postgresql+psycopg2://")
    return yaml.safe_dump({"storage": {"postgres": {"postgres_url": url}}, "telemetry": {"enabled": False}})


def run_once(storage: str, batch: str | None, subset: str | None, dsn: str, admin: str,
             work: Path) -> dict[str, float]:
    work.mkdir(parents=True)
    (work / "dagster.yaml").write_text(_instance_yaml(storage, admin, work))
    contract = CONTRACTS[TABLE]
    keys = partitions_def(contract).get_partition_keys()
    asset = build_bronze_asset(contract)
    bronze = BronzeStorage(root=str(work / "bronze"))
    resources = build_resources(source=PostgresSource(dsn=dsn), storage=bronze)
    defs = dg.Definitions(assets=[asset], resources=resources, jobs=[dg.define_asset_job(
        "ranged", selection=dg.AssetSelection.assets(asset).without_checks())])
    job = defs.resolve_job_def("ranged")
    tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    with _env(**{BATCH: batch, SUBSET: subset}), dg.DagsterInstance.from_config(str(work)) as instance:
        writes = _TimedWrites(instance)
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance, tags=tags, run_config=QUIET)
        wall = time.perf_counter() - started
        assert result.success
        stored = len(instance.all_logs(result.run_id))
        materialized = len(result.get_asset_materialization_events())
    with connect(dsn, autocommit=True) as conn, conn.cursor() as cur:  # each fresh root made its own slot
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")
    return {"partitions": len(keys), "wall_s": wall, "event_writes_s": writes.seconds,
            "write_calls": writes.calls, "events_written": writes.events, "events_in_log": stored,
            "materializations": materialized}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_event_batch_") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        dsn = server.start()
        admin = dsn.replace(f"/{server.database}?", "/postgres?")
        try:
            report = seed_source(dsn, SeedOptions(scale=args.scale), progress=False)
            print(f"seeded scale {args.scale:g}: {report.total_rows:,} rows", file=sys.stderr)
            for rep in range(args.repeat):
                for storage, batch, subset in CONFIGS:
                    label = f"{storage} batch={batch or 'unset'} planned_subset={subset or 'unset'}"
                    row = run_once(storage, batch, subset, dsn, admin, Path(tmp) / f"r{rep}_{len(results)}"
                                   f"_{storage}_{batch}_{subset}")
                    results.setdefault(label, []).append(row)
                    print(f"[{rep + 1}/{args.repeat}] {label}: {row['wall_s']:.1f} s "
                          f"(event writes {row['event_writes_s']:.1f} s, {row['write_calls']} calls)",
                          file=sys.stderr)
        finally:
            server.stop()
    print(f"| configuration ({CONTRACTS[TABLE].bronze_table}, one run over "
          f"{next(iter(results.values()))[0]['partitions']} partitions) | run wall s | event writes s "
          "| write calls | events |")
    print("|---|---:|---:|---:|---:|")
    summary = {}
    for label, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        summary[label] = {"median": med, "runs": rows}
        print(f"| {label} | {med['wall_s']:.1f} | {med['event_writes_s']:.1f} | {med['write_calls']:.0f} "
              f"| {med['events_written']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
