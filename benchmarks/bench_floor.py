"""The floor of the initial load and of the 1 % re-load (issue #26 item 1): what the contract's
work costs alone, stage by stage, with the product's own functions and settings, no Dagster, no
control tables, no staging file.

On one seeded, settled source (``bench_ingest``'s seeding) and in one run:
  (a) ``copy``: raw binary COPY of the ten tables through psql to /dev/null (``bench_ingest``'s),
  (b) ``extract``: the product's read into Arrow (``SourceReader``: ADBC binary COPY over
      ``extract_parallelism`` connections in one snapshot, each table's initial window),
  (c) ``hash``: (b) + ``prepare`` (§2.2 ``record_hash``, storable values, partition value) and
      ``enrich`` (the per-record ``data_quality_score``), as staging runs them,
  (d) ``pii``: (c) + ``bz_customers``' AES-GCM encryption (its subjects' keys prepared in the key
      store, then each written slice protected, as the create does),
  (e) ``write``: (d) + the per-load columns (``complete``) and the Delta create with the product's
      write options, partitioning and table properties (delta-rs), and the history tables' seed,
  (f) ``dlt_merge_initial``: dlt's merge (``bench_ingest``'s),
  ``dagster``: Dagster's own part of the product's initial load: the same runs over the same asset
  keys and partitions (``materialize_all``'s plan: one run per partitions definition, a
  single-run range each, a materialization per key and partition) with computes that do nothing
  but return their metadata, on an ephemeral instance,
  the product's load lifecycle without Dagster (``Lifecycle.run`` per table, local engine: its
  source, staging file, create, control tables; serial and pair), and the product itself on the
  same source (``bench_ingest``'s ``initial`` and, after 1 % of every table changed,
  ``changed_1pct``).
(b)–(e) stream each table from the source to its end (nothing staged on disk), each table alone
("serial", one after another) and two tables at once on two threads, largest first ("pair", as
the product's steps run). The stages are cumulative, so their differences are each stage's cost.
Then the 1 % re-load's floor, ``merge``: each (e) table gets the product's MERGE (``BronzeMerger``'s
source and predicate, its clauses, its write options) of its changed rows (enriched and staged
beforehand, untimed), serial and pair; a uniform change puts a changed key in every file, so each
MERGE rewrites the whole table (copy-on-write; ``rows copied`` from its commit).

``cpu s``: user + system CPU of the process over the stage (every thread, imports excluded);
``PG cpu s``: the PostgreSQL server's over the stage. Per-table figures come from the serial
runs. ``--py-spy FILE`` records one more product initial load (``py-spy record --native``, raw
collapsed stacks) into a root of its own, right after ``initial`` (the source still as seeded).

Usage: python benchmarks/bench_floor.py [--scale 10] [--json FILE] [--py-spy FILE] [--no-dlt]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest  # before bronze_assets: its LAUNCH_ENV is the environment as launched

SCRIPT = Path(__file__).resolve()
STAGES = ("extract", "hash", "pii", "write")  # cumulative: each one the previous plus its work
MODES = ("serial", "pair")
LABELS = {"copy": "a copy (psql)", "extract": "b extract", "hash": "c + hash, score",
          "pii": "d + PII", "write": "e + Delta write", "lifecycle": "product, no Dagster",
          "dlt_merge_initial": "f dlt merge", "dagster": "Dagster alone",
          "initial": "product initial", "merge": "1% MERGE floor", "changed_1pct": "product 1%"}


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def initial_window(contract: Any, settings: Any, now: datetime) -> Any:
    """The window the product's initial run reads for ``contract``: its partitions up to ``now``
    as one range (the demo's runs), planned with no watermark (a new table)."""
    from bronze_assets.defs.partitions import partitions_def
    from bronze_assets.lib.load.plan import plan_window

    parts = partitions_def(contract, settings)
    partition = None
    if parts is not None:
        keys = parts.get_partition_keys(current_time=now)
        partition = (parts.time_window_for_partition_key(keys[0]).start.astimezone(UTC),
                     parts.time_window_for_partition_key(keys[-1]).end.astimezone(UTC))
    return plan_window(contract, partition, now, None, settings=settings)


class Floor:
    """The stages of one table's initial load, streamed from the source to their end."""

    def __init__(self, dsn: str, settings: Any, now: datetime) -> None:
        self.dsn, self.settings, self.now = dsn, settings, now

    def storage(self, root: Path) -> Any:
        from bronze_assets.lib.delta.storage import Storage

        return Storage(str(root), settings=self.settings)

    def enriched(self, contract: Any, window: Any, ctx: Any) -> Iterator[Any]:
        """(c): the product's read with ``prepare`` and ``enrich`` on the reading threads."""
        import numpy as np

        from bronze_assets.lib.enrich.metadata import enrich
        from bronze_assets.lib.source.extract import SourceReader

        histogram = np.zeros(101, dtype=np.int64)
        with SourceReader(self.dsn, contract, parallelism=self.settings.extract_parallelism) as reader:
            for batch in reader.batches(window, transform=lambda raw: enrich(raw, contract, ctx)):
                scores = batch.column("data_quality_score").to_numpy(zero_copy_only=False)
                histogram += np.bincount(scores, minlength=101)
                yield batch

    def run(self, stage: str, contract: Any, root: Path) -> dict[str, Any]:
        """One table through ``stage`` (and the stages before it); its rows and files."""
        import pyarrow as pa

        from bronze_assets.lib.enrich.metadata import BatchContext
        from bronze_assets.lib.source.extract import SourceReader, select_sql

        window = initial_window(contract, self.settings, self.now)
        ctx = BatchContext(str(uuid.uuid4()), self.now)
        if stage == "extract":
            rows = 0
            with SourceReader(self.dsn, contract, parallelism=self.settings.extract_parallelism) as reader:
                for batch in reader._parallel(select_sql(contract, window, reader.schema), None):
                    rows += batch.num_rows
            return {"rows": rows}
        batches: Iterator[pa.RecordBatch] = self.enriched(contract, window, ctx)
        if stage == "hash":
            return {"rows": sum(b.num_rows for b in batches)}
        storage = self.storage(root)
        if stage == "pii":
            return {"rows": sum(b.num_rows for b in self.protected(contract, storage, batches, ctx, False))}
        return self.write(contract, storage, window, ctx, batches)

    def lifecycle(self, contract: Any, root: Path) -> dict[str, Any]:
        """The product's load of one table without Dagster (:class:`Lifecycle`, local engine): its
        source (a CDC table's new slot), staging file, MERGE (the create), control tables."""
        from bronze_assets.lib.load.engine import LocalEngine
        from bronze_assets.lib.load.lifecycle import Lifecycle, LoadRequest

        window = initial_window(contract, self.settings, self.now)
        storage = self.storage(root)
        partition = None if window.start is None else (window.start, window.end)
        report = Lifecycle(LoadRequest(contract, partition), LocalEngine(storage), self.dsn, storage).run()
        return {"rows": report.outcome.rows_read}

    def protected(self, contract: Any, storage: Any, batches: Iterator[Any], ctx: Any, complete: bool
                  ) -> Iterator[Any]:
        """The batches in the create's slices (``WRITE_BATCH_ROWS``), with every bronze column when
        ``complete``, the PII columns encrypted (a PII table's subjects' keys prepared first, in
        the key store of ``storage``, as the create prepares a chunk's)."""
        import pyarrow as pa

        from bronze_assets.lib.delta.staged_file import slices
        from bronze_assets.lib.delta.write_options import WRITE_BATCH_ROWS
        from bronze_assets.lib.enrich.metadata import bronze_schema
        from bronze_assets.lib.enrich.metadata import complete as completed
        from bronze_assets.lib.governance.pii import pii_protection

        schema = bronze_schema(contract)
        hook = pii_protection(contract, storage) if contract.encrypted_columns else None
        if hook is not None:  # its rows are held (250k customers), their subjects' keys made in one go
            held = list(batches)
            subjects = pa.chunked_array([b.column(contract.data_subject) for b in held])
            hook.prepare(subjects.unique().to_pylist())
            batches = iter(held)
        for piece in slices(batches, WRITE_BATCH_ROWS):
            piece = completed(piece, schema, ctx) if complete else piece
            yield piece if hook is None else hook.protect(piece)

    def write(self, contract: Any, storage: Any, window: Any, ctx: Any, batches: Iterator[Any]
              ) -> dict[str, Any]:
        """(e): the table created as the product's create writes it (one commit), then its history
        table seeded from the rows as written (a contract with history)."""
        from functools import partial

        import pyarrow as pa
        from deltalake import write_deltalake

        from bronze_assets.lib.delta.change_feed import BRONZE_PROPERTIES
        from bronze_assets.lib.delta.history import HistoryWriter
        from bronze_assets.lib.delta.load_commit import commit_metadata, commit_properties
        from bronze_assets.lib.delta.write_options import target_file_bytes, writer_properties
        from bronze_assets.lib.enrich.metadata import bronze_schema
        from bronze_assets.lib.load.plan import describe_window
        from bronze_assets.lib.overlap import read_ahead

        schema = bronze_schema(contract)
        part = contract.partitioning.delta_column
        file_bytes = target_file_bytes(contract, storage.settings)
        written: list[pa.RecordBatch] | None = [] if contract.history else None
        rows = 0

        def pieces() -> Iterator[pa.RecordBatch]:
            nonlocal rows
            for piece in self.protected(contract, storage, batches, ctx, True):
                rows += piece.num_rows
                if written is not None:
                    written.append(piece)
                yield piece

        stream = read_ahead(partial(iter, pieces()), depth=1, name=f"{contract.bronze_table}-floor")
        meta = commit_metadata(ctx.batch_id, describe_window(window), None, 0, 1, {}, {}, ctx.batch_time)
        write_deltalake(
            storage.uri(contract.bronze_table), pa.RecordBatchReader.from_batches(schema, stream),
            partition_by=[part] if part else None, mode="error", storage_options=storage.delta_options,
            target_file_size=file_bytes,
            configuration={"delta.targetFileSize": str(file_bytes), **BRONZE_PROPERTIES},
            writer_properties=writer_properties(contract, storage.settings),
            commit_properties=commit_properties(None, contract, meta))
        out: dict[str, Any] = {"rows": rows}
        if written is not None:
            started = time.perf_counter()
            rows_written = written
            HistoryWriter(contract, storage).seed(
                ctx.batch_id, ctx.batch_time, current=storage.open(contract.bronze_table),
                written=lambda: pa.RecordBatchReader.from_batches(schema, rows_written))
            out["history_seconds"] = time.perf_counter() - started
        dt = storage.open(contract.bronze_table)
        out["files"] = len(dt.file_uris())
        return out


def measure(tables: list[str], mode: str, work: Callable[[str], dict[str, Any]], pgdata: Path
            ) -> dict[str, Any]:
    """``work`` on each table, one after another or two at once (``tables`` largest first): wall,
    process CPU, the server's CPU; per table its wall (and its CPU when serial)."""
    per: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def one(name: str) -> None:
        wall, cpu = time.perf_counter(), _cpu()
        result = work(name)
        result["seconds"] = time.perf_counter() - wall
        if mode == "serial":
            result["cpu_seconds"] = _cpu() - cpu
        with lock:
            per[name] = result

    pg, cpu, started = bench_ingest.pg_cpu_seconds(pgdata), _cpu(), time.perf_counter()
    if mode == "serial":
        for name in tables:
            one(name)
    else:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="floor") as pool:
            list(pool.map(one, tables))
    wall, cpu = time.perf_counter() - started, _cpu() - cpu
    after = bench_ingest.pg_cpu_seconds(pgdata)
    return {"seconds": wall, "cpu_seconds": cpu, "pg_cpu_seconds": None if pg is None or after is None
            else after - pg, "rows": sum(r.get("rows", 0) for r in per.values()),
            "tables": {name: per[name] for name in tables}}


