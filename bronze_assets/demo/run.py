"""``bronze demo``: seed the embedded source if empty and materialize every bronze asset.

One Dagster run per partitions definition covers all of its partitions (first to last key, a
single-run range), one run loads the unpartitioned tables. The runs go to the given instance (the
UI's ``$DAGSTER_HOME`` in ``make demo``), so the UI shows every partition as materialized. The runs
run at once, on threads of this process, their steps too, two tables read at once in all
(:mod:`bronze_assets.defs.threaded_executor`'s ``StepPool``, one for the three runs).
Dagster's event stream goes to a log file, not the terminal: the terminal gets one line per table.

A table that fails does not stop the others: the summary marks it with its one-line reason
(:mod:`bronze_assets.lib.failures`). A Ctrl-C stops the demo (:class:`KeyboardInterrupt`), with
no retry. Only the embedded source is seeded, unless the caller says otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import sqlalchemy
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from bronze_assets.contracts import CONTRACTS, LANDING_CONTRACTS, Contract, get_contract
from bronze_assets.defs import threaded_executor
from bronze_assets.defs.assets import table_key
from bronze_assets.defs.partitions import partitions_def
from bronze_assets.demo.event_files import write_event_files
from bronze_assets.demo.event_writes import batched_event_writes
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.demo.seed import seed_source, source_row_counts
from bronze_assets.lib.delta.control import held_appends
from bronze_assets.lib.failures import one_line
from bronze_assets.lib.stop import clear_stop, request_stop
from bronze_assets.settings import Settings, data_dir, env

if TYPE_CHECKING:
    from bronze_assets.lib.delta.storage import Storage

DEMO_JOB = "bronze_demo"
LOG_FILE = Path("logs") / "demo.log"  # under $BRONZE_DATA_DIR
_LOGGER_KEY = "bronze_demo_log"

# Dagster settings for the demo's runs (unless the environment sets them). Measured on the
# SQLite instance of `make ui` with one single-run range of a trivial asset over 1,000 daily
# partitions (30-100 s on a shared 2-core machine), of which
# * DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS saves the 1,000 "planned" events written before
#   the run starts (15-50 s): one planned event per asset holds the whole range. Dagster's caveat:
#   if such a run fails, its partitions are not marked as failed (the run is).
# * DAGSTER_EVENT_BATCH_SIZE hands a ranged output's per-partition materializations to the event
#   log storage as one batch. Dagster's SQLite storage stores a batch event by event (no measurable
#   change); PostgreSQL storage (dagster-postgres) and Dagster+ write it at once, so the demo opts in.
DAGSTER_SETTINGS = {
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
    "DAGSTER_EVENT_BATCH_SIZE": "1000",
}
# What remains is one materialization per partition, each stored by Dagster's SQLite storage in
# 2-3 commits on fresh connections: with SQLite's default fsync per commit ~50 ms, with
# ``PRAGMA synchronous=OFF`` on the demo's own connections ~15 ms (300 partitions: 15-18 s -> 4.5-5 s).
# OFF keeps the data safe if the process crashes; only an OS crash or power loss during the demo
# could damage the local instance (then delete $BRONZE_DATA_DIR/dagster_home).
SQLITE_SYNCHRONOUS = "OFF"
STEP_THREADS = 2  # tables read at once by the demo's runs, all runs together (README Performance)
STEPS_BESIDE_WRITES = 1  # tables more while others only write their output (README Performance)
SMALL_TABLE_SHARE = 0.05  # a table this small beside the largest adds little to the peak
ENCRYPTED_ROW_FACTOR = 1.5  # an encrypted table's rows against their source bytes (step_weight)
DEFAULT_ROW_BYTES = 100  # a source row's bytes when the catalog has no row count (never analyzed)
# a step's work per row against a plain table's (step_cost, README Performance): an encrypted
# table's rows are also keyed and encrypted, GIL-bound; a history table's written twice
ENCRYPTED_ROW_COST = 3.0
HISTORY_ROW_COST = 1.0


@dataclass
class HistorySummary:
    """A ``bz_<name>_history`` table (SCD type 2, ARCHITECTURE §2.7) in the demo's report."""

    table: str
    rows: int  # versions of keys held
    current: int  # of which current (``_valid_to`` unset)
    versions: int  # Delta versions of the table


@dataclass
class TableSummary:
    """One line of the demo's report."""

    table: str
    rows_read: int
    bronze_rows: int
    active_rows: int
    versions: int
    avg_score: float | None
    seconds: float
    error: str | None = None  # why its load failed (one line), None when it loaded
    trace: str | None = field(default=None, repr=False)  # the failure's traceback (--verbose)
    reconciled: str | None = None  # the reconciliation check: "equal", or what differs
    history: HistorySummary | None = None  # its history table, when the contract keeps one


class DemoRefusedError(RuntimeError):
    """``bronze demo`` will not do what it was asked without an explicit flag (the message names it)."""


