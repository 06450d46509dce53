"""Control tables under ``BRONZE_ROOT``: audit log, lineage, checkpoints, cost, alerts, reconciliation.

Each is a small append-only Delta table with a fixed schema, written by :func:`append_rows`.
Rows are plain dicts; missing keys become NULL, ids and timestamps are filled in when absent,
and so is the user (``Storage.settings.user``: ``$BRONZE_USER`` or the OS user).
Messages are passed through :func:`redact` so a DSN password or a configured secret never lands
in a control table.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, PostCommitHookProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta import audit_inbox
from bronze_assets.lib.delta.change_feed import CHECKPOINT_PROPERTIES
from bronze_assets.lib.delta.exclusive_append import append_exclusive_from
from bronze_assets.lib.delta.query import read_columns, read_snapshot
from bronze_assets.lib.delta.storage import Storage, StorageLike, as_storage, open_table
from bronze_assets.lib.secrets import redact_secrets
from bronze_assets.lib.source.dsn import redact

TS = pa.timestamp("us", tz="UTC")
_LOG = logging.getLogger(__name__)

OPERATION_KEY = "bronze.operation"  # commit metadata: what a non-load commit did (e.g. ERASURE)

AUDIT_LOG = "bz_audit_log"
LINEAGE = "bz_data_lineage"
CHECKPOINTS = "bz_checkpoints"
COST_TRACKING = "bz_cost_tracking"
ALERTS = "bz_alerts"
RECONCILIATION = "bz_reconciliation"

SUCCESS, FAILED, IN_PROGRESS, COMPLETE = "SUCCESS", "FAILED", "IN_PROGRESS", "COMPLETE"

SCHEMAS: dict[str, pa.Schema] = {
    AUDIT_LOG: pa.schema([
        ("audit_id", pa.string()), ("table_name", pa.string()), ("operation_type", pa.string()),
        ("start_timestamp", TS), ("end_timestamp", TS), ("records_affected", pa.int64()),
        ("status", pa.string()), ("error_message", pa.string()), ("user_id", pa.string()),
        ("job_id", pa.string()), ("details", pa.string()),
    ]),
    LINEAGE: pa.schema([
        ("lineage_id", pa.string()), ("source_table", pa.string()), ("target_table", pa.string()),
        ("transformation_type", pa.string()), ("processing_timestamp", TS),
        ("records_processed", pa.int64()), ("processing_duration_seconds", pa.float64()),
        ("job_id", pa.string()), ("pipeline_version", pa.string()),
    ]),
    CHECKPOINTS: pa.schema([
        ("checkpoint_id", pa.string()), ("table_name", pa.string()), ("window", pa.string()),
        ("batch_id", pa.string()), ("chunk_index", pa.int32()), ("chunk_count", pa.int32()),
        ("rows_committed", pa.int64()), ("delta_version", pa.int64()), ("status", pa.string()),
        ("stage_path", pa.string()), ("checkpoint_timestamp", TS), ("job_id", pa.string()),
    ]),
    COST_TRACKING: pa.schema([
        ("cost_id", pa.string()), ("table_name", pa.string()), ("job_id", pa.string()),
        ("recorded_at", TS), ("compute_seconds", pa.float64()), ("cost_rate_per_hour", pa.float64()),
        ("compute_cost", pa.float64()), ("storage_bytes", pa.int64()), ("rows_processed", pa.int64()),
    ]),
    ALERTS: pa.schema([
        ("alert_id", pa.string()), ("kpi", pa.string()), ("severity", pa.string()),
        ("state", pa.string()), ("table_name", pa.string()), ("value", pa.float64()),
        ("threshold", pa.float64()), ("message", pa.string()), ("created_at", TS),
        ("channels", pa.string()),
    ]),
    RECONCILIATION: pa.schema([
        ("run_id", pa.string()), ("table_name", pa.string()), ("key", pa.string()), ("kind", pa.string()),
        ("detected_at", TS), ("repaired_at", TS),
    ]),
}
_FILLED_LATER = ("end_timestamp", "repaired_at")  # timestamps that stay NULL until set
_ID_COLUMN = {name: schema.names[0] for name, schema in SCHEMAS.items()}


def append_rows(storage: StorageLike, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """Append ``rows`` to control table ``table`` (created on first use); an append to a table
    with an inbox (audit log, lineage, cost, checkpoints) also carries the rows waiting there
    (:mod:`audit_inbox`). During a run (:func:`hold_appends`) an append to such a table posts the
    rows to its inbox, and the run's end commits them."""
    if not rows:
        return 0
    storage = as_storage(storage)
    filled = _filled(storage, table, rows)
    inbox = audit_inbox.INBOXES.get(table)
    if inbox is not None and _HELD.holding:
        _HELD.post(storage, table, inbox, filled)
        return len(filled)
    data = pa.Table.from_pylist(filled, schema=SCHEMAS[table])
    if inbox is not None:
        waiting = audit_inbox.pending(storage, SCHEMAS[table], inbox, known=_HELD.known(storage, table))
        if waiting.paths:
            _fold(storage, table, data, waiting)
            return data.num_rows
    for attempt in range(1, 6):  # concurrent appends from parallel steps may race for a version
        try:
            _append(storage, table, data)
            break
        except (CommitFailedError, DeltaError):
            if attempt == 5:
                raise
            time.sleep(0.05 * 2**attempt)
    return data.num_rows