def _setup() -> tuple[Floor, list[str], Path]:
    from bronze_assets.contracts import CONTRACTS, get_contract
    from bronze_assets.demo.run import source_shapes
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings

    settings = Settings.from_env()
    dsn = resolve_source_dsn(settings)
    shapes = source_shapes(dsn, [get_contract(f"bz_{n}") for n in CONTRACTS])
    sizes = {table: shape.bytes for table, shape in shapes.items()}
    tables = sorted(CONTRACTS, key=lambda n: -sizes.get(f"bz_{n}", 0))  # largest first
    return Floor(dsn, settings, datetime.now(UTC)), tables, settings.pgdata


def phase_initial(out: Path) -> dict:
    """(b)–(e), serial and pair, each (stage, mode) into a root of its own under ``out``; the
    (e) roots stay for the MERGE."""
    from bronze_assets.contracts import CONTRACTS

    floor, tables, pgdata = _setup()
    figures: dict[str, Any] = {}
    for stage in STAGES:
        for mode in MODES:
            root = out / f"{stage}-{mode}"
            figures[f"{stage}/{mode}"] = measure(
                tables, mode, lambda name, s=stage, r=root: floor.run(s, CONTRACTS[name], r), pgdata)
            print(f"  {stage}/{mode}: {figures[f'{stage}/{mode}']['seconds']:.2f} s", file=sys.stderr,
                  flush=True)
            if stage != "write":
                shutil.rmtree(root, ignore_errors=True)
    for mode in MODES:  # the product's lifecycle without Dagster: staging file, control tables, CDC slots
        root = out / f"lifecycle-{mode}"
        figures[f"lifecycle/{mode}"] = measure(tables, mode, lambda name, r=root: floor.lifecycle(
            CONTRACTS[name], r), pgdata)
        print(f"  lifecycle/{mode}: {figures[f'lifecycle/{mode}']['seconds']:.2f} s", file=sys.stderr,
              flush=True)
        drop_slots({**os.environ, "BRONZE_ROOT": str(root)})
        shutil.rmtree(root, ignore_errors=True)
    return {"stages": figures}