@dataclass
class TableProgress:
    """One table's step of a run, reported when it ends."""

    table: str
    rows: int
    partitions: int  # partitions materialized (0: unpartitioned)
    seconds: float  # step wall time: load, checks and Dagster's bookkeeping
    ok: bool = True
    error: str | None = None  # one line: why it failed
    trace: str | None = None  # the failure's traceback (for --verbose)
    interrupted: bool = False  # ended by Ctrl-C

    def describe(self) -> str:
        parts = f"{self.partitions:>5,} partitions" if self.partitions else " " * 16
        status = "" if self.ok else "  interrupted" if self.interrupted else \
            "  FAILED (reason below the summary)"
        return f"  {self.table:<18} {self.rows:>9,} rows {parts} {self.seconds:>7.1f} s{status}"


def _error_text(error: object) -> str:
    """A serialized error's own message, without its class name."""
    message = str(getattr(error, "message", "") or "")
    cls = str(getattr(error, "cls_name", "") or "")
    head, sep, rest = message.partition(": ")
    if sep and (head == cls or head.endswith("." + cls)):
        message = rest
    return one_line(message)


def failure_message(data: object) -> str:
    """One line saying why a step failed: the ``dg.Failure``'s description (the failure policy's
    message), else the innermost error's message (under Dagster's "Exceeded max_retries")."""
    user = getattr(data, "user_failure_data", None)
    if user is not None and getattr(user, "description", None):
        return one_line(user.description)
    error = getattr(data, "error", None)
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    return _error_text(error) or "failed (see the log)"


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")


@contextmanager
def dagster_settings(settings: Mapping[str, str] = DAGSTER_SETTINGS) -> Iterator[None]:
    """Dagster's environment switches (keeping any value already set) and the SQLite pragma for
    the connections this process opens to the instance's storage, while the runs execute."""
    added = [k for k in settings if k not in os.environ]
    os.environ.update({k: settings[k] for k in added})
    listen = not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "connect", _sqlite_pragmas)
    if listen:
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _sqlite_pragmas)
    try:
        yield
    finally:
        if listen:
            sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", _sqlite_pragmas)
        for k in added:
            os.environ.pop(k, None)


class _RunEvents(logging.Handler):
    """Receives every Dagster log record of the demo's runs: reports each table as its step ends
    and keeps each asset's output metadata (a range run publishes the same for every key)."""

    def __init__(self, step_assets: Mapping[str, str], on_table: Callable[[TableProgress], None] | None):
        super().__init__(logging.DEBUG)
        self.step_assets = step_assets
        self.on_table = on_table
        self.metadata: dict[str, dict[str, object]] = {}
        self.partitions: dict[str, set[str]] = {}
        self.started: dict[str, float] = {}
        self.reported: set[str] = set()  # tables whose step ended
        self.interrupted = False  # a step ended by an interrupt (Ctrl-C)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._handle(record)
        except Exception:  # a progress display must never fail a run
            self.handleError(record)

    def _handle(self, record: logging.LogRecord) -> None:
        event = (getattr(record, "dagster_meta", None) or {}).get("dagster_event")
        if event is None:
            return
        if event.is_step_materialization:
            key = event.asset_key.to_user_string()
            materialization = event.step_materialization_data.materialization
            if materialization.partition:
                self.partitions.setdefault(key, set()).add(materialization.partition)
            if key not in self.metadata and "rows_read" in materialization.metadata:
                self.metadata[key] = {k: v.value for k, v in materialization.metadata.items()}
        elif event.step_key in self.step_assets:
            if event.is_step_start:
                self.started[event.step_key] = record.created
            elif event.is_step_success or event.is_step_failure:
                table = self.step_assets[event.step_key]
                self.reported.add(table)
                seconds = record.created - self.started.get(event.step_key, record.created)
                rows = int(self.metadata.get(table, {}).get("rows_read", 0) or 0)  # type: ignore[call-overload]
                error = trace = None
                interrupted = False
                if event.is_step_failure:
                    data = event.step_failure_data
                    interrupted = getattr(data.error_source, "value", None) == "INTERRUPT"
                    self.interrupted |= interrupted
                    error = failure_message(data)
                    trace = data.error.to_string() if data.error is not None else None
                if self.on_table:
                    self.on_table(TableProgress(table, rows, len(self.partitions.get(table, ())), seconds,
                                                ok=event.is_step_success, error=error, trace=trace,
                                                interrupted=interrupted))


def _run_logger(handlers: list[logging.Handler]) -> dg.LoggerDefinition:
    """A Dagster logger writing to ``handlers`` only (replaces the console logger)."""
    log = logging.Logger(DEMO_JOB, logging.DEBUG)  # not registered: nothing propagates to the root
    for handler in handlers:
        log.addHandler(handler)
    return dg.LoggerDefinition(lambda _context: log, description="bronze demo: log file and progress")


QUIET_RUN_CONFIG = {"loggers": {_LOGGER_KEY: {}}}  # the run config of a :func:`quiet_job`


