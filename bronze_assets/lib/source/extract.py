"""Contract-driven extraction: one snapshot-consistent, chunked binary-COPY read into Arrow.

The source query renders ``record_hash`` (ARCHITECTURE §2.2) in PostgreSQL itself, so both
engines hash exactly what PostgreSQL prints, and computes the Delta partition value of a row
(``load_date`` / ``<business>_month``) from the load window.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from bronze_assets.contracts import Contract, PartitionKind
from bronze_assets.contracts.arrow import source_schema
from bronze_assets.lib.source.ddl import qualified, quote_ident
from bronze_assets.lib.source.postgres import connect
from bronze_assets.settings import SOURCE_SCHEMA

BATCH_SIZE_HINT_BYTES = 32 * 1024 * 1024


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


def select_sql(contract: Contract, window: LoadWindow, schema: str = SOURCE_SCHEMA) -> str:
    """The extraction query: source columns, ``record_hash`` and the partition value."""
    cols = [quote_ident(c) for c in contract.column_names]
    cols.append(f"{record_hash_sql(contract)} AS record_hash")
    part = partition_value_sql(contract, window)
    if part is not None:
        cols.append(f"{part} AS {quote_ident(contract.partitioning.delta_column or '')}")
    sql = f"SELECT {', '.join(cols)} FROM {qualified(schema, contract.name)}"
    where = window_predicate(contract, window)
    return sql if where is None else f"{sql} WHERE {where}"


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
    """Reads a window of one table (and optionally all its keys) in one REPEATABLE READ snapshot."""

    def __init__(self, dsn: str, contract: Contract, schema: str = SOURCE_SCHEMA) -> None:
        self.dsn, self.contract, self.schema = dsn, contract, schema
        self._conn = None

    def __enter__(self) -> SourceReader:
        self._conn = connect(self.dsn, autocommit=True)
        with self._conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            try:
                with self._conn.cursor() as cur:
                    cur.execute("COMMIT")
            finally:
                self._conn.close()
                self._conn = None

    def snapshot(self) -> SourceSnapshot:
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT now(), (SELECT min(xact_start) FROM pg_stat_activity "
                "  WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()), "
                "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
            )
            now, oldest, xmin = cur.fetchone()
        return SourceSnapshot(now, oldest, xmin)

    def query(self, sql: str) -> list[tuple]:
        """Run a small query in this reader's snapshot."""
        with self._conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def batches(self, window: LoadWindow) -> Iterator[pa.RecordBatch]:
        """Stream the window's rows in bounded Arrow batches (binary COPY under the hood)."""
        yield from self._stream(select_sql(self.contract, window, self.schema))

    def key_batches(self) -> Iterator[pa.RecordBatch]:
        """Stream every primary key currently in the source."""
        yield from self._stream(keys_sql(self.contract, self.schema))

    def _stream(self, sql: str) -> Iterator[pa.RecordBatch]:
        with self._conn.cursor() as cur:
            cur.adbc_statement.set_options(
                **{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_SIZE_HINT_BYTES)}
            )
            cur.execute(sql)
            reader = cur.fetch_record_batch()
            for batch in reader:
                if batch.num_rows:
                    yield normalize(batch, self.contract)
