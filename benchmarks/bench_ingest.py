"""Ingestion benchmark (issue #3): raw COPY vs bronze loads through Dagster vs dlt, in one run.

For each scale, on a fresh embedded PostgreSQL and an empty bronze root (``BRONZE_START_DATE``
set to today: the tables go live today, so each daily table's whole history is its one initial
snapshot partition):
  (a) ``copy``: raw ``COPY … TO STDOUT (FORMAT binary)`` of the ten tables through psql to /dev/null,
  (b) ``initial``: the initial bronze load of all ten tables through Dagster (``materialize_all``: three
  runs at once on threads of the process, their steps sharing one pool: two tables read at once),
  (c) ``unchanged``: an unchanged re-load, (d) ``changed_1pct``: a re-load after 1 % of the rows of
  every table changed; (b +checks) ``initial_checks``: the initial load again into a second empty
  root with every asset check (schema gate, GX quality suite, key uniqueness, referential
  integrity); (b, c, d) run without.
  (e) the hourly tick: on inventory, order_details and orders 0.1 % of the rows are updated
  (``updated_at = now()``), 0.01 % deleted and 0.1 % inserted (new keys), then the assets of the two
  hourly schedule jobs (``bronze_hourly_by_day``, ``bronze_hourly_by_month``) run as their schedules
  request them now (the open day / month, tag ``bronze/changes_only``: read what changed since the
  watermark): ``hourly`` with every asset check, ``hourly_nochecks`` without (after a second tick),
  ``hourly_skewed`` with checks after a tick whose updates fall 80 % on the newest 10 % of keys.
  After each, bronze is compared with the source: the ACTIVE keys and their ``record_hash`` must
  equal the §2.2 v2 hash computed by PostgreSQL, and every deleted key must be ``DELETED``.
  "rewritten" is the number of rows in the data files the tick's commits added (``numRecords`` of
  the ``add`` actions in the Delta log), against the rows the tick changed.
  (f) ``dlt_merge_initial``: dlt's ``sql_database`` source (connectorx backend) over the same
  schema, ``write_disposition="merge"`` (upsert) on the contracts' primary keys, into Delta tables
  on the local filesystem: a reference for what a generic tool costs (needs ``pip install -e
  '.[bench]'``; skipped otherwise).
Each phase runs in a child process so its peak RSS is its own; in the phases with checks the
peak (reset when the phase starts) and the CPU of the GX validation service, which the first phase
with checks starts and the later ones find running, are added. ``seconds`` excludes interpreter
start-up, imports and the creation of the phase's ephemeral Dagster instance (mostly Dagster's
lazy imports; ``bronze demo`` also creates its instance before its clock); ``cpu s`` is user +
system CPU with them. Dagster materializes a partition range in one run but records one
materialization event per partition; the ``data s`` column is the part spent reading, enriching
and merging (sum over assets). ``files`` is the number of data files (``add`` actions) in all
``bz_*`` Delta tables after the phase (for dlt: in its ten Delta tables). ``PG cpu s`` is the
CPU time the PostgreSQL server (postmaster, backends, and the backends it reaped) spent during the
phase, read from ``/proc``.

``seed`` (in ``--json``) is the seeding of the source: wall, CPU and peak RSS of its process; its
``settle_seconds`` the ``VACUUM (FREEZE, ANALYZE)`` and ``CHECKPOINT`` that follow it (the source
settled like an operational database's old rows before any phase reads it).
The second root (``initial_checks``) is removed after its phase, so a large scale needs disk for
the source and one root.

Usage: python benchmarks/bench_ingest.py [--scales 1 10] [--json FILE] [--phases copy initial …]
       [--checks-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# the environment the bench was started with, before importing bronze_assets sets its allocator
# defaults (lib/allocators.py): dlt's phase runs in it, as a user would run dlt
LAUNCH_ENV = dict(os.environ)

PHASE_SCRIPT = Path(__file__).resolve()
HOURLY_JOBS = ("bronze_hourly_by_day", "bronze_hourly_by_month")
TICK_TABLES = ("inventory", "order_details", "orders")
UPDATE_SHARE, INSERT_SHARE, DELETE_SHARE = 0.001, 0.001, 0.0001
HOT_KEYS, HOT_SHARE = 0.10, 0.80  # skewed tick: 80 % of the updates on the newest 10 % of keys
LABELS = {  # JSON phase name -> row label of the printed table
    "seed": "seeding", "copy": "a copy", "initial": "b initial", "initial_checks": "b +checks",
    "unchanged": "c unchanged",
    "changed_1pct": "d 1% changed", "hourly": "e hourly", "hourly_nochecks": "e hourly -chk",
    "hourly_skewed": "e hourly skew", "dlt_merge_initial": "f dlt merge",
}


PHASE_NAMES = tuple(name for name in LABELS if name != "seed")  # in the order they run
NEEDS_INITIAL = ("unchanged", "changed_1pct", "hourly", "hourly_nochecks", "hourly_skewed")


def _rss_mb() -> float:
    """Peak RSS of the phase's process (the GX validation service's is added by :func:`bench`).
    (Not ``RUSAGE_CHILDREN``: a child spawned by vfork + exec is charged the parent's peak.)"""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    """User + system CPU of the phase's process (imports included) and of the children it waited
    for (psql): CPU time, unlike wall time, hardly moves when others share the cores."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def phase_seed(scale: float) -> dict:
    from bronze_assets.demo.generator import SeedOptions
    from bronze_assets.demo.seed import seed_source
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings

    dsn = resolve_source_dsn(Settings.from_env())
    report = seed_source(dsn, SeedOptions(scale=scale), reset=True, progress=False)
    return {"rows": report.total_rows, "settle_seconds": settle_source(dsn)}


def settle_source(dsn: str) -> float:
    """``VACUUM (FREEZE, ANALYZE)`` and a ``CHECKPOINT`` after seeding, timed: the source then looks
    like an operational database whose rows are old (hint bits set, visibility map full), and
    autovacuum's insert-triggered pass over the freshly copied rows does not land in whichever
    phase runs next (copy, initial or dlt alike)."""
    from pgserver._commands import POSTGRES_BIN_PATH

    started = time.perf_counter()
    for sql in ("VACUUM (FREEZE, ANALYZE)", "CHECKPOINT"):
        subprocess.run([str(POSTGRES_BIN_PATH / "psql"), dsn, "-q", "-c", sql], check=True)
    return time.perf_counter() - started


def phase_copy() -> dict:
    from pgserver._commands import POSTGRES_BIN_PATH

    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings

    dsn = resolve_source_dsn(Settings.from_env())
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        for name in CONTRACTS:
            subprocess.run([str(POSTGRES_BIN_PATH / "psql"), dsn, "-c",
                            f"COPY tests.{name} TO STDOUT (FORMAT binary)"], stdout=sink, check=True)
    return {"seconds": time.perf_counter() - started}


def phase_load(with_checks: bool = False) -> dict:
    if with_checks:  # as `bronze demo` does: the validation service's GX import beside Dagster's
        from bronze_assets.lib.quality import worker
        from bronze_assets.settings import Settings

        worker.start_in_background(Settings.from_env(), every_table=True)
    import dagster as dg

    from bronze_assets.definitions import defs
    from bronze_assets.demo.run import materialize_all
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings

    dsn = resolve_source_dsn(Settings.from_env())
    definitions = defs()
    instance = dg.DagsterInstance.ephemeral()  # before the clock, as `hourly` and `bronze demo` do
    started = time.perf_counter()
    meta = materialize_all(definitions, dsn, instance, with_checks=with_checks)
    return {
        "seconds": time.perf_counter() - started,
        "rows": sum(int(m["rows_read"]) for m in meta.values()),
        "data_seconds": sum(float(m["duration_seconds"]) for m in meta.values()),
        "written": sum(int(m["rows_inserted"]) + int(m["rows_updated"]) for m in meta.values()),
    }


def phase_change() -> dict:
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.source.postgres import connect, resolve_source_dsn
    from bronze_assets.settings import Settings

    with connect(resolve_source_dsn(Settings.from_env())) as conn, conn.cursor() as cur:
        for name, c in CONTRACTS.items():
            cur.execute(f"UPDATE tests.{name} SET updated_at = now() WHERE {c.primary_key[0]} % 100 = 0")
        conn.commit()
    return {}


def _scalar(cur: Any, sql: str) -> Any:
    cur.execute(sql)
    return cur.fetchone()[0]


def phase_tick(variant: str, tick: int, state: Path, tables: Sequence[str] = TICK_TABLES) -> dict:
    """One tick's source changes on ``tables`` (default: the hourly tick's; one transaction, so one
    ``now()``): updates, then deletes, then inserts of new keys (copies of existing rows; a new
    order is dated today). ``state`` accumulates the deleted keys for the verification."""
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.source.postgres import connect, resolve_source_dsn
    from bronze_assets.settings import Settings

    deleted: dict[str, list[int]] = json.loads(state.read_text()) if state.exists() else {}
    changes: dict[str, dict[str, int]] = {}
    with connect(resolve_source_dsn(Settings.from_env())) as conn, conn.cursor() as cur:
        for name in tables:
            c = CONTRACTS[name]
            pk, table = c.primary_key[0], f"tests.{name}"
            cur.execute(f"SELECT count(*), max({pk}), percentile_disc({1 - HOT_KEYS}) WITHIN GROUP "
                        f"(ORDER BY {pk}) FROM {table}")
            rows, top, hot = cur.fetchone()
            n_upd, n_ins = round(rows * UPDATE_SHARE), round(rows * INSERT_SHARE)
            n_del = max(1, round(rows * DELETE_SHARE))

            def pick(n: int, salt: str, where: str = "TRUE", pk: str = pk, table: str = table) -> str:
                return (f"(SELECT {pk} FROM {table} WHERE {where} "
                        f"ORDER BY md5({pk}::text || '{variant}:{tick}:{salt}') LIMIT {n})")

            if variant == "uniform":
                chosen = pick(n_upd, "u")
            else:
                n_hot = round(n_upd * HOT_SHARE)
                chosen = (f"{pick(n_hot, 'u', f'{pk} > {hot}')} UNION ALL "
                          f"{pick(n_upd - n_hot, 'u', f'{pk} <= {hot}')}")
            updated = _scalar(cur, f"WITH u AS (UPDATE {table} SET updated_at = now() WHERE {pk} IN "
                                   f"(SELECT {pk} FROM ({chosen}) AS s) RETURNING 1) SELECT count(*) FROM u")
            cur.execute(f"DELETE FROM {table} WHERE {pk} IN {pick(n_del, 'd')} RETURNING {pk}")
            gone = [int(r[0]) for r in cur.fetchall()]
            business = c.partitioning.business_date_column
            exprs = []
            for col in c.column_names:
                if col == pk:
                    exprs.append(f"{top} + row_number() OVER ()")
                elif col == "updated_at":
                    exprs.append("now()")
                elif col == business:
                    exprs.append("current_date")  # the session is pinned to UTC
                else:
                    exprs.append(col)
            inserted = _scalar(cur, f"WITH i AS (INSERT INTO {table} ({', '.join(c.column_names)}) "
                                    f"SELECT {', '.join(exprs)} FROM (SELECT * FROM {table} "
                                    f"ORDER BY md5({pk}::text || '{variant}:{tick}:i') LIMIT {n_ins}) AS s "
                                    f"RETURNING 1) SELECT count(*) FROM i")
            deleted[name] = deleted.get(name, []) + gone
            changes[name] = {"updated": int(updated), "inserted": int(inserted), "deleted": len(gone)}
        conn.commit()
    state.write_text(json.dumps(deleted))
    return {"changes": changes}


def _quiet_logger() -> Any:
    import logging

    import dagster as dg

    log = logging.Logger("bench_ingest")  # not registered: nothing reaches the console
    log.addHandler(logging.NullHandler())
    return dg.LoggerDefinition(lambda _context: log)


def phase_hourly(with_checks: bool, jobs: Sequence[str] = HOURLY_JOBS) -> dict:
    """The two hourly schedule jobs (or ``jobs``) for the partition a tick now would load (the open
    day/month; none for an unpartitioned job), as their schedules request them now: at once (their
    schedules fire at the same minute; here on threads of one process, each run with an ephemeral
    instance of its own, as Dagster's in-memory storage takes one run at a time), each on its
    executor."""
    import threading

    import dagster as dg

    from bronze_assets.definitions import defs
    from bronze_assets.defs import threaded_executor
    from bronze_assets.defs.schedules import load_groups, partition_for_tick

    definitions = defs()
    repo = definitions.get_repository_def()
    groups = {g.name: g for g in load_groups()}
    instances = [dg.DagsterInstance.ephemeral() for _ in jobs]
    started = time.perf_counter()
    runs = []
    partitions = {}
    for name in jobs:  # the run each schedule requests now, with its tags (changes only)
        group = groups[name]
        ctx = dg.build_schedule_context(instance=instances[len(runs)], repository_def=repo,
                                        scheduled_execution_time=datetime.now(UTC))
        (request,) = repo.get_schedule_def(f"{name}_schedule").evaluate_tick(ctx).run_requests
        key = request.partition_key
        assert key == partition_for_tick(group, datetime.now(UTC))
        partitions[name] = key
        job = definitions.resolve_job_def(name)
        if not with_checks:
            job = job.get_subset(asset_selection={dg.AssetKey(k) for k in group.keys},
                                 asset_check_selection=set())
        runs.append((job.with_logger_defs({"bench": _quiet_logger()}), key, dict(request.tags),
                     instances[len(runs)]))
    results: list[Any] = [None] * len(runs)

    def execute(index: int) -> None:
        job, key, tags, run_instance = runs[index]
        results[index] = threaded_executor.execute_in_process(
            job, job.executor_def, partition_key=key, instance=run_instance, tags=tags,
            run_config={"loggers": {"bench": {}}})

    threads = [threading.Thread(target=execute, args=(i,)) for i in range(len(runs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    meta: dict[str, dict[str, Any]] = {}
    checks, failed_checks = 0, []
    for result in results:
        if result is None:
            raise RuntimeError("an hourly run failed (see its traceback above)")
        for event in result.get_asset_materialization_events():
            meta[event.asset_key.to_user_string()] = {
                k: v.value for k, v in event.materialization.metadata.items()}
        evaluations = result.get_asset_check_evaluations()
        checks += len(evaluations)
        failed_checks += [e.asset_check_key.to_user_string() for e in evaluations if not e.passed]
    return {
        "seconds": time.perf_counter() - started,
        "partitions": partitions,
        "checks": checks,
        "failed_checks": sorted(failed_checks),
        "rows": sum(int(m["rows_read"]) for m in meta.values()),
        "data_seconds": sum(float(m["duration_seconds"]) for m in meta.values()),
        "written": sum(int(m["rows_inserted"]) + int(m["rows_updated"]) + int(m["rows_soft_deleted"])
                       for m in meta.values()),
    }


def source_hash_sql(name: str) -> str:
    """§2.2 v2 ``record_hash`` of every source row, rendered by PostgreSQL (the expression of
    ``bronze_assets_tests/bronze_helpers.spec_hash_sql``; the session must be pinned to UTC and
    ISO dates, which ``connect`` does)."""
    from bronze_assets.contracts import CONTRACTS

    c = CONTRACTS[name]
    rendered = ", ".join(f"coalesce(length({col}::text) || ':' || {col}::text, '\\N')"
                         for col in c.column_names)
    return f"SELECT {c.primary_key[0]}, md5(concat_ws(E'\\x1f', {rendered})) AS source_hash FROM tests.{name}"


def phase_verify(state: Path, tables: Sequence[str] = TICK_TABLES) -> dict:
    """Bronze equals the source on ``tables`` (default: the hourly tick's): ACTIVE keys and
    hashes, deleted keys DELETED."""
    import polars as pl
    from deltalake import DeltaTable

    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.enrich.metadata import ACTIVE, DELETED
    from bronze_assets.lib.source.postgres import connect, resolve_source_dsn
    from bronze_assets.settings import Settings, bronze_root

    deleted: dict[str, list[int]] = json.loads(state.read_text()) if state.exists() else {}
    report: dict[str, dict[str, Any]] = {}
    with connect(resolve_source_dsn(Settings.from_env())) as conn, conn.cursor() as cur:
        for name in tables:
            c = CONTRACTS[name]
            pk, part = c.primary_key[0], c.partitioning.delta_column
            cur.execute(source_hash_sql(name))
            source = pl.from_arrow(cur.fetch_arrow_table()).cast({pk: pl.Int64})
            columns = [pk, "record_hash", "record_status", "updated_at", *([part] if part else [])]
            bronze = pl.from_arrow(DeltaTable(f"{bronze_root()}/{c.bronze_table}").to_pyarrow_dataset()
                                   .to_table(columns=columns)).cast({pk: pl.Int64})
            assert isinstance(source, pl.DataFrame) and isinstance(bronze, pl.DataFrame)
            active = bronze.filter(pl.col("record_status") == ACTIVE)
            both = source.join(active, on=pk, how="full", coalesce=True)
            differs = (pl.col("record_hash").is_not_null() & pl.col("source_hash").is_not_null()
                       & (pl.col("record_hash") != pl.col("source_hash")))
            problems = {
                "duplicate_keys": bronze.group_by(pk).len().filter(pl.col("len") > 1).get_column(pk),
                "missing_active": both.filter(pl.col("record_hash").is_null()).get_column(pk),
                "extra_active": both.filter(pl.col("source_hash").is_null()).get_column(pk),
                "hash_differs": both.filter(differs).get_column(pk),
            }
            gone = pl.Series(pk, deleted.get(name, []), dtype=pl.Int64)
            marked = bronze.filter(pl.col(pk).is_in(gone.implode()) & (pl.col("record_status") == DELETED))
            problems["deleted_not_marked"] = gone.filter(~gone.is_in(marked.get_column(pk).implode()))
            table: dict[str, Any] = {"source_rows": source.height, "bronze_active": active.height,
                                     "deleted_checked": gone.len()}
            for kind, keys in problems.items():
                table[kind] = keys.len()
                if keys.len():  # what differs, for the report: a few keys, both sides
                    sample = keys.sort().head(5)
                    rows = (bronze.filter(pl.col(pk).is_in(sample.implode()))
                            .join(source.filter(pl.col(pk).is_in(sample.implode())), on=pk, how="full",
                                  coalesce=True).sort(pk))
                    table[f"{kind}_examples"] = json.loads(rows.write_json())
            report[name] = table
    ok = all(v == 0 for t in report.values() for k, v in t.items() if k in {
        "duplicate_keys", "missing_active", "extra_active", "hash_differs", "deleted_not_marked"})
    return {"ok": ok, "tables": report}


def _dlt_dsn(dsn: str) -> str:
    """The source URI for dlt: SQLAlchemy reflects through psycopg 3 (named, so the driver does not
    depend on SQLAlchemy's default); dlt strips the driver for connectorx, which rejects a URI
    without a host (``postgresql://u@/db?host=/socket/dir``, what the embedded server gives):
    naming ``localhost`` is enough, the ``host`` parameter still wins."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.hostname is None and "host=" in parts.query:
        parts = parts._replace(netloc=f"{parts.netloc}localhost")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def phase_dlt(out: Path) -> dict:
    """dlt reference: sql_database (connectorx) → merge (upsert on the contracts' keys) → Delta.
    Its source DSN and primary keys come from ``out/spec.json`` (written by :func:`dlt_spec`): this
    process imports nothing of bronze_assets, whose import tunes the process's allocators."""
    try:
        import dlt
        from dlt.sources.sql_database import sql_database
    except ImportError:
        return {"skipped": "dlt is not installed: pip install -e '.[bench]'"}
    spec = json.loads((out / "spec.json").read_text())
    started = time.perf_counter()
    source = sql_database(credentials=spec["dsn"], schema=spec["schema"], table_names=list(spec["keys"]),
                          backend="connectorx")
    for name, key in spec["keys"].items():
        source.resources[name].apply_hints(primary_key=key,
                                           write_disposition={"disposition": "merge", "strategy": "upsert"})
    pipeline = dlt.pipeline(pipeline_name="bench_ingest", pipelines_dir=str(out / "pipelines"),
                            destination=dlt.destinations.filesystem(bucket_url=(out / "lake").as_uri()),
                            dataset_name="bronze")
    pipeline.run(source, table_format="delta")
    seconds = time.perf_counter() - started
    counts = pipeline.last_trace.last_normalize_info.row_counts
    return {"seconds": seconds, "rows": sum(n for t, n in counts.items() if not t.startswith("_dlt"))}


def dlt_spec(out: Path, env: dict[str, str]) -> dict[str, str]:
    """Write what dlt's phase needs (source DSN, schema, the contracts' primary keys) to
    ``out/spec.json``; return ``env`` with the allocator variables as the bench was launched."""
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.allocators import DEFAULTS
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import SOURCE_SCHEMA, Settings

    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps({
        "dsn": _dlt_dsn(resolve_source_dsn(Settings.from_env(env))), "schema": SOURCE_SCHEMA,
        "keys": {name: list(c.primary_key) for name, c in CONTRACTS.items()}}))
    launched = {k: v for k, v in env.items() if k not in DEFAULTS}
    return launched | {k: LAUNCH_ENV[k] for k in DEFAULTS if k in LAUNCH_ENV}


PHASES = {
    "seed": phase_seed, "copy": phase_copy, "load": phase_load, "change": phase_change,
    "load_checks": lambda: phase_load(with_checks=True),
}


def run_phase(name: str, env: dict[str, str], *args: str, script: Path = PHASE_SCRIPT) -> dict:
    """Run phase ``name`` of ``script`` in a process of its own; its last line of output is JSON."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(script), "--phase", name, *args],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"phase {name} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall"] = result.get("seconds", time.perf_counter() - started)
    return result


def pg_cpu_seconds(pgdata: Path) -> float | None:
    """CPU seconds the PostgreSQL server has used so far: the postmaster, its live children, and
    the children it has reaped (ended backends are accounted to the postmaster's cutime/cstime)."""
    try:
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def delta_tables(root: Path, prefix: str = "bz_") -> list[Path]:
    return sorted(p for p in root.glob(f"{prefix}*") if (p / "_delta_log").is_dir()) if root.is_dir() else []


def count_files(root: Path, prefix: str = "bz_") -> int:
    """Data files (``add`` actions) in the Delta tables under ``root`` whose name starts with ``prefix``."""
    from deltalake import DeltaTable

    return sum(len(DeltaTable(str(p)).file_uris()) for p in delta_tables(root, prefix))


def table_versions(root: Path) -> dict[str, int]:
    from deltalake import DeltaTable

    return {p.name: DeltaTable(str(p)).version() for p in delta_tables(root)}


def rewritten(root: Path, before: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per bronze table of TICK_TABLES: the commits after ``before``, the engine that made them, the
    files they added and removed, the rows in the added data files (``numRecords`` of the ``add``
    actions' stats; an ``add`` that only puts a deletion vector on a file writes no rows) and the
    rows the MERGEs copied (``numTargetRowsCopied`` / ``num_target_rows_copied``)."""
    from bronze_assets.lib.delta.commit_log import commit_metrics
    from bronze_assets.lib.delta.writers import commit_engine

    out = {}
    for name in TICK_TABLES:
        log_dir = root / f"bz_{name}" / "_delta_log"
        figures: dict[str, Any] = {"commits": 0, "files_added": 0, "files_removed": 0, "rows_rewritten": 0,
                                   "rows_copied": 0, "engine": None, "operations": []}
        version = before.get(f"bz_{name}", -1) + 1
        while (log_dir / f"{version:020d}.json").exists():
            for line in (log_dir / f"{version:020d}.json").read_text().splitlines():
                action = json.loads(line)
                if "add" in action and not action["add"].get("deletionVector"):
                    figures["files_added"] += 1
                    stats = json.loads(action["add"].get("stats") or "{}")
                    figures["rows_rewritten"] += stats.get("numRecords", 0)
                elif "remove" in action:
                    figures["files_removed"] += 1
                elif "commitInfo" in action:
                    info = action["commitInfo"]
                    figures["commits"] += 1
                    figures["operations"].append(info.get("operation"))
                    figures["rows_copied"] += commit_metrics(info)["rows_copied"]
                    figures["engine"] = figures["engine"] or commit_engine(info)
            version += 1
        out[name] = figures
    return out


def rewrite_ratios(changes: dict[str, dict[str, int]], rewrites: dict[str, dict[str, Any]]
                   ) -> dict[str, dict[str, Any]]:
    """Per table and engine: rows in the files the tick's commits added ÷ rows the tick changed
    (updated + inserted + deleted). The local engine (delta-rs) writes no deletion vectors, so a
    changed row rewrites its whole file; the Spark engine marks the replaced rows instead (a table
    routed to it with ``BRONZE_ENGINE_TABLES=bz_<name>=spark``)."""
    out = {}
    for table, figures in rewrites.items():
        changed = sum(changes[table].values())
        out[table] = {"engine": figures["engine"], "changed_rows": changed,
                      "rows_rewritten": figures["rows_rewritten"], "rows_copied": figures["rows_copied"],
                      "ratio": round(figures["rows_rewritten"] / changed, 1) if changed else None}
    return out


@contextmanager
def validation_service(settings: Any, checks: bool) -> Iterator[dict[str, float]]:
    """The GX validation service's peak RSS and CPU over a phase with checks (the service outlives
    the phase: started by the first phase with checks, warm for the next ones): its peak is reset
    when the phase starts (``clear_refs``), its CPU read before and after."""
    from bronze_assets.lib.quality import worker

    figures = {"rss_mb": 0.0, "cpu_seconds": 0.0}
    before = worker.service_pid(settings) if checks else None
    if before is not None:
        worker.reset_peak(before)
    cpu_before = worker.cpu_seconds(before) if before is not None else None
    yield figures
    pid = worker.service_pid(settings) if checks else None
    if pid is not None:
        figures["rss_mb"] = (worker.peak_rss_bytes(pid) or 0) / 2**20
        since = (cpu_before or 0.0) if pid == before else 0.0
        figures["cpu_seconds"] = (worker.cpu_seconds(pid) or 0.0) - since


@contextmanager
def scratch_source(prefix: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A temporary folder with its own embedded PostgreSQL (``<tmp>/data/pgdata``), and the
    environment the phases run in (go-live today: one snapshot partition). This process keeps
    one handle on the server, so it survives between the phases."""
    from bronze_assets.lib.source.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        env = os.environ | {"BRONZE_DATA_DIR": f"{tmp}/data", "BRONZE_STAGE_DIR": f"{tmp}/stage",
                            "BRONZE_START_DATE": datetime.now(UTC).date().isoformat(),
                            "RUNTIME__DLTHUB_TELEMETRY": "false"}
        env.pop("BRONZE_SOURCE_DSN", None)
        server = EmbeddedPostgres(Path(tmp) / "data" / "pgdata")
        server.start()
        try:
            yield tmp, env
        finally:
            server.stop()


def bench(scale: float, save: Callable[[dict[str, dict[str, Any]]], None] | None = None,
          phases: Sequence[str] = PHASE_NAMES, checks_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The ``phases`` (default: every one) at ``scale``, after seeding (its time is the ``seed``
    entry); ``save`` is given the figures so far after each phase (a long run stopped half-way
    keeps them). ``checks_dir``: where the initial_checks root goes (default: beside the other)."""
    missing = [p for p in phases if p in NEEDS_INITIAL] if "initial" not in phases else []
    if missing:
        raise ValueError(f"phases {', '.join(missing)} re-load the root the initial load creates: "
                         f"add 'initial' to --phases")
    from bronze_assets.lib.quality import worker
    from bronze_assets.settings import Settings

    with scratch_source("bench-ingest-") as (tmp, env):
        root = Path(tmp) / "bronze"
        checks_root = (Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=checks_dir)) if checks_dir
                       else Path(tmp)) / "bronze_checks"
        env = env | {"BRONZE_ROOT": str(root)}
        pgdata = Path(tmp) / "data" / "pgdata"
        results: dict[str, dict[str, Any]] = {}

        def phase(label: str, name: str, *args: str, where: Path = root, prefix: str = "bz_",
                  phase_env: dict | None = None, checks: bool = False) -> None:
            cpu = pg_cpu_seconds(pgdata)
            with validation_service(settings, checks) as gx:
                results[label] = run_phase(name, phase_env or env, *args)
            after = pg_cpu_seconds(pgdata)
            results[label]["pg_cpu_seconds"] = None if cpu is None or after is None else after - cpu
            if checks:  # the service's share: counted in the phase's peak and CPU
                results[label] |= {"gx_service_rss_mb": gx["rss_mb"],
                                   "gx_service_cpu_seconds": gx["cpu_seconds"],
                                   "rss_mb": results[label]["rss_mb"] + gx["rss_mb"],
                                   "cpu_seconds": results[label]["cpu_seconds"] + gx["cpu_seconds"]}
            results[label]["files"] = count_files(where, prefix)
            print(f"  scale {scale:g} {label}: {results[label]['wall']:.1f} s "
                  f"(run at {time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
            if save is not None:
                save(results)

        settings = Settings.from_env(env)
        started = time.perf_counter()
        seeded = run_phase("seed", env, "--scale", str(scale))
        results["seed"] = {"wall": time.perf_counter() - started, "cpu_seconds": seeded["cpu_seconds"],
                           "rss_mb": seeded["rss_mb"], "rows": seeded["rows"],
                           "settle_seconds": seeded["settle_seconds"]}
        if "copy" in phases:
            phase("copy", "copy")
        if "initial" in phases:
            phase("initial", "load")
        if "initial_checks" in phases:
            phase("initial_checks", "load_checks", where=checks_root,
                  phase_env=env | {"BRONZE_ROOT": str(checks_root)}, checks=True)
            shutil.rmtree(checks_root.parent if checks_dir else checks_root, ignore_errors=True)  # counted
        if "unchanged" in phases:
            phase("unchanged", "load")
        if "changed_1pct" in phases:
            run_phase("change", env)
            phase("changed_1pct", "load")
        state = Path(tmp) / "deleted_keys.json"
        for tick, (label, variant, checks) in enumerate([
                ("hourly", "uniform", True), ("hourly_nochecks", "uniform", False),
                ("hourly_skewed", "skewed", True)]):
            if label not in phases:
                continue
            changes = run_phase("tick", env, "--variant", variant, "--tick", str(tick),
                                "--state", str(state))
            before = table_versions(root)
            phase(label, "hourly", *(["--checks"] if checks else []), checks=checks)
            results[label]["changes"] = changes["changes"]
            results[label]["rewritten"] = rewritten(root, before)
            results[label]["rewrite_ratio"] = rewrite_ratios(changes["changes"], results[label]["rewritten"])
            results[label]["verify"] = run_phase("verify", env, "--state", str(state))
            if save is not None:
                save(results)
        if "dlt_merge_initial" in phases:
            dlt_out = Path(tmp) / "dlt"
            # dlt's ten tables (its own _dlt_* state is not Delta)
            phase("dlt_merge_initial", "dlt", "--out", str(dlt_out), where=dlt_out / "lake" / "bronze",
                  prefix="", phase_env=dlt_spec(dlt_out, env))
        worker.stop_service(settings)
    report(scale, seeded["rows"], results, time.perf_counter() - started)
    return results


def report(scale: float, rows: int, results: dict[str, dict[str, Any]], total: float) -> None:
    a = results["copy"]["wall"] if "copy" in results else float("nan")
    print(f"\nscale {scale:g}: {rows:,} source rows; the run took {total:.0f} s")
    print(f"{'phase':<14} {'wall s':>8} {'cpu s':>7} {'rows/s':>11} {'peak RSS MB':>12} {'x (a)':>7} "
          f"{'data s':>7} {'written':>9} {'files':>7} {'PG cpu s':>9}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{LABELS[name]:<14} skipped: {r['skipped']}")
            continue
        if name == "seed":
            print(f"{LABELS[name]:<14} {r['wall']:>8.2f} {r['cpu_seconds']:>7.1f} {'':>11} "
                  f"{r['rss_mb']:>12,.0f}")
            continue
        data = f"{r['data_seconds']:.2f}" if "data_seconds" in r else "-"
        written = f"{r['written']:,}" if "written" in r else "-"
        pg = f"{r['pg_cpu_seconds']:.2f}" if r.get("pg_cpu_seconds") is not None else "-"
        cpu = f"{r['cpu_seconds']:.1f}" if "cpu_seconds" in r else "-"
        print(f"{LABELS[name]:<14} {r['wall']:>8.2f} {cpu:>7} {rows / r['wall']:>11,.0f} "
              f"{r['rss_mb']:>12,.0f} {r['wall'] / a:>7.2f} {data:>7} {written:>9} {r['files']:>7,} {pg:>9}")
    print("\nhourly ticks: source changes (updated/inserted/deleted) → rows in the files bronze rewrote")
    for name in ("hourly", "hourly_nochecks", "hourly_skewed"):
        if name not in results:
            continue
        r = results[name]
        cells = []
        for table in TICK_TABLES:
            ch, rw = r["changes"][table], r["rewritten"][table]
            ratio = r["rewrite_ratio"][table]["ratio"]
            cells.append(f"{table} {ch['updated']}/{ch['inserted']}/{ch['deleted']} → "
                         f"{rw['rows_rewritten']:,} rows in {rw['files_added']} files "
                         f"({rw['commits']} commits by {rw['engine'] or '-'}, {ratio}× the changed rows)")
        verdict = "bronze = source" if r["verify"]["ok"] else "BRONZE ≠ SOURCE"
        failed = f" (failed: {', '.join(r['failed_checks'])})" if r["failed_checks"] else ""
        print(f"  {LABELS[name]:<14} {verdict}; asset checks {r['checks']}{failed}")
        print("    " + "; ".join(cells))
        if not r["verify"]["ok"]:
            for table, t in r["verify"]["tables"].items():
                print(f"    {table}: " + json.dumps(t, default=str))


def json_figures(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, r in results.items():
        if "skipped" in r:
            out[name] = {"skipped": r["skipped"]}
            continue
        out[name] = {"seconds": round(r["wall"], 3), "peak_rss_mb": round(r["rss_mb"], 1)}
        if "files" in r:
            out[name]["files"] = r["files"]
        for key in ("cpu_seconds", "gx_service_rss_mb", "gx_service_cpu_seconds", "rows", "settle_seconds",
                    "data_seconds",
                    "written", "pg_cpu_seconds", "checks",
                    "failed_checks", "changes", "rewritten", "rewrite_ratio"):
            if key in r:
                out[name][key] = r[key]
        if "verify" in r:
            out[name]["verified"] = r["verify"]["ok"]
            if not r["verify"]["ok"]:
                out[name]["verify"] = r["verify"]["tables"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--phases", nargs="+", choices=PHASE_NAMES, default=list(PHASE_NAMES),
                        help="run only these phases (after seeding, in the usual order), e.g. without "
                             "dlt_merge_initial at a large scale; the re-loads and ticks need initial")
    parser.add_argument("--phase", choices=sorted([*PHASES, "tick", "hourly", "verify", "dlt"]))
    parser.add_argument("--checks-dir", type=Path,
                        help="put the initial_checks root in a folder there (e.g. another disk or a tmpfs) "
                             "instead of beside the other root")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--variant", choices=["uniform", "skewed"], default="uniform")
    parser.add_argument("--tick", type=int, default=0)
    parser.add_argument("--checks", action="store_true")
    parser.add_argument("--state", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tables", nargs="+", default=list(TICK_TABLES),
                        help="(tick, verify phases) the tables changed / verified")
    args = parser.parse_args()
    if args.phase:
        import logging
        import warnings

        # Quiet, but not logging.disable(): the demo's runs read Dagster's events (the output
        # metadata behind "rows", "data s" and "written") from DEBUG log records.
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)
        if args.phase == "seed":
            result = phase_seed(args.scale)
        elif args.phase == "tick":
            result = phase_tick(args.variant, args.tick, args.state, args.tables)
        elif args.phase == "hourly":
            result = phase_hourly(args.checks)
        elif args.phase == "verify":
            result = phase_verify(args.state, args.tables)
        elif args.phase == "dlt":
            result = phase_dlt(args.out)
        else:
            result = PHASES[args.phase]()
        result["rss_mb"] = _rss_mb()
        result["cpu_seconds"] = _cpu_seconds()
        print(json.dumps(result, default=str))
        return
    figures: dict[str, Any] = {}

    def save(scale: float, results: dict[str, dict[str, Any]]) -> None:
        """Written after every phase, so a failure or a stop keeps the figures so far."""
        figures[f"{scale:g}"] = json_figures(results)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")

    for scale in args.scales:
        save(scale, bench(scale, lambda results, scale=scale: save(scale, results), args.phases,
                          args.checks_dir))


if __name__ == "__main__":
    main()
