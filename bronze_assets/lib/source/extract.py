"""Contract-driven extraction: one snapshot-consistent, chunked binary-COPY read into Arrow.

The source query renders ``record_hash`` (ARCHITECTURE §2.2) in PostgreSQL itself, so both
engines hash exactly what PostgreSQL prints, and computes the Delta partition value of a row
(``load_date`` / ``<business>_month``) from the load window.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bronze_assets.contracts import Contract, PartitionKind
from bronze_assets.contracts.arrow import source_schema
from bronze_assets.lib.source.ddl import qualified, quote_ident
from bronze_assets.lib.source.postgres import connect
from bronze_assets.settings import SOURCE_SCHEMA

BATCH_SIZE_HINT_BYTES = 32 * 1024 * 1024
ENV_PARALLELISM = "BRONZE_EXTRACT_PARALLELISM"
_DONE = object()


def default_parallelism() -> int:
    """Source connections per extraction (``$BRONZE_EXTRACT_PARALLELISM``, default: CPU count, ≤ 4)."""
    value = os.environ.get(ENV_PARALLELISM)
    return max(1, int(value)) if value else max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class LoadWindow:
    """The source rows one load reads: all of them, or those of a partition range.

    ``start``/``end`` bound the partition range (UTC, end exclusive). ``changed_since`` widens a
    daily window backwards to the incremental watermark minus the overlap, so rows committed
    late by long transactions are still read. ``open_end`` is the end of the newest Dagster
    partition: monthly rows whose business date is NULL or lies beyond it have no partition of
    their own and are loaded with the month of their ``updated_at``.
    """

    start: datetime | None = None
    end: datetime | None = None
    changed_since: datetime | None = None
    open_end: datetime | None = None

    @property
    def is_full(self) -> bool:
        return self.start is None


def _ts(value: datetime) -> str:
    return f"TIMESTAMPTZ '{value.astimezone(UTC).isoformat()}'"


def _date(value: datetime | date) -> str:
    return f"DATE '{value.date() if isinstance(value, datetime) else value}'"


def record_hash_sql(contract: Contract) -> str:
    """``md5(concat_ws(E'\\x1f', coalesce(c::text, '\\N'), …))`` over every source column."""
    parts = ", ".join(f"coalesce({quote_ident(c)}::text, '\\N')" for c in contract.column_names)
    return f"md5(concat_ws(E'\\x1f', {parts}))"


def window_predicate(contract: Contract, window: LoadWindow) -> str | None:
    """SQL ``WHERE`` condition selecting the window's rows (None = the whole table)."""
    if window.is_full or window.start is None or window.end is None:
        return None
    kind = contract.partitioning.kind
    if kind is PartitionKind.MONTHLY_BUSINESS_DATE:
        bd = quote_ident(contract.partitioning.business_date_column or "")
        homeless = f"{bd} IS NULL"
        if window.open_end is not None:
            homeless = f"({bd} IS NULL OR {bd} >= {_date(window.open_end)})"
        return (
            f"({bd} >= {_date(window.start)} AND {bd} < {_date(window.end)}) OR "
            f"({homeless} AND updated_at >= {_ts(window.start)} AND updated_at < {_ts(window.end)})"
        )
    lower = window.start if window.changed_since is None else min(window.start, window.changed_since)
    return f"updated_at >= {_ts(lower)} AND updated_at < {_ts(window.end)}"


def partition_value_sql(contract: Contract, window: LoadWindow) -> str | None:
    """SQL expression of the Delta partition value a *new* row gets in this window."""
    p = contract.partitioning
    if p.kind is PartitionKind.NONE:
        return None
    if p.kind is PartitionKind.DAILY_LOAD_DATE:
        day = "(updated_at AT TIME ZONE 'UTC')::date"
        if window.start is None:
            return day
        # a late row read through the watermark overlap lands in the partition of this run
        return f"GREATEST({day}, {_date(window.start)})"
    bd = quote_ident(p.business_date_column or "")
    by_update = "date_trunc('month', updated_at AT TIME ZONE 'UTC')::date"
    if window.start is None or window.end is None:
        return f"COALESCE(date_trunc('month', {bd})::date, {by_update})"
    in_window = f"{bd} >= {_date(window.start)} AND {bd} < {_date(window.end)}"
    return f"CASE WHEN {in_window} THEN date_trunc('month', {bd})::date ELSE {by_update} END"


INVALID_PREFIX, RAW_PREFIX = "_invalid:", "_raw:"