def phase_dagster(_out: Path) -> dict:
    """Dagster's own cost for the initial load's runs: ``materialize_all``'s plan over no-op assets
    with the bronze assets' keys and partitions (the metadata a bronze output publishes)."""
    import dagster as dg

    from bronze_assets.contracts import get_contract
    from bronze_assets.definitions import defs
    from bronze_assets.defs.assets import table_key
    from bronze_assets.defs.partitions import partitions_def
    from bronze_assets.demo import run as demo
    from bronze_assets.demo.event_writes import batched_event_writes

    groups: dict[dg.PartitionsDefinition | None, list[dg.AssetsDefinition]] = {}
    for asset in defs().assets or []:
        assert isinstance(asset, dg.AssetsDefinition)
        if not (name := table_key(asset)).startswith("bz_"):
            continue
        parts = partitions_def(get_contract(name))

        @dg.multi_asset(name=asset.node_def.name, specs=[dg.AssetSpec(k) for k in asset.keys],
                        partitions_def=parts,
                        backfill_policy=dg.BackfillPolicy.single_run() if parts else None)
        def noop(context):  # type: ignore[no-untyped-def]  # dg is local: no string annotation
            for key in context.selected_asset_keys:
                yield dg.MaterializeResult(asset_key=key, metadata={f"figure_{i}": i for i in range(15)})
        groups.setdefault(parts, []).append(noop)
    instance = dg.DagsterInstance.ephemeral()
    cpu, started, events = _cpu(), time.perf_counter(), 0
    with demo.dagster_settings(), batched_event_writes(instance):  # as materialize_all writes a range
        for tags, assets in demo._runs(groups, datetime.now(UTC)):
            result = dg.materialize(assets, instance=instance, tags=tags)
            assert result.success
            events += len(result.get_asset_materialization_events())
    return {"stages": {"dagster": {"seconds": time.perf_counter() - started, "cpu_seconds": _cpu() - cpu,
                                   "rows": 0, "materializations": events}}}