def quiet_job(
    assets: list[dg.AssetsDefinition],
    resources: Mapping[str, object],
    handlers: list[logging.Handler],
    *,
    selection: dg.AssetSelection | None = None,
    asset_checks: list[dg.AssetsDefinition] | None = None,
) -> dg.JobDefinition:
    """The job materializing ``selection`` (default: ``assets``), its log records sent to
    ``handlers`` instead of the console (run it with :data:`QUIET_RUN_CONFIG`)."""
    definitions = dg.Definitions(
        assets=assets, resources=resources, asset_checks=asset_checks,
        jobs=[dg.define_asset_job(DEMO_JOB, selection=selection or dg.AssetSelection.assets(*assets))],
    )
    return definitions.resolve_job_def(DEMO_JOB).with_logger_defs({_LOGGER_KEY: _run_logger(handlers)})


def execute_quietly(
    assets: list[dg.AssetsDefinition],
    instance: dg.DagsterInstance,
    resources: Mapping[str, object],
    handlers: list[logging.Handler],
    *,
    tags: Mapping[str, str] | None = None,
    selection: dg.AssetSelection | None = None,
    raise_on_error: bool = True,
    asset_checks: list[dg.AssetsDefinition] | None = None,
    executor: dg.ExecutorDefinition | None = None,
) -> dg.ExecuteInProcessResult:
    """``dg.materialize`` with the job's log records sent to ``handlers`` instead of the console,
    on ``executor`` (default: Dagster's in-process executor, one step after another)."""
    job = quiet_job(assets, resources, handlers, selection=selection, asset_checks=asset_checks)
    if executor is not None:
        return threaded_executor.execute_in_process(job, executor, instance=instance, tags=tags,
                                                    raise_on_error=raise_on_error,
                                                    run_config=QUIET_RUN_CONFIG)
    return job.execute_in_process(instance=instance, tags=tags, raise_on_error=raise_on_error,
                                  run_config=QUIET_RUN_CONFIG)


def _run_failure(result: dg.ExecuteInProcessResult | None) -> str:
    """Why a run failed as a whole (before or around its steps), in one line."""
    for event in result.all_events if result is not None else []:
        if event.event_type_value == "RUN_FAILURE":
            error = getattr(event.event_specific_data, "error", None)
            while error is not None and getattr(error, "cause", None) is not None:
                error = error.cause
            if error is not None:
                return _error_text(error)
    return "the run failed before this table's step started (see the log)"