def _select_column(contract: Contract, name: str, rescued: bool = False) -> str:
    """A numeric travels as its exact unscaled integer (ADBC would render it as text).

    A rescued column (policy ``rescue``) is read per record from its text: a value PostgreSQL
    cannot read as the contract type (``pg_input_is_valid``, PostgreSQL 16+) becomes NULL and is
    flagged, with its raw text alongside.
    """
    column = contract.column(name)
    ident = quote_ident(name)
    value = ident
    if rescued:
        valid = f"pg_input_is_valid({ident}::text, '{column.type.value}')"
        value = f"(CASE WHEN {valid} THEN ({ident}::text)::{column.type.value} END)"
        flags = (f", ({ident} IS NOT NULL AND NOT {valid}) AS {quote_ident(INVALID_PREFIX + name)}"
                 f", CASE WHEN NOT {valid} THEN {ident}::text END AS {quote_ident(RAW_PREFIX + name)}")
    else:
        flags = ""
    if column.type.is_numeric:
        _, scale = column.type.precision_scale  # type: ignore[misc]
        return f"({value} * 1{'0' * scale})::bigint AS {ident}{flags}"
    return (ident if value == ident else f"{value} AS {ident}") + flags


def unscaled_to_decimal(values: pa.Array, type_: pa.Decimal128Type) -> pa.Array:
    """Exact decimal128 from unscaled int64 values (16-byte two's complement, no rounding)."""
    ints = values.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    words = np.empty((len(ints), 2), dtype=np.int64)
    words[:, 0] = ints
    words[:, 1] = ints >> 63
    validity = values.buffers()[0] if values.null_count else None
    if validity is not None and values.offset:
        validity = pa.compute.is_valid(values).buffers()[1]
    return pa.Array.from_buffers(type_, len(ints), [validity, pa.py_buffer(words.tobytes())],
                                 null_count=values.null_count)


def select_sql(
    contract: Contract, window: LoadWindow, schema: str = SOURCE_SCHEMA, extra_columns: Sequence[str] = (),
    rescued: Sequence[str] = (),
) -> str:
    """The extraction query: source columns, ``record_hash``, the partition value, new columns.

    Columns the source has but the contract does not (``extra_columns``) travel as text and are
    not part of ``record_hash``, so existing hashes stay stable (policy ``addNewColumns``).
    """
    cols = [_select_column(contract, c, c in rescued) for c in contract.column_names]
    cols += [f"{quote_ident(c)}::text AS {quote_ident(c)}" for c in extra_columns]
    cols.append(f"{record_hash_sql(contract)} AS record_hash")
    part = partition_value_sql(contract, window)
    if part is not None:
        cols.append(f"{part} AS {quote_ident(contract.partitioning.delta_column or '')}")
    sql = f"SELECT {', '.join(cols)} FROM {qualified(schema, contract.name)}"
    where = window_predicate(contract, window)
    return sql if where is None else f"{sql} WHERE ({where})"


def keys_sql(contract: Contract, schema: str = SOURCE_SCHEMA) -> str:
    """Key-only scan used to find keys that vanished from the source (soft deletes)."""
    cols = ", ".join(quote_ident(c) for c in contract.primary_key)
    return f"SELECT {cols} FROM {qualified(schema, contract.name)}"


def normalize(batch: pa.RecordBatch, contract: Contract) -> pa.RecordBatch:
    """Cast driver types to the contract's Arrow types (ADBC returns numeric as text)."""
    target = source_schema(contract)
    arrays, fields = [], []
    for field in batch.schema:
        arr = batch.column(field.name)
        if isinstance(arr, pa.ExtensionArray):
            arr = arr.storage
        want = target.field(field.name).type if field.name in target.names else None
        if want is not None and pa.types.is_decimal(want) and pa.types.is_integer(arr.type):
            arrays.append(unscaled_to_decimal(arr, want))
            fields.append(pa.field(field.name, want))
            continue
        if want is None:
            want = pa.string() if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) \
                else arr.type
        arrays.append(arr if arr.type == want else pc.cast(arr, want))
        fields.append(pa.field(field.name, want))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


@dataclass
class SourceSnapshot:
    """Facts read in the same snapshot as the data: server time and the safe watermark cap."""

    server_time: datetime
    oldest_open_xact_start: datetime | None
    snapshot_xmin: int

    def watermark_cap(self) -> datetime:
        """Highest watermark that cannot skip rows of transactions still in flight."""
        if self.oldest_open_xact_start is None:
            return self.server_time
        return min(self.server_time, self.oldest_open_xact_start - timedelta(microseconds=1))