def phase_merge(out: Path) -> dict:
    """The 1 % re-load's floor: into each (e) root, the product's MERGE of every row the change
    touched (``bench_ingest``'s ``change``: primary key divisible by 100), as ``BronzeMerger``
    issues it (source, predicate, clauses, write options). The changed rows are read, enriched
    and staged first (untimed)."""
    import numpy as np
    import polars as pl
    import pyarrow as pa

    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.delta.commit_log import commit_metrics
    from bronze_assets.lib.delta.merge_plan import OP
    from bronze_assets.lib.delta.merger import BronzeMerger
    from bronze_assets.lib.delta.staging import StagedBatch, write_stream
    from bronze_assets.lib.enrich.metadata import BatchContext, bronze_schema, staged_schema
    from bronze_assets.lib.governance.pii import pii_protection

    floor, tables, pgdata = _setup()
    figures: dict[str, Any] = {}
    for mode in MODES:
        storage = floor.storage(out / f"write-{mode}")
        ready: dict[str, tuple[Any, Any, Any]] = {}
        for name in tables:  # untimed: the changed rows staged as a re-load stages them
            contract = CONTRACTS[name]
            pk, part = contract.primary_key[0], contract.partitioning.delta_column
            ctx = BatchContext(str(uuid.uuid4()), datetime.now(UTC))
            window = initial_window(contract, floor.settings, floor.now)
            changed = (b.filter(pa.array(b.column(pk).to_numpy() % 100 == 0))
                       for b in floor.enriched(contract, window, ctx))
            path, rows = write_stream(changed, staged_schema(bronze_schema(contract)), contract.bronze_table,
                                      storage.settings.stage_dir)
            staged = StagedBatch(contract=contract, ctx=ctx, path=path, schema=bronze_schema(contract),
                                 rows=rows, score_histogram=np.zeros(101, dtype=np.int64),
                                 pii=pii_protection(contract, storage))
            columns = [pk, *([part] if part else [])]
            keys = pl.concat([pl.from_arrow(b.select(columns)) for b in staged.reader()])
            plan = keys.with_columns(pl.lit("U").alias(OP))
            if part:
                plan = plan.rename({part: "_route"})
            merger = BronzeMerger(contract, storage)
            if staged.pii is not None:
                merger.pii = staged.pii
                merger._prepare_keys(plan.get_column(pk))
            ready[name] = (merger, staged, plan)

        def work(name: str, ready: dict = ready, storage: Any = storage) -> dict[str, Any]:
            merger, staged, plan = ready[name]
            if not plan.height:  # nothing changed: the product's MERGE is not issued either
                return {"rows": 0}
            dt = storage.open(staged.contract.bronze_table)
            merger._merge_piece(dt, staged, plan, 0, 1, merger._merge_source(staged, plan))
            dt.update_incremental()
            return {"rows": plan.height} | commit_metrics(dt.history(1)[0])

        figures[f"merge/{mode}"] = measure(tables, mode, work, pgdata)
        print(f"  merge/{mode}: {figures[f'merge/{mode}']['seconds']:.2f} s", file=sys.stderr, flush=True)
        for _, staged, _ in ready.values():
            staged.cleanup()
    return {"stages": figures}