@contextmanager
def _ctrl_c_stops(pool: threaded_executor.StepPool) -> Iterator[Callable[[], bool]]:
    """While the runs execute on other threads, a Ctrl-C (SIGINT) in this, the main thread, stops
    them instead of raising :class:`KeyboardInterrupt` here: ``pool``'s runs start no further step
    and the running ones stop at their next stop point. Yields a function telling whether one came.

    Raising it in the main thread while it joins a run's thread is not safe on CPython 3.11:
    ``Thread.join`` interrupted by an exception marks a live thread as ended (python/cpython#90882),
    so the demo went on and exited with runs still executing (their output on closed streams, a
    crash or an abort in native code at the interpreter's exit, their ``tail`` children unreaped).
    A SIGINT that is ignored or handled by someone else is left to them."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield lambda: False
        return
    received = threading.Event()

    def stop(_signum: int, _frame: object) -> None:
        received.set()
        pool.interrupt()
        request_stop()

    signal.signal(signal.SIGINT, stop)
    try:
        yield received.is_set
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def materialize_all(
    definitions: dg.Definitions,
    dsn: str,
    instance: dg.DagsterInstance,
    *,
    now: datetime | None = None,
    on_table: Callable[[TableProgress], None] | None = None,
    log_handler: logging.Handler | None = None,
    with_checks: bool = True,
) -> dict[str, dict[str, object]]:
    """Materialize every bronze asset from the source ``dsn``: one single-run range per
    partitions definition, over all of its partitions up to the current one, and one run for the
    unpartitioned assets. ``on_table`` hears of each table as its step ends; Dagster's log
    records go to ``log_handler`` only (never the console).

    A table whose load fails does not stop the others: ``on_table`` hears of it with its reason.
    An interrupt (Ctrl-C) stops at once, with :class:`KeyboardInterrupt`.

    Returns the output metadata of each asset (a range run publishes the same for every key).
    """
    from bronze_assets.defs.resources import PostgresSource

    if with_checks:  # GX's import in the service overlaps Dagster's start and the first extraction
        _start_validation_service()
    now = now or datetime.now(UTC)
    groups: dict[dg.PartitionsDefinition | None, list[dg.AssetsDefinition]] = {}
    for asset in definitions.assets or []:
        assert isinstance(asset, dg.AssetsDefinition)
        name = table_key(asset)
        if name.startswith("bz_"):
            groups.setdefault(partitions_def(get_contract(name)), []).append(asset)
    resources = {**(definitions.resources or {}), "source": PostgresSource(dsn=dsn)}
    step_assets = {a.node_def.name: table_key(a) for assets in groups.values() for a in assets}
    events = _RunEvents(step_assets, on_table)
    handlers = [events] + ([log_handler] if log_handler else [])
    planned = _runs(groups, now)
    everything = [a for _tags, assets in planned for a in assets]
    shapes = source_shapes(dsn, [get_contract(table_key(a)) for a in everything])
    pool = _step_pool([{table_key(a): a.node_def.name for a in assets} for _tags, assets in planned],
                      with_checks, shapes)
    runs = []
    for tags, assets in planned:
        selection = dg.AssetSelection.assets(*assets)
        if not with_checks:
            selection = selection.without_checks()
        pool.plan(a.node_def.name for a in assets)
        runs.append((tags, assets, quiet_job(assets, resources, handlers, selection=selection)))
    errors: list[BaseException] = []

    def execute(tags: Mapping[str, str], assets: list[dg.AssetsDefinition], job: dg.JobDefinition) -> None:
        result = None
        try:
            result = threaded_executor.execute_in_process(
                job, threaded_executor.threaded_executor(STEP_THREADS, pool=pool), instance=instance,
                tags=tags, raise_on_error=False, run_config=QUIET_RUN_CONFIG)
        except KeyboardInterrupt:
            pool.interrupt()
        except BaseException as error:  # raised in the caller's thread once the other runs ended
            errors.append(error)
            pool.fail(error)  # the other runs stop
        finally:
            pool.close(a.node_def.name for a in assets)
        if events.interrupted:
            pool.interrupt()  # a step ended by an interrupt stops every run, as a Ctrl-C does
        for asset in assets:  # a run that failed around its steps: say so for each table
            table = table_key(asset)
            if table not in events.reported and on_table is not None and not pool.interrupted:
                on_table(TableProgress(table, 0, 0, 0.0, ok=False, error=_run_failure(result)))

    with dagster_settings(), runs_at_once(instance), batched_event_writes(instance):
        ctrl_c = run_at_once([partial(execute, *run) for run in runs], pool)
    if ctrl_c:
        raise KeyboardInterrupt
    if errors or pool.failure is not None:  # a run's error (Dagster's own) stopped every run
        raise errors[0] if errors else pool.failure  # type: ignore[misc]
    if pool.interrupted:
        raise KeyboardInterrupt
    return events.metadata


def run_at_once(runs: list[Callable[[], None]], pool: threaded_executor.StepPool) -> bool:
    """Call each of ``runs`` on a thread of its own, their steps on ``pool``, and return once every
    one has ended; whether a Ctrl-C came meanwhile (it stops ``pool``'s runs: :func:`_ctrl_c_stops`)."""
    threads = [threading.Thread(target=run, name=f"demo run {i}", daemon=True) for i, run in enumerate(runs)]
    with _ctrl_c_stops(pool) as ctrl_c:
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():  # a SIGINT another thread received is handled here next
                    thread.join(threaded_executor.POLL_SECONDS)  # (no exception is raised here)
        finally:
            clear_stop()
        return ctrl_c()


@contextmanager
def runs_at_once(instance: dg.DagsterInstance) -> Iterator[None]:
    """Let several runs of ``instance`` execute at once on threads of this process:
    * each run's start configures the instance's YAML-defined Python log handlers with
      ``logging.config.dictConfig``, which closes every handler of the process while holding the
      logging module's lock, and deadlocks with a thread logging meanwhile (it holds its handler's
      lock and asks for the module's): the handlers are configured once, here, before the runs;
    * an ephemeral instance's in-memory SQLite run storage, unlike its event log storage, takes no
      lock around a connection, and two threads writing it at once fail ("database table is
      locked"): its connections are taken one at a time while this lasts."""
    from dagster._core.storage.runs.in_memory import InMemoryRunStorage

    patched: list[tuple[object, str]] = []
    if "get_yaml_python_handlers" not in vars(instance):
        handlers = instance.get_yaml_python_handlers()
        instance.get_yaml_python_handlers = lambda: handlers  # type: ignore[method-assign]
        patched.append((instance, "get_yaml_python_handlers"))
    storage = instance.run_storage
    if isinstance(storage, InMemoryRunStorage) and "connect" not in vars(storage):
        lock = threading.RLock()
        connect = storage.connect

        @contextmanager
        def one_at_a_time() -> Iterator[Any]:
            with lock, connect() as conn:
                yield conn

        storage.connect = one_at_a_time  # type: ignore[method-assign]
        patched.append((storage, "connect"))
    try:
        yield
    finally:
        for owner, name in patched:
            delattr(owner, name)


def _runs(groups: Mapping[dg.PartitionsDefinition | None, list[dg.AssetsDefinition]], now: datetime,
          ) -> list[tuple[dict[str, str], list[dg.AssetsDefinition]]]:
    """The demo's runs (tags, assets): the unpartitioned tables (the dimensions) first, then one
    single-run range per partitions definition over its keys up to ``now``, parents' before their
    children's (by foreign-key depth), the order in which they start. With checks, a child's step
    waits for its parents' (:func:`_step_pool`): its referential check then keeps its outcome at
    its parents' final versions, and the first scheduled tick reuses it."""
    runs: list[tuple[dict[str, str], list[dg.AssetsDefinition]]] = []
    for parts, assets in sorted(groups.items(), key=lambda g: (g[0] is not None, max(
            fk_depth(table_key(a)) for a in g[1]))):
        if parts is None:
            runs.append(({}, assets))
        elif keys := parts.get_partition_keys(current_time=now):
            runs.append(({ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
                         assets))
    return runs


def _step_pool(runs: list[Mapping[str, str]], with_checks: bool, shapes: Mapping[str, SourceShape],
               ) -> threaded_executor.StepPool:
    """The slots the demo's runs (each ``{table: step key}``) share: two tables' steps at once in
    all (the two cores), and a third while one of them only writes its output, within one memory
    budget: each step weighs what it holds (:func:`step_weight`) until it ends, its write included
    (a step's peak RSS is mostly its write: a commit chunk of rows, encoded), and the budget is two
    of the largest unencrypted tables' weights plus :data:`SMALL_TABLE_SHARE`: two large tables at
    once, as one of the old runs held, and small ones beside them; with checks one large table at
    a time (its checks hold its keys, the validation service its batches). A step heavier than half
    the budget (no other as heavy fits beside it) first, while the process's memory is at its
    lowest, then the longest steps first (:func:`step_cost`: a long step left for the end runs
    alone, one core idle); with checks a table's step after its parents', in whichever run they
    are (its referential check reads them)."""
    steps = {table: step for run in runs for table, step in run.items()}
    after = {step: frozenset(steps[f"bz_{fk.parent_table}"] for fk in get_contract(table).foreign_keys
                             if f"bz_{fk.parent_table}" in steps and f"bz_{fk.parent_table}" != table)
             for table, step in steps.items()} if with_checks else {}
    chunk_rows = Settings.from_env().commit_chunk_rows
    weights = {table: step_weight(get_contract(table), shapes.get(table), chunk_rows) for table in steps}
    plain = [w for t, w in weights.items() if not get_contract(t).encrypted_columns]
    budget = (1 if with_checks else 2) * max(plain, default=0.0) * (1 + SMALL_TABLE_SHARE)
    heaviest = max(steps, key=lambda t: (weights[t], t), default=None)  # None: no table to load
    first = heaviest if heaviest is not None and weights[heaviest] > budget / 2 else None
    cost = {t: step_cost(get_contract(t), shapes.get(t)) for t in steps}
    order = [steps[t] for t in sorted(steps, key=lambda t: (t != first, -cost[t], -weights[t], t))]
    return threaded_executor.StepPool(STEP_THREADS, beside_writes=STEPS_BESIDE_WRITES, release_output=False,
                                      after=after, weight={steps[t]: w for t, w in weights.items()},
                                      budget=budget or None, order=order)


@dataclass(frozen=True)
class SourceShape:
    """A source table's size from the catalog: its heap's bytes and rows (``reltuples``)."""

    bytes: int
    rows: int

    @property
    def row_bytes(self) -> float:
        return self.bytes / self.rows if self.rows > 0 else 0.0


def step_weight(contract: Contract, shape: SourceShape | None, chunk_rows: int) -> float:
    """What a table's step of the initial load holds in memory, in source bytes: one commit chunk of
    its rows (``chunk_rows``, or all of them; its read holds about as much), an encrypted table's
    × :data:`ENCRYPTED_ROW_FACTOR` (its ciphertexts are wider than the source's values). A history
    table's seed is not counted: it hands delta-rs 4,096-row pieces, flat in the table's rows and
    lighter than the create before it. Measured at scale 30 (README Performance): a large table's
    step ≈ +200-250 MB, the encrypted history table's create +256-306 MB and its seed +89-93 MB,
    the others in proportion to their rows."""
    if shape is None:
        return 0.0
    rows = shape.rows if shape.rows > 0 else shape.bytes / DEFAULT_ROW_BYTES
    row_bytes = shape.row_bytes if shape.rows > 0 else DEFAULT_ROW_BYTES
    held = min(rows, chunk_rows) * row_bytes
    return held * ENCRYPTED_ROW_FACTOR if contract.encrypted_columns else held


def step_cost(contract: Contract, shape: SourceShape | None) -> float:
    """A table's step of the initial load in rows of a plain table: its rows, an encrypted table's
    each + :data:`ENCRYPTED_ROW_COST`, a history table's + :data:`HISTORY_ROW_COST` (measured per
    table, each alone at scale 10: ``bz_customers`` 13 µs of CPU per row, mostly on one thread,
    ``bz_products`` 5.4, the plain large tables 1.9-2.8)."""
    rows = 0 if shape is None else shape.rows if shape.rows > 0 else shape.bytes / DEFAULT_ROW_BYTES
    return rows * (1 + (ENCRYPTED_ROW_COST if contract.encrypted_columns else 0.0)
                   + (HISTORY_ROW_COST if contract.history else 0.0))


def source_shapes(dsn: str, contracts: list[Contract]) -> dict[str, SourceShape]:
    """Bytes and rows of each contract's source table (``pg_relation_size`` and ``reltuples``, from
    the catalog: no scan), by bronze table; empty when the source cannot say."""
    from bronze_assets.lib.source.ddl import qualified
    from bronze_assets.lib.source.postgres import connect

    database = {c.bronze_table for c in CONTRACTS.values()}
    tables = {c.bronze_table: qualified(c.source_schema, c.source_name) for c in contracts
              if c.bronze_table in database}
    if not tables:
        return {}
    try:
        with connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT t, coalesce(pg_relation_size(to_regclass(t)), 0), "
                        "coalesce((SELECT reltuples FROM pg_class WHERE oid = to_regclass(t)), -1) "
                        "FROM unnest($1::text[]) t", parameters=(list(tables.values()),))
            by_source = {t: SourceShape(int(size), int(rows)) for t, size, rows in cur.fetchall()}
    except Exception:  # only the order and the weights of the steps depend on it
        return {}
    return {table: by_source[ref] for table, ref in tables.items() if ref in by_source}


def fk_depth(table: str, seen: frozenset[str] = frozenset()) -> int:
    """0 for a table without foreign keys, else one more than its deepest parent's (a table in
    its own chain of parents, as a self-reference, counts 0 there)."""
    if table in seen:
        return 0
    parents = {f"bz_{fk.parent_table}" for fk in get_contract(table).foreign_keys} - {table}
    return max((1 + fk_depth(p, seen | {table}) for p in parents), default=0)


@contextmanager
def _quiet_logs(handler: logging.Handler) -> Iterator[None]:
    """Python warnings (e.g. Dagster's PreviewWarning) and Dagster's own Python loggers go to
    ``handler`` instead of the terminal while the demo runs."""
    captured = [logging.getLogger("py.warnings"), logging.getLogger("dagster")]
    saved = [(log, log.propagate) for log in captured]
    logging.captureWarnings(True)
    for log in captured:
        log.addHandler(handler)
        log.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    finally:
        logging.captureWarnings(False)
        for log, propagate in saved:
            log.removeHandler(handler)
            log.propagate = propagate


def _file_handler(path: Path) -> logging.FileHandler:
    """A fresh log file. Append mode: Dagster's run setup (``dictConfig``) closes every logging
    handler of the process, and a closed append-mode FileHandler reopens on its next record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("", encoding="utf-8")
    handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler


@contextmanager
def _terminal() -> Iterator[Callable[[Callable[[], None]], None]]:
    """Runs ``fn`` with ``sys.stderr`` writing straight to the terminal.

    During a run Dagster captures the process's stdout/stderr into its compute logs and mirrors
    them back with a ``tail -F`` that is stopped when the run ends, so a line printed near the end
    of a run can be lost; progress printed through this bypasses the capture.
    """
    try:
        fd = os.dup(sys.__stderr__.fileno()) if sys.__stderr__ else None
    except (OSError, ValueError):
        fd = None
    if fd is None:
        yield lambda fn: fn()
        return
    with os.fdopen(fd, "w", encoding="utf-8", errors="replace", buffering=1) as stream:
        def call(fn: Callable[[], None]) -> None:
            with redirect_stderr(stream):
                fn()

        yield call


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError, AttributeError):
            stream.flush()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """This process's stdout and stderr file descriptors (and so those of the helper processes it
    starts: Dagster's compute-log tails, which print a traceback on Ctrl-C) write to ``path``
    while the demo runs; its progress goes to the terminal through :func:`_terminal`."""
    _flush_std_streams()
    saved = [(fd, os.dup(fd)) for fd in (1, 2) if _is_open(fd)]
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for fd, _ in saved:
            os.dup2(log, fd)
        yield
    finally:
        _flush_std_streams()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(log)


def run_demo(scale: float = 1.0, on_progress: Callable[[str], None] | None = None, *,
             seed_external: bool = False) -> list[TableSummary]:
    """Seed the source if it is empty, load every bronze table, and summarise the result.

    Only the embedded server is seeded, unless ``seed_external``: an empty source named by
    ``$BRONZE_SOURCE_DSN`` (or the ``KConnectionString`` secret) raises :class:`DemoRefusedError`.
    A table that fails is in the summary with its reason (``TableSummary.error``); Ctrl-C raises
    :class:`KeyboardInterrupt` at once.
    """
    say = on_progress or (lambda _msg: None)
    log_path = data_dir() / LOG_FILE
    log_handler = _file_handler(log_path)
    try:
        with _quiet_logs(log_handler), _terminal() as on_terminal, _output_to(log_path):
            return _run_demo(scale, lambda msg: on_terminal(lambda: say(msg)), log_handler, log_path,
                             seed_external)
    finally:
        log_handler.close()


def _source_is_empty(dsn: str) -> bool:
    """Whether none of the ten source tables holds a row. A table the role may not read counts as
    holding rows: the demo then loads, and each table's load says what is missing."""
    from bronze_assets.lib.failures import Cause, cause_of
    from bronze_assets.lib.source.postgres import SourceConnectionError

    try:
        return sum(source_row_counts(dsn).values()) == 0
    except SourceConnectionError:
        raise
    except Exception as exc:
        if cause_of(exc)[0] is Cause.PERMISSION:
            return False
        raise


# The demo's runs write their events through one held connection per storage (as Dagster's
# webserver does), not a new PostgreSQL connection per event: PostgreSQL storage opens one per
# write by default (NullPool), a server process started and authenticated for each of the runs'
# events. No statement timeout (0): a run's writes are not the webserver's queries.
POOL_RECYCLE_SECONDS = 3600
POOL_MAX_OVERFLOW = 10


def hold_connections(instance: dg.DagsterInstance) -> None:
    """Make ``instance``'s database storages keep their connections open (a no-op for SQLite and
    in-memory storage)."""
    instance.optimize_for_webserver(statement_timeout=0, pool_recycle=POOL_RECYCLE_SECONDS,
                                    max_overflow=POOL_MAX_OVERFLOW)


def _start_validation_service(every_table: bool = False) -> None:
    """Start the local engine's validation service in the background (the first load's checks
    would wait for its import of GX), with every table's suite built when ``every_table``; a
    failure is left to the first check, which names it."""
    from bronze_assets.lib.quality import worker

    worker.start_in_background(Settings.from_env(), every_table=every_table)


def _run_demo(scale: float, say: Callable[[str], None], log_handler: logging.Handler,
              log_path: Path, seed_external: bool) -> list[TableSummary]:
    from bronze_assets.definitions import defs
    from bronze_assets.defs.operations import REPORT_ASSET
    from bronze_assets.defs.resources import BronzeStorage
    from bronze_assets.lib.delta.storage import shared_tables
    from bronze_assets.lib.source.dsn import describe_dsn
    from bronze_assets.lib.source.postgres import configured_source_dsn, resolve_source_dsn
    from bronze_assets.settings import ENV_SOURCE_DSN, SOURCE_SCHEMA

    _start_validation_service(every_table=True)  # GX's import and the suites beside the seeding and start-up
    dsn = resolve_source_dsn(Settings.from_env())
    if _source_is_empty(dsn):
        if configured_source_dsn(Settings.from_env()) is not None and not seed_external:
            raise DemoRefusedError(
                f"the source {describe_dsn(dsn)} holds no rows in schema {SOURCE_SCHEMA}, and bronze demo "
                f"seeds only its embedded server: pass --seed-external to create schema {SOURCE_SCHEMA} "
                f"there and fill its ten tables with generated demo data, or unset {ENV_SOURCE_DSN} "
                f"to use the embedded server")
        say(f"seeding the source at scale {scale:g} …")
        options = SeedOptions(scale=scale)
        report = seed_source(dsn, options, progress=False)
        say(f"seeded {report.total_rows:,} rows in {report.seconds:.1f} s")
        events = write_event_files(Settings.from_env().landing_root, report.rows.get("shipments", 0), options)
        if events.files:
            say(f"wrote {len(events.files)} landing files of {events.events:,} shipment events")
    definitions = defs()
    instance = dg.DagsterInstance.get() if env("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    hold_connections(instance)
    storage = BronzeStorage()
    tables = [*CONTRACTS.values(), *LANDING_CONTRACTS.values()]  # the database's, then the files'
    say(f"loading {len(tables)} bronze tables into {storage.storage().root} "
        f"(Dagster's log: {log_path})")
    started = time.perf_counter()
    failed: dict[str, TableProgress] = {}

    def on_table(progress: TableProgress) -> None:
        if not progress.ok:
            failed[progress.table] = progress
        say(progress.describe())

    # one commit per control table for the demo's runs; nothing but the demo writes its tables: the
    # reconciliation and the report read each as its load left it, with no other open
    with dagster_settings(), held_appends(), shared_tables():
        metadata = materialize_all(definitions, dsn, instance, on_table=on_table, log_handler=log_handler)
        done = f"{len(tables) - len(failed)} of {len(tables)}" if failed else "all"
        say(f"{done} bronze assets materialized in {time.perf_counter() - started:.1f} s")
        report = next((a for a in definitions.assets or [] if isinstance(a, dg.AssetsDefinition)
                       and table_key(a) == REPORT_ASSET), None)
        reconciled = reconcile_all(definitions, dsn, instance, log_handler)
        figures: dict[str, dict[str, Any]] = {}
        if report is not None:
            from bronze_assets.lib.monitoring.report import TABLE_FIGURES

            result = execute_quietly([report], instance, {"bronze": storage}, [log_handler])
            shown = result.get_asset_materialization_events()[0].materialization.metadata
            say(f"monitoring report: {shown['report'].value}")
            figures = shown[TABLE_FIGURES].value if TABLE_FIGURES in shown else {}  # type: ignore[assignment]
    summaries = []
    for contract in tables:
        meta = metadata.get(contract.bronze_table, {})
        # the report's status table read every table last (nothing wrote them since): its figures
        total, active, versions, history = summary_figures(figures[contract.bronze_table]) \
            if contract.bronze_table in figures else table_summary(storage.storage(), contract)
        failure = failed.get(contract.bronze_table)
        summaries.append(TableSummary(
            contract.bronze_table, int(meta.get("rows_read", 0) or 0), total, active, versions,
            meta.get("avg_quality_score"), float(meta.get("duration_seconds", 0.0) or 0.0),  # type: ignore[arg-type]
            error=failure.error if failure else None, trace=failure.trace if failure else None,
            reconciled=reconciled.get(contract.bronze_table), history=history,
        ))
    return summaries


def summary_figures(figures: Mapping[str, Any]) -> tuple[int, int, int, HistorySummary | None]:
    """(rows, active rows, Delta versions, history) of one table from the report's figures
    (:func:`~bronze_assets.lib.monitoring.report.table_figures`)."""
    version, history = figures["delta_version"], figures["history"]
    held = None if history is None or history["delta_version"] is None else HistorySummary(
        history["table"], history["versions"], history["current"], history["delta_version"] + 1)
    return figures["rows"], figures["active"], 0 if version is None else version + 1, held


def table_summary(storage: Storage, contract: Contract) -> tuple[int, int, int, HistorySummary | None]:
    """(rows, active rows, Delta versions, history) of ``contract``'s tables, read from their logs."""
    from bronze_assets.lib.delta.query import value_counts
    from bronze_assets.lib.enrich.metadata import ACTIVE

    dt = storage.open(contract.bronze_table)
    total = active = versions = 0
    if dt is not None:
        counts = value_counts(dt, "record_status", ACTIVE)
        total, active = sum(counts.values()), counts.get(ACTIVE, 0)
        versions = dt.version() + 1
    history = history_summary(storage, contract.history_table) if contract.history else None
    return total, active, versions, history


def history_summary(storage: Storage, table: str) -> HistorySummary | None:
    """Rows, current rows and Delta versions of a history table (None when it was not written)."""
    from bronze_assets.lib.delta.history import VALID_TO
    from bronze_assets.lib.delta.query import read_columns

    dt = storage.open(table)
    if dt is None:
        return None
    valid_to = read_columns(dt, [VALID_TO])[VALID_TO]
    return HistorySummary(table, len(valid_to), valid_to.null_count, dt.version() + 1)


def reconcile_all(definitions: dg.Definitions, dsn: str, instance: dg.DagsterInstance,
                  log_handler: logging.Handler) -> dict[str, str]:
    """Run every table's ``reconciliation`` check (as its daily schedule does); per table "equal"
    or the check's description."""
    from bronze_assets.defs.resources import PostgresSource
    from bronze_assets.lib.reconcile.check import RECONCILIATION

    checks = [c for c in definitions.asset_checks or [] if isinstance(c, dg.AssetsDefinition)
              and c.check_keys and all(k.name == RECONCILIATION for k in c.check_keys)]
    assets = [a for a in definitions.assets or [] if isinstance(a, dg.AssetsDefinition)
              and table_key(a).startswith("bz_")]
    if not checks:
        return {}
    resources = {**(definitions.resources or {}), "source": PostgresSource(dsn=dsn)}
    keys = [k for c in checks for k in c.check_keys]
    result = execute_quietly(assets, instance, resources, [log_handler], asset_checks=checks,
                             selection=dg.AssetSelection.checks(*keys), raise_on_error=False)
    return {e.asset_key.to_user_string(): "equal" if e.passed else (e.description or "differs")
            for e in result.get_asset_check_evaluations()}


def format_summary(rows: list[TableSummary]) -> str:
    """The summary table; a failed table reads FAILED, and its reason follows the table."""
    head = (f"{'table':<18} {'read':>9} {'bronze':>9} {'active':>9} {'versions':>8} "
            f"{'avg score':>9} {'seconds':>8}  {'status':<6}  reconciled")
    lines = [head, "-" * len(head)]
    for r in rows:
        score = f"{r.avg_score:.2f}" if r.avg_score is not None else "-"
        lines.append(f"{r.table:<18} {r.rows_read:>9,} {r.bronze_rows:>9,} {r.active_rows:>9,} "
                     f"{r.versions:>8} {score:>9} {r.seconds:>8.2f}  {'FAILED' if r.error else 'ok':<6}  "
                     f"{r.reconciled or '-'}".rstrip())
    histories = [r.history for r in rows if r.history is not None]
    if histories:
        lines += ["", f"{'history (SCD type 2)':<22} {'rows':>9} {'current':>9} {'versions':>8}"]
        lines += [f"  {h.table:<20} {h.rows:>9,} {h.current:>9,} {h.versions:>8}" for h in histories]
    checked = [r for r in rows if r.reconciled is not None]
    if checked:
        equal = sum(r.reconciled == "equal" for r in checked)
        lines += ["", f"reconciliation check: {equal} of {len(checked)} tables equal their source"
                      + ("" if equal == len(checked) else " (bronze reconcile --repair fixes the others)")]
    failures = [r for r in rows if r.error]
    if failures:
        lines += ["", f"{len(failures)} of {len(rows)} tables failed (re-run `bronze demo` once fixed; "
                      f"`bronze --verbose demo` prints their tracebacks):"]
        lines += [f"  {r.error}" if r.error.startswith(r.table) else f"  {r.table}: {r.error}"
                  for r in failures if r.error]
    return "\n".join(lines)