def _filled(storage: Storage, table: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with their id, user and timestamps filled in and their messages redacted."""
    schema = SCHEMAS[table]
    now = datetime.now(UTC)
    filled = []
    for row in rows:
        row = dict(row)
        row.setdefault(_ID_COLUMN[table], str(uuid.uuid4()))
        if "user_id" in schema.names:  # who runs the platform
            row.setdefault("user_id", storage.settings.user)
        for f in schema:
            if f.type == TS and row.get(f.name) is None and f.name not in _FILLED_LATER:
                row[f.name] = now
            if pa.types.is_string(f.type) and isinstance(row.get(f.name), str):
                row[f.name] = redact_secrets(redact(row[f.name], None))
        filled.append(row)
    return filled


def post_audit_row(storage: StorageLike, row: Mapping[str, Any]) -> None:
    """One audit row of a load that changed nothing: on an object store a file in the audit
    log's inbox (one request, where an append opens the log: :mod:`audit_inbox`), on a local
    folder an append."""
    post_row(storage, AUDIT_LOG, row)


def post_row(storage: StorageLike, table: str, row: Mapping[str, Any]) -> None:
    """One row of ``table`` (the audit log, lineage or cost table) that need not be in its Delta
    table at once: on an object store a file in the table's inbox, carried by the table's next
    append (:mod:`audit_inbox`); on a local folder, and for another table, an append."""
    storage = as_storage(storage)
    inbox = audit_inbox.INBOXES.get(table)
    if inbox is None or not storage.remote:
        append_rows(storage, table, [row])
        return
    audit_inbox.post(storage, _filled(storage, table, [row])[0], inbox)


def _fold(storage: Storage, table: str, data: pa.Table, waiting: audit_inbox.Pending) -> None:
    """Append ``data`` and the waiting rows not in ``table`` yet in one commit of its inbox's
    app transaction (on the table kept open in this process: :func:`_append`), then remove their
    files."""
    inbox = audit_inbox.INBOXES[table]
    since = pc.min(waiting.rows[inbox.time_column]).as_py()  # always filled (end: NULL until set)

    def choose(dt: DeltaTable | None) -> pa.Table:
        present = None if dt is None or since is None else read_columns(
            dt, [inbox.id_column], f"{inbox.time_column} >= '{since.isoformat()}'")
        return pa.concat_tables([data, audit_inbox.not_in(present, waiting.rows, inbox.id_column)])

    entry = _kept(storage, table)
    with entry.lock:
        try:
            _, entry.table = append_exclusive_from(
                entry.table, storage, table, inbox.app, choose,
                None if entry.table is None else _hooks(entry.table))
        except BaseException:
            entry.table = None  # reopened by the next append
            raise
    audit_inbox.remove(storage, waiting.paths)


_HeldKey = tuple[str, tuple[tuple[str, str], ...], str]  # root, options, table


class _HeldRows:
    """The control-table rows this process posted to their inboxes during its runs and has not
    committed yet: a run's end (:func:`release_appends`) commits each table's in one commit. The
    inbox keeps them if the process dies first; any later append or release carries them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holds = 0
        self.rows: dict[_HeldKey, tuple[Storage, dict[str, dict[str, Any]]]] = {}  # rows by inbox path

    @property
    def holding(self) -> bool:
        return self.holds > 0

    def post(self, storage: Storage, table: str, inbox: audit_inbox.Inbox,
             rows: Sequence[dict[str, Any]]) -> None:
        """Post ``rows`` (filled) to ``inbox``, one file each, and remember them."""
        for row in rows:
            path = audit_inbox.post(storage, row, inbox)
            with self.lock:
                _, held = self.rows.setdefault(_key(storage, table), (storage, {}))
                held[path] = row

    def known(self, storage: Storage, table: str) -> dict[str, dict[str, Any]]:
        """The rows of ``table`` held for ``storage``, by inbox path."""
        with self.lock:
            entry = self.rows.get(_key(storage, table))
            return dict(entry[1]) if entry else {}

    def take(self) -> list[tuple[Storage, str, dict[str, dict[str, Any]]]]:
        with self.lock:
            taken = [(storage, key[2], held) for key, (storage, held) in self.rows.items() if held]
            self.rows.clear()
        return taken


_HELD = _HeldRows()


def _key(storage: Storage, table: str) -> _HeldKey:
    return storage.root, tuple(sorted(storage.options.items())), table


def hold_appends() -> None:
    """From now until the matching :func:`release_appends`, appends to the tables with an inbox
    (audit log, lineage, cost, checkpoints) post their rows there, one small file each (durable: a
    run killed later leaves them for the next append or release to carry), instead of a commit
    each: on an object store ≈ 8 requests (README 'Bronze on S3'), on a local folder an open of
    the table and a commit (a re-load's ≈ 40 of them: README 'Performance').
    The bronze IO manager holds around a run that loads (a step's process, with the
    multiprocess executor), ``bronze demo`` around all of its runs; holds nest and overlap (two runs in one
    process): the rows are committed when the last ends."""
    with _HELD.lock:
        _HELD.holds += 1


def release_appends() -> None:
    """End one :func:`hold_appends`; the last one commits every row held in this process, one
    commit per table (carrying the other rows waiting in its inbox too), then removes their files.
    A commit that fails leaves its rows in the inbox (readers see them; the next append carries
    them) and is logged, not raised: the run's own work is done."""
    with _HELD.lock:
        _HELD.holds = max(0, _HELD.holds - 1)
        if _HELD.holds:
            return
    for storage, table, held in _HELD.take():
        inbox = audit_inbox.INBOXES[table]
        try:
            waiting = audit_inbox.pending(storage, SCHEMAS[table], inbox, known=held)
            if waiting.paths:
                _fold(storage, table, SCHEMAS[table].empty_table(), waiting)
        except Exception as exc:  # the rows wait in the inbox
            _LOG.warning("%s: %d row(s) of this run wait in %s/%s (not committed: %s); the next "
                         "append to the table carries them", table, len(held), storage.root,
                         inbox.folder, redact_secrets(f"{type(exc).__name__}: {exc}"))


@contextmanager
def held_appends() -> Iterator[None]:
    """:func:`hold_appends` for the block, then :func:`release_appends`."""
    hold_appends()
    try:
        yield
    finally:
        release_appends()


# a control table gets a commit per load: a checkpoint every 10 commits, like every bronze table
CONTROL_PROPERTIES = CHECKPOINT_PROPERTIES


@dataclass
class _Open:
    lock: threading.Lock = field(default_factory=threading.Lock)
    table: DeltaTable | None = None


_OPEN: dict[tuple[str, tuple[tuple[str, str], ...]], _Open] = {}
_OPEN_GUARD = threading.Lock()


def _kept(storage: Storage, table: str) -> _Open:
    """The entry of ``table`` kept open in this process (its lock, the table once opened)."""
    with _OPEN_GUARD:
        return _OPEN.setdefault((storage.uri(table), tuple(sorted(storage.options.items()))), _Open())


def _append(storage: Storage, table: str, data: pa.Table) -> None:
    """Append to a control table kept open in this process: each load appends to three of them,
    and opening one again reads every commit since its last checkpoint, twice, on an object store
    (README 'Deploying', requests per tick). The open table is not refreshed first (a listing and
    a probe of its checkpoint): an append is blind, so when other writers committed since, the
    commit reads their commits and lands after them (delta-rs' conflict resolution)."""
    uri = storage.uri(table)
    if not storage.remote:  # a local folder: opening costs no request
        write_deltalake(uri, data, mode="append", storage_options=storage.delta_options,
                        configuration=CONTROL_PROPERTIES)
        return
    entry = _kept(storage, table)
    with entry.lock:
        try:
            if entry.table is None:
                entry.table = open_table(uri, storage.delta_options)
                if entry.table is not None and not CONTROL_PROPERTIES.items() <= \
                        entry.table.metadata().configuration.items():  # a table from before: once
                    entry.table.alter.set_table_properties(CONTROL_PROPERTIES)
            if entry.table is None:
                write_deltalake(uri, data, mode="append", storage_options=storage.delta_options,
                                configuration=CONTROL_PROPERTIES)
            else:
                write_deltalake(entry.table, data, mode="append",
                                post_commithook_properties=_hooks(entry.table))
        except BaseException:
            entry.table = None  # reopened by the next append
            raise


def _hooks(dt: DeltaTable) -> PostCommitHookProperties:
    """The append's post-commit work: the expired logs are looked for (a listing of the whole log)
    only with a checkpoint, which is when delta-rs can remove any."""
    interval = int(dt.metadata().configuration.get("delta.checkpointInterval") or 100)
    return PostCommitHookProperties(create_checkpoint=True,
                                    cleanup_expired_logs=(dt.version() + 2) % interval == 0)


def read_table(storage: StorageLike, table: str) -> pa.Table:
    """The current rows of a control table (empty with its schema if never written); those of a
    table with an inbox (audit log, lineage, cost, checkpoints) with the rows waiting in it
    (listed first: a row leaves it only once in the table; the rows this process holds are not
    read again)."""
    storage = as_storage(storage)
    inbox = audit_inbox.INBOXES.get(table)
    waiting = None if inbox is None else \
        audit_inbox.pending(storage, SCHEMAS[table], inbox, known=_HELD.known(storage, table))
    dt = storage.open(table)
    rows = SCHEMAS[table].empty_table() if dt is None else read_snapshot(dt)
    if inbox is None or waiting is None or not waiting.paths:
        return rows
    return pa.concat_tables([rows, audit_inbox.not_in(rows, waiting.rows, inbox.id_column)])


@dataclass
class AuditEntry:
    """One operation being audited; fill ``records_affected``/``details`` before it ends."""

    table_name: str
    operation_type: str
    job_id: str | None = None
    records_affected: int = 0
    details: str | None = None
    start: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def row(self, status: str, error: str | None = None) -> dict[str, Any]:
        return {
            "table_name": self.table_name, "operation_type": self.operation_type,
            "start_timestamp": self.start, "end_timestamp": datetime.now(UTC),
            "records_affected": self.records_affected, "status": status,
            "error_message": error, "job_id": self.job_id,
            "details": self.details,
        }


@contextmanager
def audited(storage: StorageLike, table_name: str, operation_type: str, job_id: str | None = None,
            ) -> Iterator[AuditEntry]:
    """Write one ``bz_audit_log`` row for the block: SUCCESS, or FAILED with the error."""
    entry = AuditEntry(table_name, operation_type, job_id)
    try:
        yield entry
    except BaseException as exc:
        message = f"{type(exc).__name__}: {exc}"
        append_rows(storage, AUDIT_LOG, [entry.row(FAILED, message[:4000])])
        raise
    append_rows(storage, AUDIT_LOG, [entry.row(SUCCESS)])


@cache
def pipeline_version() -> str:
    """The installed bronze_assets version (recorded with lineage), looked up once per process."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bronze_assets")
    except PackageNotFoundError:
        return "dev"


@dataclass
class LoadRecord:
    """What one materialization did, as written to the audit, lineage and cost tables."""

    table_name: str
    source_table: str
    transformation_type: str
    job_id: str | None
    start: datetime
    seconds: float = 0.0
    rows_read: int = 0
    records_affected: int = 0
    storage_bytes: int = 0
    status: str = SUCCESS
    error: str | None = None
    details: str | None = None
    contract_version: str = "1"


def load_record(contract: Contract, job_id: str | None, start: datetime, **fields: Any) -> LoadRecord:
    """A :class:`LoadRecord` for a materialization of ``contract``."""
    return LoadRecord(
        table_name=contract.bronze_table, source_table=contract.source_ref,
        transformation_type=f"MERGE_{contract.load_pattern.value.upper()}", job_id=job_id,
        start=start, contract_version=contract.version, **fields,
    )


def record_load(storage: StorageLike, load: LoadRecord) -> None:
    """One audit row (success or failure), one lineage row (success) and one cost row (at the
    rate of ``Storage.settings.cost_per_hour``). A load that read no row and changed none (an
    unchanged tick) writes its audit row only: it moved no data to trace, its seconds are the
    audit row's start and end. On an object store, where each control-table append opens that
    table (README 'Bronze on S3', requests per unchanged tick), a load that changed none posts
    its rows to the tables' inboxes (:func:`post_row`)."""
    storage = as_storage(storage)
    end = datetime.now(UTC)
    row = {
        "table_name": load.table_name, "operation_type": "LOAD", "start_timestamp": load.start,
        "end_timestamp": end, "records_affected": load.records_affected, "status": load.status,
        "error_message": load.error[:4000] if load.error else None,
        "job_id": load.job_id, "details": load.details,
    }
    if load.status == SUCCESS and not load.rows_read and not load.records_affected:
        post_audit_row(storage, row)
        return
    unchanged = load.status == SUCCESS and not load.records_affected  # e.g. a daily full load
    write = partial(post_row, storage) if unchanged else \
        lambda table, one: append_rows(storage, table, [one])
    write(AUDIT_LOG, row)
    if load.status == SUCCESS:
        write(LINEAGE, {
            "source_table": load.source_table, "target_table": load.table_name,
            "transformation_type": load.transformation_type, "processing_timestamp": end,
            "records_processed": load.rows_read, "processing_duration_seconds": round(load.seconds, 3),
            "job_id": load.job_id,
            "pipeline_version": f"{pipeline_version()}+contract.{load.contract_version}",
        })
    rate = storage.settings.cost_per_hour
    write(COST_TRACKING, {
        "table_name": load.table_name, "job_id": load.job_id, "recorded_at": end,
        "compute_seconds": round(load.seconds, 3), "cost_rate_per_hour": rate,
        "compute_cost": round(load.seconds / 3600 * rate, 6), "storage_bytes": load.storage_bytes,
        "rows_processed": load.rows_read,
    })


def record_checkpoint(storage: StorageLike, info: Any, job_id: str | None) -> None:
    """One ``bz_checkpoints`` row for a committed chunk
    (a :class:`~bronze_assets.lib.delta.merger.CommitInfo`)."""
    append_rows(storage, CHECKPOINTS, [{
        "table_name": info.table, "window": info.window, "batch_id": info.batch_id,
        "chunk_index": info.chunk, "chunk_count": info.chunks, "rows_committed": info.rows_committed,
        "delta_version": info.delta_version, "status": COMPLETE if info.complete else IN_PROGRESS,
        "job_id": job_id,
    }])