def phase_same(out: Path) -> dict:
    """Whether each table the floor's (e) wrote (serial and pair) holds the rows the product's
    initial load wrote: the same keys, and per key the same ``record_hash``, score and partition."""
    import polars as pl
    from deltalake import DeltaTable

    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.settings import bronze_root

    differ: dict[str, int] = {}
    for name, contract in CONTRACTS.items():
        columns = [*contract.primary_key, "record_hash", "data_quality_score",
                   *([contract.partitioning.delta_column] if contract.partitioning.delta_column else [])]

        def read(root: str, table: str = contract.bronze_table, columns: list[str] = columns) -> pl.DataFrame:
            dataset = DeltaTable(f"{root}/{table}").to_pyarrow_dataset()
            frame = pl.from_arrow(dataset.to_table(columns=columns))
            assert isinstance(frame, pl.DataFrame)
            return frame.sort(columns[0])

        product = read(bronze_root())
        for mode in MODES:
            floor = read(str(out / f"write-{mode}"))
            differ[f"{name}/{mode}"] = product.height if floor.height != product.height else \
                int((~(floor == product).to_numpy().all(axis=1)).sum())
    return {"same": not any(differ.values()), "differing_rows": differ}


def drop_slots(env: dict[str, str]) -> None:
    """Drop the replication slots of the deployment whose root is ``env``'s ``BRONZE_ROOT``."""
    from bronze_assets.lib.source.postgres import connect, resolve_source_dsn
    from bronze_assets.lib.source.replication import deployment_id
    from bronze_assets.settings import Settings

    with connect(resolve_source_dsn(Settings.from_env(env)), autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    f"WHERE slot_name LIKE '%\\_{deployment_id(env['BRONZE_ROOT'])}'")