class SourceReader:
    """Reads one table in one REPEATABLE READ snapshot, optionally over several connections.

    With ``parallelism`` N > 1 the rows are split by ``pk % N`` over N connections that share
    the first connection's exported snapshot (as ``pg_dump -j`` does), so the source renders
    and hashes on N backends while this process enriches on N threads; a bounded queue keeps
    memory flat.
    """

    def __init__(
        self, dsn: str, contract: Contract, schema: str = SOURCE_SCHEMA, parallelism: int | None = None
    ) -> None:
        self.dsn, self.contract, self.schema = dsn, contract, schema
        self.parallelism = parallelism or default_parallelism()
        if len(contract.primary_key) != 1:
            self.parallelism = 1
        self._conn = None
        self._snapshot_id: str | None = None

    def __enter__(self) -> SourceReader:
        self._conn = self._open()
        if self.parallelism > 1:
            (self._snapshot_id,) = self.query("SELECT pg_export_snapshot()")[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._close(self._conn)
            self._conn = None

    def _open(self, snapshot_id: str | None = None):
        conn = connect(self.dsn, autocommit=True)
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if snapshot_id:
                cur.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
        return conn

    @staticmethod
    def _close(conn) -> None:
        try:
            with conn.cursor() as cur:
                cur.execute("COMMIT")
        finally:
            conn.close()

    def snapshot(self) -> SourceSnapshot:
        now, oldest, xmin = self.query(
            "SELECT now(), (SELECT min(xact_start) FROM pg_stat_activity "
            "  WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()), "
            "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        )[0]
        return SourceSnapshot(now, oldest, xmin)

    def query(self, sql: str) -> list[tuple]:
        """Run a small query in this reader's snapshot."""
        with self._conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def batches(
        self,
        window: LoadWindow,
        transform: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
        extra_columns: Sequence[str] = (),
        rescued: Sequence[str] = (),
    ) -> Iterator[pa.RecordBatch]:
        """Stream the window's rows in bounded Arrow batches (binary COPY under the hood).

        ``transform`` runs on the reading threads, in parallel when there are several.
        """
        sql = select_sql(self.contract, window, self.schema, extra_columns, rescued)
        yield from self._parallel(sql, transform)

    def raw_json(self, window: LoadWindow, available: set[str]) -> Iterator[pa.RecordBatch]:
        """The window's rows as they are, one JSON text per row (for the quarantine).

        The window filter is applied only if every column it names still exists.
        """
        sql = f"SELECT row_to_json(t)::text AS record FROM {qualified(self.schema, self.contract.name)} t"
        where = window_predicate(self.contract, window)
        needed = {"updated_at", self.contract.partitioning.business_date_column} - {None}
        if where is not None and needed <= available:
            sql += f" WHERE ({where})"
        yield from self._stream(self._conn, sql)

    def key_batches(self) -> Iterator[pa.RecordBatch]:
        """Stream every primary key currently in the source."""
        yield from self._parallel(keys_sql(self.contract, self.schema), None)

    def _split(self, sql: str, part: int) -> str:
        pk = quote_ident(self.contract.primary_key[0])
        clause = f"({pk} % {self.parallelism} = {part})"
        return f"{sql} AND {clause}" if " WHERE " in sql else f"{sql} WHERE {clause}"

    def _stream(self, conn, sql: str) -> Iterator[pa.RecordBatch]:
        with conn.cursor() as cur:
            cur.adbc_statement.set_options(
                **{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_SIZE_HINT_BYTES)}
            )
            cur.execute(sql)
            for batch in cur.fetch_record_batch():
                if batch.num_rows:
                    yield normalize(batch, self.contract)

    def _parallel(
        self, sql: str, transform: Callable[[pa.RecordBatch], pa.RecordBatch] | None
    ) -> Iterator[pa.RecordBatch]:
        apply = transform or (lambda b: b)
        if self.parallelism == 1:
            for batch in self._stream(self._conn, sql):
                yield apply(batch)
            return
        out: queue.Queue = queue.Queue(maxsize=2 * self.parallelism)
        stop = threading.Event()

        def work(part: int) -> None:
            conn = None
            try:
                conn = self._conn if part == 0 else self._open(self._snapshot_id)
                for batch in self._stream(conn, self._split(sql, part)):
                    if stop.is_set():
                        break
                    out.put(apply(batch))
                out.put(_DONE)
            except BaseException as exc:  # handed to the consumer, re-raised there
                out.put(exc)
            finally:
                if conn is not None and part != 0:
                    self._close(conn)

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(self.parallelism)]
        for t in threads:
            t.start()
        finished = 0
        try:
            while finished < len(threads):
                item = out.get()
                if item is _DONE:
                    finished += 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()
            while any(t.is_alive() for t in threads):
                with contextlib.suppress(queue.Empty):
                    out.get(timeout=0.1)
            for t in threads:
                t.join()
