"""The rows one load reads, and the Delta partition each of them lives in (ARCHITECTURE §2.4 v2).

Daily tables: partition ``D`` holds the rows first loaded by the run of ``D``; the first
partition (``$BRONZE_START_DATE``) is the initial snapshot of all history. Monthly tables:
partition ``M`` holds the rows whose business date falls in ``M``; a NULL business date files
the row under the day of its ``updated_at``; dates before the first month go to the first
month, dates after the newest month (and NULL ``updated_at``) to the newest month. Any window
may be widened to every row changed since the table's watermark, wherever it lives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pyarrow as pa

from bronze_assets.contracts import Contract, PartitionKind
from bronze_assets.lib.source.ddl import qualified, quote_ident, quote_literal

KeyTexts = tuple[str | None, ...]  # a key named by its columns' PostgreSQL texts (any key type)
SourceKey = int | KeyTexts  # a key a window reads by name: one integer column's value, or its texts

# What the ADBC driver delivers for PostgreSQL's infinities: PostgreSQL's own sentinels shifted to
# the Unix epoch with integer wraparound (pinned by bronze_assets_tests/test_record_hash.py).
DATE_POS_INF, DATE_NEG_INF = -2147472692, -2147472691
TS_NEG_INF = -9222425352054775808
TS_WRAPPED_BELOW = -(10**18)  # legit timestamps (4713 BC …) are above; below is +inf or wrapped far future
US_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class LoadWindow:
    """The source rows one load reads (ARCHITECTURE §2.4 v2): the whole table, or a partition range.

    ``start``/``end`` bound the partition range (UTC, end exclusive). ``initial``: the range holds
    the daily tables' first partition, the initial snapshot, so it has no lower bound on
    ``updated_at``. ``changed_since`` widens any window to every row updated at or after it
    (the table's watermark minus the overlap), wherever that row lives. ``changes_only``: a
    scheduled run reads just those rows, not the partition's own rows again (every row updated
    before the watermark is in bronze already). Monthly tables also
    know their first month and the end of the newest one (``first_month``/``newest_end``; for
    daily tables the first day and the end of the open day): rows whose business date is NULL,
    earlier or later belong to one of those (never dropped); a whole-table load files rows
    between them.
    """

    start: datetime | None = None
    end: datetime | None = None
    initial: bool = False
    changed_since: datetime | None = None
    first_month: date | None = None
    newest_end: date | None = None
    open: bool = False  # the range holds the open (current) partition
    changes_only: bool = False  # read only the rows changed since ``changed_since`` (scheduled runs)
    keys: tuple[SourceKey, ...] | None = None  # read just these primary keys (CDC, or a repair)
    all_rows: bool = False  # read every row, placing new keys in the range (a CDC slot's snapshot)
    reaches_open: bool = False  # the range reaches the open partition (or the one that closed last)

    @property
    def is_full(self) -> bool:
        return self.start is None and self.keys is None

    @property
    def covers_table(self) -> bool:
        """Whether the window reads every row of the table: a whole-table load, the daily initial
        snapshot while it is the open day, or a monthly range from the first to the newest month
        (its rows are then the source's key set, so no separate key sweep is needed)."""
        if self.is_full or self.all_rows:
            return True
        if self.keys is not None or self.changes_only or self.end is None:
            return False
        if self.initial:
            return self.open
        return self.first_month is not None and self.newest_end is not None \
            and self.start.date() <= self.first_month and self.end.date() >= self.newest_end


def cdc_window(window: LoadWindow, keys: Sequence[SourceKey] | None, all_rows: bool) -> LoadWindow:
    """``window`` as a log-based CDC read: just ``keys`` (the changed ones; integers, or key texts),
    or with ``all_rows`` every row (a slot's snapshot), new keys placed in the window's range."""
    if keys is not None:
        named = {k if isinstance(k, tuple) else int(k) for k in keys}
        return replace(window, keys=tuple(sorted(named, key=lambda k: k if isinstance(k, int) else
                                                 tuple("" if t is None else t for t in k))))
    if all_rows:
        return replace(window, all_rows=True, changes_only=False)
    return window


@dataclass(frozen=True)
class TableSelection:
    """What a read of a PostgreSQL table tells the engine to stage: the rows of the run's
    ``partition`` (UTC range; None: the whole table) as the window plan reads them
    (``changes_only``: a scheduled run's changes), or just ``keys`` / with ``all_rows`` every row
    (log-based CDC; new keys land in ``partition``), read in the exported snapshot ``snapshot_id``
    when there is one. ``final_metadata`` rides on the batch's last commit, which is made even when
    no row changed with ``commit_always`` (a slot's snapshot records its position)."""

    dsn: str = field(repr=False)  # holds the password
    partition: tuple[datetime, datetime] | None
    changes_only: bool = False
    keys: Sequence[SourceKey] | None = None
    all_rows: bool = False
    snapshot_id: str | None = None
    final_metadata: Mapping[str, str] = field(default_factory=dict)
    commit_always: bool = False


def _ts(value: datetime) -> str:
    return f"TIMESTAMPTZ '{value.astimezone(UTC).isoformat()}'"


def _date(value: datetime | date) -> str:
    return f"DATE '{value.date() if isinstance(value, datetime) else value}'"


def business_key_sql(contract: Contract) -> str:
    """The date a monthly row is filed under: its business date, else the day of ``updated_at``."""
    bd = quote_ident(contract.partitioning.business_date_column or "")
    return f"COALESCE({bd}, (updated_at AT TIME ZONE 'UTC')::date)"


def keys_predicate(contract: Contract, keys: Sequence[SourceKey]) -> str:
    """SQL true for a row whose primary key is one of ``keys``: integers, or key texts read back as
    the key columns' types (so the primary key's index serves it)."""
    if not keys:
        return "FALSE"
    if not isinstance(keys[0], tuple):
        listed = ",".join(str(int(k)) for k in keys)  # type: ignore[arg-type]
        return f"{quote_ident(contract.primary_key[0])} = ANY('{{{listed}}}'::bigint[])"
    columns = ", ".join(quote_ident(k) for k in contract.primary_key)
    return f"({columns}) IN ({key_values_sql(contract, keys)})"  # type: ignore[arg-type]


def key_values_sql(contract: Contract, keys: Sequence[KeyTexts]) -> str:
    """``VALUES`` of ``keys`` (texts) cast to the key columns' declared types."""
    types = [contract.column(k).type.value for k in contract.primary_key]
    rows = (", ".join(f"{'NULL' if t is None else quote_literal(t)}::{type_}"
                      for t, type_ in zip(key, types, strict=True)) for key in keys)
    return "VALUES " + ", ".join(f"({row})" for row in rows)


def missing_keys_sql(contract: Contract, keys: Sequence[KeyTexts], schema: str | None = None) -> str:
    """The ``keys`` (texts) the source table does not hold, as the key columns' values."""
    cols = [quote_ident(k) for k in contract.primary_key]
    table = qualified(schema or contract.source_schema, contract.source_name)
    match = " AND ".join(f"t.{c} = v.{c}" for c in cols)
    return (f"SELECT {', '.join(f'v.{c}' for c in cols)} FROM ({key_values_sql(contract, keys)}) AS "
            f"v({', '.join(cols)}) WHERE NOT EXISTS (SELECT FROM {table} t WHERE {match})")


def window_predicate(contract: Contract, window: LoadWindow) -> str | None:
    """SQL ``WHERE`` condition selecting the window's rows (None = the whole table)."""
    if window.keys is not None:
        return keys_predicate(contract, window.keys)
    if window.is_full or window.all_rows or window.start is None or window.end is None:
        return None
    changed = None if window.changed_since is None else \
        f"updated_at >= {_ts(window.changed_since)} OR updated_at IS NULL"
    if window.changes_only and changed is not None:
        return changed
    if contract.partitioning.kind is PartitionKind.MONTHLY_BUSINESS_DATE:
        key = business_key_sql(contract)
        terms = [f"({key} >= {_date(window.start)} AND {key} < {_date(window.end)})"]
        if window.first_month is not None and window.start.date() <= window.first_month:
            terms.append(f"{key} < {_date(window.first_month)}")
        if window.newest_end is not None and window.end.date() >= window.newest_end:
            terms.append(f"{key} >= {_date(window.newest_end)} OR {key} IS NULL")
    else:
        lower = "" if window.initial else f"updated_at >= {_ts(window.start)} AND "
        terms = [f"({lower}updated_at < {_ts(window.end)})"]
        if window.initial:
            terms.append("updated_at IS NULL")
        if window.open:  # dated in the future (clock skew, 'infinity'): the open day takes it
            terms.append(f"updated_at >= {_ts(window.end)}")
    if changed is not None:
        terms.append(changed)
    return " OR ".join(terms)


def _clamped_days(days: pl.Expr, lo: date, hi: date) -> pl.Expr:
    lo_days, hi_days = (lo - date(1970, 1, 1)).days, (hi - date(1970, 1, 1)).days
    return days.clip(lo_days, hi_days).fill_null(hi_days).cast(pl.Int32).cast(pl.Date)


def _date_days(column: str) -> pl.Expr:
    """Days since 1970 of a raw date32 column, the infinities mapped to ±huge (NULL stays NULL)."""
    days = pl.col(column).cast(pl.Int64)
    return (pl.when(days == DATE_POS_INF).then(pl.lit(2**40)).when(days == DATE_NEG_INF)
            .then(pl.lit(-(2**40))).otherwise(days))


def _timestamp_days(column: str) -> pl.Expr:
    """UTC day number of a raw timestamp column (µs since 1970), the infinities mapped to ±huge."""
    us = pl.col(column).cast(pl.Int64)
    return (pl.when(us == TS_NEG_INF).then(pl.lit(-(2**40))).when(us < TS_WRAPPED_BELOW)
            .then(pl.lit(2**40)).otherwise(us.floordiv(US_PER_DAY)))


def partition_bounds(contract: Contract, window: LoadWindow) -> tuple[date, date]:
    """The first and last Delta partition value a load of ``window`` may give a row: the run's
    days (daily) or the first and newest month (monthly)."""
    assert window.first_month is not None and window.newest_end is not None
    if contract.partitioning.kind is PartitionKind.MONTHLY_BUSINESS_DATE:
        return window.first_month, _month_before(window.newest_end)
    first, end = (window.start.date(), window.end.date()) if window.start and window.end \
        else (window.first_month, window.newest_end)
    return first, end - timedelta(days=1)


def partition_values(batch: pa.RecordBatch, contract: Contract, window: LoadWindow) -> pa.Array:
    """The Delta partition value (date32) of every row of a raw driver batch read in ``window``.

    Daily: the day of ``updated_at`` clamped to the run's partition range (a row read through the
    watermark widening, or before the first partition, lands in the range's first or last day;
    NULL → the last). Monthly: the month of the business date (or of ``updated_at`` when it is
    NULL) clamped to the first and newest month. :func:`partition_sql` is the same rule in SQL.
    """
    frame = pl.from_arrow(batch.select([c for c in ("updated_at", contract.partitioning.business_date_column)
                                        if c is not None]).cast(_raw_int_schema(batch, contract)))
    assert isinstance(frame, pl.DataFrame)
    lo, hi = partition_bounds(contract, window)
    if contract.partitioning.kind is PartitionKind.MONTHLY_BUSINESS_DATE:
        bd = contract.partitioning.business_date_column or ""
        days = pl.coalesce(_date_days(bd), _timestamp_days("updated_at"))
        expr = _clamped_days(days, lo, hi).dt.month_start()
    else:
        expr = _clamped_days(_timestamp_days("updated_at"), lo, hi)
    return frame.select(expr.alias("p")).to_series().to_arrow().cast(pa.date32())


def partition_sql(contract: Contract, window: LoadWindow) -> str | None:
    """:func:`partition_values` as a PostgreSQL expression of a source row (None: unpartitioned)."""
    kind = contract.partitioning.kind
    if kind is PartitionKind.NONE:
        return None
    lo, hi = partition_bounds(contract, window)
    value = business_key_sql(contract) if kind is PartitionKind.MONTHLY_BUSINESS_DATE \
        else "(updated_at AT TIME ZONE 'UTC')::date"
    clamped = f"LEAST(GREATEST(COALESCE({value}, DATE '{hi}'), DATE '{lo}'), DATE '{hi}')"
    return f"date_trunc('month', {clamped})::date" if kind is PartitionKind.MONTHLY_BUSINESS_DATE else clamped


def _month_before(end: date) -> date:
    return (end.replace(day=1) - timedelta(days=1)).replace(day=1)


def _raw_int_schema(batch: pa.RecordBatch, contract: Contract) -> pa.Schema:
    fields = []
    for name in ("updated_at", contract.partitioning.business_date_column):
        if name is not None:
            type_ = batch.schema.field(name).type
            fields.append(pa.field(name, pa.int32() if pa.types.is_date32(type_) else pa.int64()))
    return pa.schema(fields)