def bench(scale: float, dlt: bool, py_spy: Path | None, done: Callable[[dict[str, Any]], None]
          ) -> dict[str, Any]:
    """Every phase on one source seeded at ``scale``; ``done`` is given the figures. ``py_spy``: a
    profile of one more product initial load (after ``initial``, before the source changes)."""
    with bench_ingest.scratch_source("bench-floor-") as (tmp, env):
        out = Path(tmp) / "floor"
        product = Path(tmp) / "bronze"
        env = env | {"BRONZE_ROOT": str(product)}
        pgdata = Path(tmp) / "data" / "pgdata"
        results: dict[str, Any] = {"load_average": {}}

        def ingest(label: str, name: str, *args: str, phase_env: dict | None = None) -> None:
            results["load_average"][label] = Path("/proc/loadavg").read_text().split()[0]
            cpu = bench_ingest.pg_cpu_seconds(pgdata)
            results[label] = bench_ingest.run_phase(name, phase_env or env, *args)
            after = bench_ingest.pg_cpu_seconds(pgdata)
            results[label]["pg_cpu_seconds"] = None if cpu is None or after is None else after - cpu
            print(f"  {label}: {results[label]['wall']:.2f} s", file=sys.stderr, flush=True)

        def floor(label: str) -> None:
            results["load_average"][label] = Path("/proc/loadavg").read_text().split()[0]
            results.update(bench_ingest.run_phase(label, env, "--out", str(out), script=SCRIPT)["stages"])

        ingest("seed", "seed", "--scale", str(scale))
        ingest("copy", "copy")
        floor("floor_initial")
        floor("floor_dagster")
        ingest("initial", "load")
        same = bench_ingest.run_phase("floor_same", env, "--out", str(out), script=SCRIPT)
        results["same_as_product"] = {"same": same["same"], "differing_rows": same["differing_rows"]}
        if py_spy is not None:  # the product's initial load once more, profiled (not in the figures)
            spied = env | {"BRONZE_ROOT": str(Path(tmp) / "bronze-spied")}
            spy = Path(sys.executable).parent / "py-spy"  # pip install py-spy (the venv's)
            subprocess.run([str(spy), "record", "--native", "--rate", "100", "--format", "raw",
                            "--output", str(py_spy), "--", sys.executable, str(bench_ingest.PHASE_SCRIPT),
                            "--phase", "load"], env=spied, check=True, capture_output=True)
            drop_slots(spied)  # its CDC slots would hold the change's WAL
            shutil.rmtree(Path(tmp) / "bronze-spied", ignore_errors=True)
        if dlt:
            dlt_out = Path(tmp) / "dlt"
            ingest("dlt_merge_initial", "dlt", "--out", str(dlt_out),
                   phase_env=bench_ingest.dlt_spec(dlt_out, env))
            shutil.rmtree(dlt_out, ignore_errors=True)
        bench_ingest.run_phase("change", env)
        ingest("changed_1pct", "load")
        floor("floor_merge")
        done(results)
    return results


