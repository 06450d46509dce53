"""The bronze side of a reconciliation with the local engine: DataFusion reads only the key,
``record_hash`` and ``record_status`` of ``bz_<table>`` (current version, deletion-vector safe;
a table not keyed by one integer column: only the hash and status, its key columns just for the
rows of differing buckets); Polars turns the hashes into checksums and sums them per bucket,
batch by batch."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.query import (
    query_tables,
    read_columns,
    rows_and_key_bounds,
    scan_columns,
    table_rows,
)
from bronze_assets.lib.enrich.metadata import ACTIVE
from bronze_assets.lib.reconcile.checksum import (
    POSITIONS,
    checksum,
    hash_ranges_sql,
    position,
)
from bronze_assets.lib.reconcile.keys import STATUS, by_integer_key, keyed_rows
from bronze_assets.lib.reconcile.source_side import RANGES_PER_QUERY, Ranges, ranges_sql

FRAME_ROWS = 262_144  # rows per Polars pass over a streamed scan


def frames(batches: Any, rows: int = FRAME_ROWS) -> Iterator[pa.Table]:
    """A DataFusion result stream as Arrow tables of about ``rows`` rows (never all of it)."""
    reader = pa.RecordBatchReader.from_stream(batches)
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        held.append(pa.record_batch(batch))
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(held, schema=reader.schema)
            held, count = [], 0
    if held:
        yield pa.Table.from_batches(held, schema=reader.schema)


def logged_key_range(dt: DeltaTable, column: str, by_key: bool
                     ) -> tuple[tuple[int | None, int | None] | None, int]:
    """((lowest, highest position), estimated rows) of a bronze table from its log, so no scan:
    the integer key ``column``'s bounds from the files' statistics (every status: they only
    bound the buckets), or every hash position when not ``by_key``; the bounds are None when
    some file has no statistics for the key. The bucket counts are exact."""
    if not by_key:
        return (0, POSITIONS - 1), table_rows(dt)
    rows, bounds = rows_and_key_bounds(dt, column)
    return bounds, rows


def int_bounds(lo: Any, hi: Any) -> tuple[int | None, int | None]:
    """A min/max query's answer as integers (None: no rows)."""
    return (None if lo is None else int(lo)), (None if hi is None else int(hi))


