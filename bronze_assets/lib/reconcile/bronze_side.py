"""The bronze side of a reconciliation with the local engine: DataFusion reads only the key,
``record_hash`` and ``record_status`` of ``bz_<table>`` (current version, deletion-vector safe);
Polars turns the hashes into checksums and sums them per key bucket, batch by batch."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.query import query_tables, scan_columns
from bronze_assets.lib.enrich.metadata import ACTIVE
from bronze_assets.lib.reconcile.checksum import checksum_words, join_words
from bronze_assets.lib.reconcile.source_side import RANGES_PER_QUERY, Ranges, ranges_sql

STATUS = "record_status"
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


class BronzeTable:
    """``bz_<table>`` at its current version, compared by its (one, integer) primary key."""

    def __init__(self, contract: Contract, dt: DeltaTable) -> None:
        self.contract, self.dt = contract, dt
        self.column = contract.primary_key[0]
        self.key = f'"{self.column}"'

    def key_range(self) -> tuple[int | None, int | None, int]:
        """(min, max, count) of the ACTIVE keys."""
        row = query_tables({"t": self.dt}, f"SELECT min({self.key}) AS lo, max({self.key}) AS hi, "
                                           f"count(*) AS n FROM t WHERE {STATUS} = '{ACTIVE}'").to_pylist()[0]
        return (None if row["lo"] is None else int(row["lo"])), \
            (None if row["hi"] is None else int(row["hi"])), int(row["n"])

    def buckets(self, lo: int, hi: int, width: int) -> dict[int, tuple[int, int]]:
        """{bucket: (ACTIVE rows, checksum sum)} of the ACTIVE keys in [lo, hi]."""
        where = f"{STATUS} = '{ACTIVE}' AND {self.key} BETWEEN {lo} AND {hi}"
        partial = []
        for table in frames(scan_columns(self.dt, [self.column, "record_hash"], where)):
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            if not frame.height:
                continue
            bucket = ((pl.col(self.column).cast(pl.Int64) - lo) // width).alias("b")
            partial.append(frame.select(bucket, *checksum_words("record_hash"))
                           .group_by("b").agg(pl.len().alias("n"), pl.sum("_hi"), pl.sum("_lo")))
        if not partial:
            return {}
        total = pl.concat(partial).group_by("b").agg(pl.sum("n"), pl.sum("_hi"), pl.sum("_lo"))
        return {b: (int(n), join_words(h, low)) for b, n, h, low in total.iter_rows()}

    def rows(self, ranges: Ranges) -> pl.DataFrame:
        """key, bronze_hash, status of every row (any status) whose key lies in ``ranges``."""
        pieces = []
        for i in range(0, len(ranges), RANGES_PER_QUERY):
            table = pl.from_arrow(query_tables({"t": self.dt}, (
                f"SELECT CAST({self.key} AS BIGINT) AS key, record_hash AS bronze_hash, {STATUS} AS status "
                f"FROM t WHERE {ranges_sql(self.key, ranges[i:i + RANGES_PER_QUERY])}")))
            assert isinstance(table, pl.DataFrame)
            pieces.append(table)
        schema = {"key": pl.Int64, "bronze_hash": pl.Utf8, "status": pl.Utf8}
        return pl.concat(pieces) if pieces else pl.DataFrame(schema=schema)


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