PHASES = {"floor_initial": phase_initial, "floor_dagster": phase_dagster, "floor_merge": phase_merge,
          "floor_same": phase_same}


def report(scale: float, results: dict[str, Any]) -> None:
    copy = results["copy"]["wall"]
    print(f"\nscale {scale:g}: {results['seed']['rows']:,} source rows; load average at each phase: "
          + ", ".join(f"{k} {v}" for k, v in results["load_average"].items()))
    print(f"{'stage':<20} {'mode':<7} {'wall s':>7} {'cpu s':>6} {'PG cpu':>7} {'cpu/2':>6} "
          f"{'x copy':>7} {'rows':>10}")

    def line(label: str, mode: str, r: dict[str, Any]) -> None:
        cpu = r.get("cpu_seconds")
        pg = r.get("pg_cpu_seconds")
        print(f"{label:<20} {mode:<7} {r.get('wall', r.get('seconds')):>7.2f} "
              f"{'-' if cpu is None else f'{cpu:.2f}':>6} {'-' if pg is None else f'{pg:.2f}':>7} "
              f"{'-' if cpu is None else f'{cpu / 2:.2f}':>6} "
              f"{r.get('wall', r.get('seconds')) / copy:>7.2f} {r.get('rows', 0):>10,}")

    line(LABELS["copy"], "", results["copy"])
    for stage in STAGES:
        for mode in MODES:
            line(LABELS[stage], mode, results[f"{stage}/{mode}"])
    for mode in MODES:
        line(LABELS["lifecycle"], mode, results[f"lifecycle/{mode}"])
    line(LABELS["dagster"], "", results["dagster"])
    for name in ("dlt_merge_initial", "initial"):
        if name in results and "skipped" not in results[name]:
            line(LABELS[name], "(proc)", results[name])
    for mode in MODES:
        line(LABELS["merge"], mode, results[f"merge/{mode}"])
    line(LABELS["changed_1pct"], "(proc)", results["changed_1pct"])
    print("\nper table (serial; wall s / cpu s):")
    tables = list(results["write/serial"]["tables"])
    print(f"{'table':<16}" + "".join(f"{s:>14}" for s in (*STAGES, "merge")) + f"{'copied':>10}")
    for name in tables:
        cells = []
        for stage in (*STAGES, "merge"):
            t = results[f"{stage}/serial"]["tables"][name]
            cells.append(f"{t['seconds']:>6.2f}/{t['cpu_seconds']:>6.2f} ")
        copied = results["merge/serial"]["tables"][name].get("rows_copied", 0)
        print(f"{name:<16}" + "".join(f"{c:>14}" for c in cells) + f"{copied:>10,}")
    same = results["same_as_product"]
    print("floor's (e) tables = the product's (keys, record_hash, score, partition): "
          + ("yes" if same["same"] else f"NO: {same['differing_rows']}"))
    print("(product phases' cpu s include the interpreter's start-up and imports; the floor's do not)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--py-spy", type=Path, help="record one more product initial load with py-spy here")
    parser.add_argument("--no-dlt", action="store_true", help="skip dlt's merge (f)")
    parser.add_argument("--phase", choices=sorted(PHASES))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.phase:
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)
        result = PHASES[args.phase](args.out)
        print(json.dumps(result, default=str))
        return
    def done(results: dict[str, Any]) -> None:
        report(args.scale, results)
        if args.json:
            args.json.write_text(json.dumps({f"{args.scale:g}": results}, indent=2, default=str) + "\n")

    bench(args.scale, not args.no_dlt, args.py_spy, done)


if __name__ == "__main__":
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    main()