class BronzeTable:
    """``bz_<table>`` at its current version, compared by its integer key, or by its rows' hash
    positions and keys named by text (:mod:`~bronze_assets.lib.reconcile.keys`)."""

    def __init__(self, contract: Contract, dt: DeltaTable) -> None:
        self.contract, self.dt = contract, dt
        self.by_key = by_integer_key(contract)
        self.column = contract.primary_key[0]
        self.key = f'"{self.column}"'
        self.keys = [*contract.primary_key, "record_hash", STATUS]  # read for rows named by text
        self.bounds: tuple[int | None, int | None] | None = None  # every file's keys, from the log

    def key_range(self) -> tuple[int | None, int | None, int]:
        """(lowest, highest position, estimated rows) from the log (:func:`logged_key_range`); a
        key without statistics in some file is read (ACTIVE rows)."""
        bounds, rows = logged_key_range(self.dt, self.column, self.by_key)
        if self.by_key:
            self.bounds = bounds  # every file's keys (None: some file has no statistics for it)
        if bounds is None:
            row = query_tables({"t": self.dt}, f"SELECT min({self.key}) AS lo, max({self.key}) AS hi "
                                               f"FROM t WHERE {STATUS} = '{ACTIVE}'").to_pylist()[0]
            bounds = int_bounds(row["lo"], row["hi"])
        return bounds[0], bounds[1], rows

    def buckets(self, lo: int, hi: int, width: int) -> dict[int, tuple[int, int]]:
        """{bucket: (ACTIVE rows, checksum sum)} of the ACTIVE rows whose position is in [lo, hi]."""
        if self.by_key:
            columns, where = [self.column, "record_hash"], f"{self.key} BETWEEN {lo} AND {hi}"
            if self._holds_every_key(lo, hi):  # the first level: no key filter in the scan (on
                where = None  # an object store a filtered column is fetched before the rest)
            at = pl.col(self.column).cast(pl.Int64)
        else:
            columns, at = ["record_hash"], position("record_hash")
            where = hash_ranges_sql("record_hash", [(lo, hi)])
        partial = []
        condition = f"{STATUS} = '{ACTIVE}'" + (f" AND {where}" if where else "")
        for table in frames(scan_columns(self.dt, columns, condition)):
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            if where is None:
                frame = frame.filter(pl.col(self.column).is_not_null())
            if not frame.height:
                continue
            partial.append(frame.select(((at - lo) // width).alias("b"), checksum("record_hash").alias("s"))
                           .group_by("b").agg(pl.len().alias("n"), pl.sum("s")))
        if not partial:
            return {}
        total = pl.concat(partial).group_by("b").agg(pl.sum("n"), pl.sum("s"))
        return {b: (int(n), int(s)) for b, n, s in total.iter_rows()}

    def _holds_every_key(self, lo: int, hi: int) -> bool:
        """Whether [lo, hi] covers the key of every row, by the log's file statistics."""
        low, high = self.bounds or (None, None)
        return low is not None and high is not None and lo <= low and high <= hi

    def rows(self, ranges: Ranges) -> pl.DataFrame:
        """key, bronze_hash, status of every row (any status) whose position lies in ``ranges``."""
        pieces = []
        for i in range(0, len(ranges), RANGES_PER_QUERY):
            some = ranges[i:i + RANGES_PER_QUERY]
            if not self.by_key:
                table = read_columns(self.dt, self.keys, hash_ranges_sql("record_hash", some))
                pieces.append(keyed_rows(table, self.contract))
                continue
            table = pl.from_arrow(query_tables({"t": self.dt}, (
                f"SELECT CAST({self.key} AS BIGINT) AS key, record_hash AS bronze_hash, {STATUS} AS status "
                f"FROM t WHERE {ranges_sql(self.key, some)}")))
            assert isinstance(table, pl.DataFrame)
            pieces.append(table)
        return pl.concat(pieces) if pieces else empty_rows(self.by_key)

    def others(self, keys: pl.Series) -> pl.DataFrame:
        """Rows of ``keys`` that :meth:`rows` does not find: none when bucketed by key (a key range
        holds every row of its keys); else the rows that are not ACTIVE (their stored hash, where
        their position comes from, need not be the source's)."""
        if self.by_key or not keys.len():
            return empty_rows(self.by_key)
        found = keyed_rows(read_columns(self.dt, self.keys, f"{STATUS} <> '{ACTIVE}'"), self.contract)
        return found.filter(pl.col("key").is_in(keys.implode()))


def empty_rows(by_key: bool) -> pl.DataFrame:
    """No bronze rows (keys integer or named by text)."""
    key = pl.Int64 if by_key else pl.Utf8
    return pl.DataFrame(schema={"key": key, "bronze_hash": pl.Utf8, "status": pl.Utf8})


def pending_since(dt: DeltaTable, overlap_seconds: float) -> datetime | None:
    """Rows updated in the source at or after this time may not be in bronze yet (pending): the
    table's watermark (every row updated before it was read), else the time its latest load
    began reading minus the overlap (transactions still open then commit rows dated before it)."""
    from datetime import timedelta

    from bronze_assets.lib.delta.commit_log import BATCH_TIME_KEY, CommitLog

    commits = CommitLog.read(dt)
    watermark = commits.watermark()
    if watermark is not None:
        return watermark
    ceiling: int | None = None
    for entry in commits.latest(200):
        version = int(entry.get("version", -1))
        if ceiling is not None and version > ceiling:
            continue  # undone by a later restore
        if entry.get("operation") == "RESTORE":
            target = (entry.get("operationParameters") or {}).get("version")
            ceiling = None if target is None else int(target)
            continue
        if BATCH_TIME_KEY in entry:
            return datetime.fromisoformat(str(entry[BATCH_TIME_KEY])) - timedelta(seconds=overlap_seconds)
    return None
