"""The bronze MERGE (ARCHITECTURE §2.3) on delta-rs: idempotent, one commit per load (per chunk
of ``$BRONZE_COMMIT_CHUNK_ROWS`` rows for large loads, so a killed load keeps its progress).

A load is planned before anything is written: the staged source keys and hashes are joined
with a narrow index of the target (keys, hash, status, partition value), key bucket by key
bucket for a large table. Only new, changed and
vanished keys go into the MERGE, each routed to the partition it lives in, and the MERGE
predicate names those partitions and the key range so delta-rs rewrites only files that can
match. A load that changes nothing commits nothing. Every commit carries the batch id and a
Delta app transaction, and a retry first re-reads the table to see whether the commit landed.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    QueryBuilder,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.protection import PiiHook, require_hook
from bronze_assets.lib.delta.staging import StagedBatch, stage_dir
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.enrich.metadata import ACTIVE, DELETED, FORGOTTEN, bronze_schema, staged_schema
from bronze_assets.lib.source.ddl import quote_ident
from bronze_assets.lib.source.extract import LEGACY_HASH
from bronze_assets.settings import env

log = logging.getLogger(__name__)

OP = "_bronze_op"
TARGET_PART = "_bronze_target_part"
BATCH_KEY = "bronze.batch_id"
BATCH_TIME_KEY = "bronze.batch_time"  # when the batch began reading its source (ISO, UTC)
PARTITIONS_KEY = "bronze.partitions"  # "<first>/<end>": the Dagster partition range a load ran for
WATERMARK_KEY = "bronze.watermark"
CHUNK_KEY = "bronze.chunk"  # "i/n": commit i of the n a batch is written in
HASH_VERSION_KEY = "bronze.hash_version"  # ARCHITECTURE §2.2 record_hash version of the rows written
HASH_VERSION = 2
REHASHED_KEY = "bronze.rehashed_v1"  # rows whose v1 hash the commit replaced by v2 (nothing else)
APP_ID_PREFIX = "bronze_assets/"
MAX_ATTEMPTS = 4
ENV_CHUNK_ROWS = "BRONZE_COMMIT_CHUNK_ROWS"
DEFAULT_CHUNK_ROWS = 500_000  # the writer's memory grows with a commit: 1 M rows peaked 0.9 GB, 500 k 0.67 GB
# Few large files, but not one per table: delta-rs MERGE is copy-on-write (no deletion vectors),
# so a change rewrites every file it touches; 32 MiB keeps a snapshot at scale 10 to a handful of
# files per table while a change clustered on recent keys rewrites one or two of them.
ENV_TARGET_FILE_MB = "BRONZE_TARGET_FILE_MB"
DEFAULT_TARGET_FILE_MB = 32
# A CDC table takes a small MERGE every tick, so its files are smaller: the tick rewrites the files
# holding its changed keys. bench_cdc (600 changed keys a table, median of 3 ticks): scale 10 / 1
# = 1.43x with 32 MiB files, 1.40x with 8 MiB, 1.01x with 4 MiB.
ENV_CDC_TARGET_FILE_MB = "BRONZE_CDC_TARGET_FILE_MB"
DEFAULT_CDC_TARGET_FILE_MB = 4


OUTPUT_BATCH_ROWS = 131_072
COMPACT_ROWS = 2 * OUTPUT_BATCH_ROWS  # rows narrowed per Polars pass (1 M: 0.18 GB more, no faster)
# Target rows planned at once: a larger table is planned key bucket by key bucket, so the plan's
# memory (narrow index ≈30 bytes a key, plus the join) stays flat as the table grows. Measured on
# order_details at scale 30 (6 M rows): peak 1.14-1.23 GB planned whole, 0.54-0.62 GB in 6 buckets.
PLAN_BUCKET_ROWS = 1_000_000
# Key ranges in a MERGE predicate or index read (see key_ranges): 600 changed keys in three
# clusters of scale 10's order_details: one min..max range rewrote in 0.79 s, three ranges 0.44 s.
MAX_KEY_RANGES = 32


def target_file_bytes(contract: Contract | None = None) -> int:
    """Target size of a data file of ``contract``'s table: ``$BRONZE_CDC_TARGET_FILE_MB`` (default
    4 MiB) for a CDC table, else ``$BRONZE_TARGET_FILE_MB`` (default 32 MiB). It is also the
    table's ``delta.targetFileSize``, which MERGE and OPTIMIZE follow."""
    if contract is not None and contract.cdc:
        return max(1, int(env(ENV_CDC_TARGET_FILE_MB) or DEFAULT_CDC_TARGET_FILE_MB)) * 1024 * 1024
    return max(1, int(env(ENV_TARGET_FILE_MB) or DEFAULT_TARGET_FILE_MB)) * 1024 * 1024


def commit_chunk_rows() -> int:
    """Rows per commit of a large load (``$BRONZE_COMMIT_CHUNK_ROWS``, default 500,000)."""
    return max(1, int(env(ENV_CHUNK_ROWS) or DEFAULT_CHUNK_ROWS))


class DuplicateKeyError(ValueError):
    """The staged batch repeats a primary key: a data problem that a retry cannot fix."""


@dataclass
class MergeResult:
    """What one load did to its bronze table (published as Dagster output metadata)."""

    table_uri: str
    rows_read: int
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    soft_deleted: int = 0
    forgotten_skipped: int = 0
    committed: bool = False
    version: int | None = None
    size_bytes: int = 0
    num_files: int = 0
    merge_seconds: float = 0.0
    avg_quality_score: float | None = None
    commits: int = 0
    resumed_batch_id: str | None = None  # an interrupted batch whose committed chunks were kept
    rows_skipped_by_checkpoint: int = 0  # rows that batch committed, not written again
    rehashed_v1: int = 0  # unchanged rows whose v1 record_hash was replaced by the v2 hash
    partitions: list[str] = field(default_factory=list)  # Delta partition values the load changed
    engine_metrics: dict[str, int] = field(default_factory=dict)  # the engine's own, see batch_metrics

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def rows_changed(self) -> int:
        return self.inserted + self.updated + self.soft_deleted + self.rehashed_v1

    @property
    def rewrite_ratio(self) -> float | None:
        """Rows the engine wrote ÷ rows the load changed (copy-on-write amplification)."""
        written = self.engine_metrics.get("rows_written")
        return round(written / self.rows_changed, 2) if written is not None and self.rows_changed else None


# The engines' own commit metrics (delta-rs snake_case, delta-spark camelCase) by one name each:
# MERGE commits first, then plain writes (a table's first load, a metadata-only commit).
_MERGE_METRICS = {
    "rows_inserted": ("num_target_rows_inserted", "numTargetRowsInserted"),
    "rows_updated": ("num_target_rows_updated", "numTargetRowsUpdated"),
    "rows_deleted": ("num_target_rows_deleted", "numTargetRowsDeleted"),
    "rows_copied": ("num_target_rows_copied", "numTargetRowsCopied"),
    "rows_written": ("num_output_rows", "numOutputRows"),
    "files_added": ("num_target_files_added", "numTargetFilesAdded"),
    "files_removed": ("num_target_files_removed", "numTargetFilesRemoved"),
}
_WRITE_METRICS = {
    "rows_inserted": ("num_added_rows", "numOutputRows"),
    "rows_written": ("num_added_rows", "numOutputRows"),
    "files_added": ("num_added_files", "numFiles"),
    "files_removed": ("num_removed_files", "numRemovedFiles"),
}


USER_METADATA = "userMetadata"  # where delta-spark keeps a commit's own metadata (one JSON string)


def commit_history(dt: DeltaTable, limit: int | None = None) -> list[dict[str, Any]]:
    """``dt.history(limit)`` with the bronze keys of every commit at the top level, whichever
    engine wrote it: delta-rs keeps them there, the Spark engine in ``userMetadata`` (JSON)."""
    entries = dt.history(limit)
    for entry in entries:
        user = entry.get(USER_METADATA)
        if isinstance(user, str) and user.startswith("{"):
            try:
                extra = json.loads(user)
            except ValueError:
                continue
            if isinstance(extra, dict):
                entry.update({k: v for k, v in extra.items() if k.startswith("bronze.")})
    return entries


CHANGE_FEED = "delta.enableChangeDataFeed"  # ARCHITECTURE §2.7: on for every bz_* table


def change_feed_on(dt: DeltaTable) -> bool:
    """Whether ``dt`` records its change data feed (``delta.enableChangeDataFeed``)."""
    return str(dt.metadata().configuration.get(CHANGE_FEED, "")).lower() == "true"


def enable_change_feed(dt: DeltaTable) -> bool:
    """Turn the change data feed on for a table created without it (§2.7: with its next load that
    writes). delta-rs offers this as a SET TBLPROPERTIES commit of its own (the protocol goes to
    writer version 4); it carries no bronze keys, and every reader of the bronze metadata
    (:func:`commit_history`) skips a commit without them. True when the commit was made."""
    if change_feed_on(dt):
        return False
    dt.alter.set_table_properties({CHANGE_FEED: "true"})
    log.info("%s: change data feed enabled (version %d)", dt.table_uri, dt.version())
    return True


def commit_metrics(entry: dict[str, Any]) -> dict[str, int]:
    """One commit's engine metrics (rows inserted / updated / deleted / copied / written, files
    added / removed), whichever engine wrote it."""
    names = _MERGE_METRICS if str(entry.get("operation", "")).upper() == "MERGE" else _WRITE_METRICS
    raw = entry.get("operationMetrics") or {}
    metrics = dict.fromkeys(_MERGE_METRICS, 0)
    for name, keys in names.items():
        value = next((raw[k] for k in keys if k in raw), None)
        metrics[name] = int(value) if value is not None else 0
    return metrics


def batch_metrics(dt: DeltaTable, batch_id: str, commits: int) -> dict[str, int]:
    """The engine metrics summed over the commits of ``batch_id`` (the latest ``commits`` of them)."""
    total = dict.fromkeys(_MERGE_METRICS, 0)
    if not commits:
        return total
    for entry in commit_history(dt, commits + 8):
        if entry.get(BATCH_KEY) == batch_id:
            for name, value in commit_metrics(entry).items():
                total[name] += value
    return total


def app_id(contract: Contract) -> str:
    """The Delta app transaction id of a table's loads (both engines)."""
    return APP_ID_PREFIX + contract.bronze_table


def next_txn_version(dt: DeltaTable | None, app: str) -> int:
    """The app transaction version the next load commit of ``app`` records."""
    return ((dt.transaction_version(app) if dt is not None else None) or 0) + 1


def commit_metadata(batch_id: str, window: str, watermark: datetime | None, chunk: int = 0, chunks: int = 1,
                    extra: dict[str, str] | None = None, final: dict[str, str] | None = None,
                    batch_time: datetime | None = None) -> dict[str, str]:
    """The bronze keys of a load commit (either engine): batch, its time, chunk, hash version,
    window, and once the batch is complete the watermark and ``final`` (e.g. the CDC position)."""
    meta = {BATCH_KEY: batch_id, CHUNK_KEY: f"{chunk}/{chunks}", HASH_VERSION_KEY: str(HASH_VERSION),
            "bronze.window": window, **(extra or {})}
    if batch_time is not None:
        meta[BATCH_TIME_KEY] = batch_time.astimezone(UTC).isoformat()
    if chunk == chunks - 1:
        if watermark is not None:
            meta[WATERMARK_KEY] = watermark.isoformat()
        meta |= final or {}
    return meta


CDC_LSN_KEY = "bronze.cdc_lsn"  # the log position a CDC load's changes reach (with its last chunk)
CDC_RELID_KEY = "bronze.cdc_relid"  # the OID of the source table that position belongs to
CDC_SLOT_KEY = "bronze.cdc_slot"  # the slot the position was read from (recorded with the position)


@dataclass(frozen=True)
class CdcPosition:
    """The log position bronze holds every change up to, the source table's OID then, and the
    slot it was read from (None: a position committed before slots were named per deployment)."""

    lsn: int
    relid: int | None
    slot: str | None = None


def commit_properties(dt: DeltaTable | None, contract: Contract, meta: dict[str, str]) -> CommitProperties:
    """A load commit's properties: its bronze metadata and the table's next app transaction."""
    app = app_id(contract)
    return CommitProperties(custom_metadata=meta, app_transactions=[
        Transaction(app, next_txn_version(dt, app), int(time.time() * 1000))])


def commit_without_rows(dt: DeltaTable, properties: CommitProperties, storage_options: dict[str, str] | None
                        ) -> None:
    """A commit that adds no rows, only ``properties`` (delta-spark makes no commit for an empty
    write, so the Spark engine records a metadata-only commit through this too)."""
    empty = pa.schema(dt.schema().to_arrow()).empty_table()
    write_deltalake(dt, empty, mode="append", commit_properties=properties, storage_options=storage_options)


def latest_cdc_position(dt: DeltaTable | None, limit: int = 200) -> CdcPosition | None:
    """The latest commit's :class:`CdcPosition`; None when there is none, or when a RESTORE came
    after it (a restored table re-syncs)."""
    if dt is None:
        return None
    for entry in commit_history(dt, limit):
        if entry.get("operation") == "RESTORE":
            return None
        if CDC_LSN_KEY in entry:
            relid, slot = entry.get(CDC_RELID_KEY), entry.get(CDC_SLOT_KEY)
            return CdcPosition(int(entry[CDC_LSN_KEY]), int(relid) if relid is not None else None,
                               str(slot) if slot else None)
    return None


def _chunk(entry: dict[str, Any]) -> tuple[int, int]:
    i, n = str(entry.get(CHUNK_KEY, "0/1")).split("/")
    return int(i), int(n)


def committed_batch_ids(dt: DeltaTable, limit: int = 50) -> set[str]:
    """Batches whose final commit landed (to detect a commit that landed before a retry)."""
    return {str(h[BATCH_KEY]) for h in commit_history(dt, limit)
            if BATCH_KEY in h and _chunk(h)[0] == _chunk(h)[1] - 1}


def committed_chunks(dt: DeltaTable, batch_id: str, limit: int = 200) -> set[int]:
    """Chunk indexes of ``batch_id`` already in the table."""
    return {_chunk(h)[0] for h in commit_history(dt, limit) if h.get(BATCH_KEY) == batch_id}


def interrupted_batch(dt: DeltaTable, limit: int = 50) -> str | None:
    """The batch of the latest commit if it was a non-final chunk (a load killed mid-way)."""
    for h in commit_history(dt, limit):
        if BATCH_KEY not in h:
            continue
        i, n = _chunk(h)
        return str(h[BATCH_KEY]) if i < n - 1 else None
    return None


def latest_watermark(dt: DeltaTable | None, limit: int = 200) -> datetime | None:
    """The incremental watermark of the table's current state: recorded by the latest commit
    that carries one, not counting commits a RESTORE undid (after a restore to version V the
    watermark is V's, so the next run re-reads every change since then)."""
    if dt is None:
        return None
    ceiling: int | None = None
    for entry in commit_history(dt, limit):
        version = int(entry.get("version", -1))
        if ceiling is not None and version > ceiling:
            continue  # undone by a later restore
        if entry.get("operation") == "RESTORE":
            target = (entry.get("operationParameters") or {}).get("version")
            if target is not None:
                ceiling = int(target)
            continue
        if WATERMARK_KEY in entry:
            return datetime.fromisoformat(str(entry[WATERMARK_KEY]))
    return None


def partition_range_metadata(partition: tuple[datetime, datetime] | None) -> dict[str, str]:
    """The commit key recording the partition range (UTC start, end exclusive) a load ran for."""
    if partition is None:
        return {}
    start, end = partition
    return {PARTITIONS_KEY: f"{start.date().isoformat()}/{end.date().isoformat()}"}


def loaded_ranges(dt: DeltaTable | None) -> list[tuple[date, date]]:
    """The partition ranges (first day, end day exclusive) the table's load commits ran for."""
    if dt is None:
        return []
    ranges = []
    for entry in commit_history(dt):
        first, sep, end = str(entry.get(PARTITIONS_KEY, "")).partition("/")
        if sep:
            ranges.append((date.fromisoformat(first), date.fromisoformat(end)))
    return ranges


def first_load_time(dt: DeltaTable | None) -> datetime | None:
    """When the table's oldest load began reading its source (the batch time its commits record,
    else the commit's own time for commits written before they did); None for a table no load
    wrote."""
    if dt is None:
        return None
    times = [datetime.fromisoformat(str(e[BATCH_TIME_KEY])) if BATCH_TIME_KEY in e
             else datetime.fromtimestamp(int(e.get("timestamp", 0)) / 1000, UTC)
             for e in commit_history(dt) if BATCH_KEY in e]
    return min(times) if times else None


def discard_uncommitted(uri: str) -> None:
    """Remove what a failed first write left at a local ``uri`` (data files, an empty
    ``_delta_log``) when no commit landed, so no half-created table stays behind. Object-store
    roots keep their orphan files until the table exists and VACUUM removes them."""
    path = Path(uri.removeprefix("file://"))
    if "://" in uri.removeprefix("file://") or not path.is_dir():
        return
    if not any((path / "_delta_log").glob("*.json")):
        shutil.rmtree(path, ignore_errors=True)


def hash_version(dt: DeltaTable, limit: int = 50) -> int:
    """The record_hash version of the table's latest load (1 for tables written before v2)."""
    for entry in commit_history(dt, limit):
        if BATCH_KEY in entry:
            return int(entry.get(HASH_VERSION_KEY, 1))
    return HASH_VERSION


def table_stats(dt: DeltaTable) -> tuple[int, int]:
    """(total bytes, number of data files) of the loaded version."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return 0, 0
    return int(pa.compute.sum(actions["size_bytes"]).as_py() or 0), actions.num_rows


def table_rows(dt: DeltaTable) -> int:
    """Rows in the loaded version's data files (from the log's file statistics)."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    if actions.num_rows == 0 or "num_records" not in actions.column_names:
        return 0
    return int(pa.compute.sum(actions["num_records"]).as_py() or 0)


def quoted(columns: list[str] | tuple[str, ...]) -> str:
    """A SQL column list with every name quoted."""
    return ", ".join(quote_ident(c) for c in columns)


def _execute(tables: dict[str, DeltaTable], sql: str) -> pa.RecordBatchReader:
    builder = QueryBuilder()
    for name, dt in tables.items():
        builder.register(name, dt)
    return builder.execute(sql)


def _query(dt: DeltaTable, columns: list[str], where: str | None = None) -> pa.RecordBatchReader:
    sql = f"SELECT {quoted(columns)} FROM bronze" + (f" WHERE {where}" if where else "")
    return _execute({"bronze": dt}, sql)


def query_tables(tables: dict[str, DeltaTable], sql: str) -> pa.Table:
    """The result of ``sql`` over the current versions of ``tables`` (registered under their
    keys), computed by DataFusion: scans are streamed, only the result is held."""
    return pa.table(_execute(tables, sql).read_all())


def read_columns(dt: DeltaTable, columns: list[str], where: str | None = None) -> pa.Table:
    """Columns of the current version via DataFusion (fast on tables of many small files)."""
    return pa.table(_query(dt, columns, where).read_all())


def _hash_words(column: str, prefix: str) -> list[pl.Expr]:
    """A 32-hex-digit record hash as two exact 64-bit words (NULL where it is not hex): the plan
    compares hashes at 16 bytes a row instead of holding 32-character strings of both sides."""
    text = pl.col(column)
    return [text.str.slice(i * 16, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False)
            .alias(f"{prefix}{i}") for i in (0, 1)]


def _same(left: str, right: str) -> pl.Expr:
    """Whether two hashes (as :func:`_hash_words`) are equal; unknown counts as different."""
    return ((pl.col(f"{left}0") == pl.col(f"{right}0")) & (pl.col(f"{left}1") == pl.col(f"{right}1"))
            ).fill_null(False)


def _narrow(batches: Any, keep: list[str | pl.Expr], prefix: str, extra: list[pl.Expr] | None = None,
            column: str = "record_hash") -> pl.DataFrame:
    """``keep`` plus the hash ``column`` as 64-bit words from an Arrow stream (:func:`_narrowed`)."""
    return pl.concat(list(_narrowed(batches, keep, prefix, extra, column)), rechunk=False)


def _narrowed(batches: Any, keep: list[str | pl.Expr], prefix: str, extra: list[pl.Expr] | None = None,
              column: str = "record_hash") -> Iterator[pl.DataFrame]:
    """``keep`` plus the hash ``column`` as 64-bit words, ``COMPACT_ROWS`` rows at a time: memory
    holds narrow pieces, never the whole string column. (A column taken from an imported batch
    keeps the whole batch alive, so each narrow piece is copied into owned memory.)"""
    reader = pa.RecordBatchReader.from_stream(batches)
    raw: list[pa.RecordBatch] = []

    def narrow() -> pl.DataFrame:  # one Polars pass per COMPACT_ROWS rows, not per (small) batch
        frame = pl.from_arrow(pa.Table.from_batches(raw, schema=reader.schema))
        assert isinstance(frame, pl.DataFrame)
        raw.clear()
        return _owned(frame.select(*keep, *_hash_words(column, prefix), *(extra or [])))

    rows, pieces = 0, 0
    for batch in reader:
        raw.append(pa.record_batch(batch))
        rows += batch.num_rows
        if rows >= COMPACT_ROWS:
            yield narrow()
            rows, pieces = 0, pieces + 1
    if raw or not pieces:  # typed even when empty
        yield narrow()


def _owned(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` in freshly allocated columns (nothing shared with the Arrow batches it came from)."""
    return frame.select(pl.all().gather(pl.int_range(pl.len())))


def _spill(pieces: Iterator[pl.DataFrame], bucket: pl.Expr, folder: Path, side: str) -> pl.Schema:
    """Write each piece's rows to one Arrow IPC file per key bucket (``<side>-<bucket>-<n>``);
    returns the pieces' schema."""
    schema = None
    for n, piece in enumerate(pieces):
        schema = piece.schema
        parts = piece.with_columns(bucket.alias("_b")).partition_by("_b", as_dict=True, include_key=False)
        for (b,), part in parts.items():
            part.write_ipc(folder / f"{side}-{b}-{n}.arrow", compression="uncompressed")
    assert schema is not None, "_narrowed yields at least one (typed) piece"
    return schema


def _unspill(folder: Path, side: str, bucket: int, schema: pl.Schema) -> pl.DataFrame:
    """One bucket's rows of one side, read into memory; its files are removed."""
    files = sorted(folder.glob(f"{side}-{bucket}-*.arrow"))
    if not files:
        return pl.DataFrame(schema=schema)
    frame = pl.concat([pl.read_ipc(f) for f in files], rechunk=False)
    for f in files:
        f.unlink()
    return frame


def writer_properties(contract: Contract) -> WriterProperties:
    """Parquet settings: dictionary encoding only where values repeat.

    Daily ``load_date`` layouts spread a load over ~1,000 partitions and delta-rs keeps one
    writer per partition open; dictionary builders on every column of every writer tripled
    peak memory (1.0 GB vs 0.44 GB for 200k rows in 1,096 partitions).
    """
    low_cardinality = {"source_system", "record_status", "batch_id"}
    low_cardinality |= {r.column for r in contract.quality.formats if hasattr(r, "values")}
    on = ColumnProperties(dictionary_enabled=True)
    return WriterProperties(
        max_row_group_size=OUTPUT_BATCH_ROWS,
        default_column_properties=ColumnProperties(dictionary_enabled=False),
        column_properties=dict.fromkeys(sorted(low_cardinality), on),
    )


def _nothing_to_plan(staged: StagedBatch) -> bool:
    """No staged row and no key that could have vanished: the plan is empty whatever the target."""
    return not staged.rows and not staged.keys_are_rows and staged.source_keys_path is None \
        and (staged.deleted_keys is None or not staged.deleted_keys.num_rows)


def _sql_literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if hasattr(value, "isoformat"):
        return f"'{value.isoformat()}'"
    return str(value)


def key_ranges(keys: pl.Series, limit: int = MAX_KEY_RANGES) -> list[tuple[Any, Any]]:
    """The distinct ``keys`` as at most ``limit`` closed ranges, split at the widest gaps (integer
    keys; others get one min..max range). A predicate over them lets delta-rs skip, by file
    statistics, every file between clusters of keys: a single min..max range skips nothing when
    a change touches both old and new keys, and DataFusion prunes nothing with a long IN list."""
    keys = keys.drop_nulls().unique().sort()
    if keys.is_empty():
        return []
    if not keys.dtype.is_integer() or limit <= 1:
        return [(keys[0], keys[-1])]
    values = keys.to_numpy()
    gaps = np.diff(values)
    widest = np.argsort(gaps, kind="stable")[::-1][: limit - 1]
    cuts = np.sort(widest[gaps[widest] > 1])  # a range ends at index i when i + 1 starts another
    starts, ends = np.concatenate([[0], cuts + 1]), np.concatenate([cuts, [len(values) - 1]])
    return [(values[s].item(), values[e].item()) for s, e in zip(starts, ends, strict=True)]


def key_range_sql(column: str, ranges: list[tuple[Any, Any]]) -> str:
    """``column`` within one of ``ranges`` (:func:`key_ranges`) as a SQL condition."""
    terms = [f"{column} = {_sql_literal(lo)}" if lo == hi
             else f"({column} >= {_sql_literal(lo)} AND {column} <= {_sql_literal(hi)})" for lo, hi in ranges]
    return "(" + " OR ".join(terms) + ")" if terms else "FALSE"


class BronzeMerger:
    """Merges staged batches of one contract into its ``bz_`` Delta table."""

    def __init__(self, contract: Contract, storage: StorageLike,
                 chunk_rows: int | None = None):
        self.contract = contract
        self.chunk_rows = chunk_rows or commit_chunk_rows()
        self.storage = as_storage(storage)
        self.uri = self.storage.uri(contract.bronze_table)
        self.schema = bronze_schema(contract)
        self.pk = list(contract.merge_key)  # a keyless table: its record_key
        self.part = contract.partitioning.delta_column
        self.pii: PiiHook | None = None  # the staged batch's PII hook, during merge()

    # ------------------------------------------------------------------ planning
    @property
    def _key(self) -> pl.Expr:
        """The primary key as one expression (a struct when it has several columns)."""
        return pl.col(self.pk[0]) if len(self.pk) == 1 else pl.struct(self.pk)

    def _duplicates(self, rows: pl.DataFrame | pl.LazyFrame) -> int:
        """How many of ``rows`` repeat a primary key (one streamed pass)."""
        counts = rows.lazy().select(pl.len().alias("n"), self._key.n_unique().alias("u"))
        counts = counts.collect(engine="streaming")
        return int(counts["n"][0]) - int(counts["u"][0])

    def _refuse_duplicates(self, dupes: int) -> None:
        if dupes:
            raise DuplicateKeyError(
                f"{self.contract.bronze_table}: the staged batch holds {dupes} duplicate primary "
                f"keys ({', '.join(self.pk)}); nothing was merged. Check the source's primary key."
            )

    def _bucket(self, buckets: int) -> pl.Expr:
        """Which of ``buckets`` key buckets a row's primary key falls in (same on both sides of the
        plan: their key columns are cast to the same types first)."""
        return (self._key.hash(seed=0) % buckets).cast(pl.UInt32)

    def _buckets(self, dt: DeltaTable, staged: StagedBatch, resumed: str | None = None
                 ) -> Iterator[tuple[pl.DataFrame, pl.LazyFrame, pl.Expr | None]]:
        """The target's narrow index (key, record_hash as two 64-bit words, status, partition, and
        whether a row was written by the ``resumed`` batch) and the staged keys and hashes, with
        the filter that selects a bucket's keys (``None``: every key).

        A table of fewer than 2 x ``PLAN_BUCKET_ROWS`` rows is planned whole: the staged side is
        scanned lazily. A larger one is planned key bucket by key bucket: both sides are read once and
        spilled to the stage folder by key bucket (a Grace hash join), so the plan holds one
        bucket's index and join however large the table grows.
        """
        cols = [*self.pk, "record_hash", "record_status"] + ([self.part] if self.part else [])
        extra = [(pl.col("batch_id") == resumed).alias("_t_resumed")] if resumed is not None else []
        keep = [*self.pk, pl.col("record_status").cast(pl.Categorical)] + ([self.part] if self.part else [])
        renames = {"record_status": "_t_status"} | ({self.part: TARGET_PART} if self.part else {})
        named = self._named_keys(staged)
        where = None if named is None else key_range_sql(quoted([self.pk[0]]), key_ranges(named[self.pk[0]]))
        index_pieces = (piece.rename(renames) for piece in _narrowed(
            _query(dt, cols + (["batch_id"] if resumed is not None else []), where), keep, "_t_h", extra))
        if named is not None:  # only the named keys' rows are held, whatever the ranges span
            index_pieces = (piece.join(named.cast({k: piece.schema[k] for k in self.pk}), on=self.pk,
                                       how="semi") for piece in index_pieces)
        staged_keep = [*self.pk] + ([self.part] if self.part else [])
        # each bucket under 2 x PLAN_BUCKET_ROWS rows
        buckets = 1 if named is not None else table_rows(dt) // PLAN_BUCKET_ROWS
        if buckets <= 1:
            index = pl.concat(list(index_pieces), rechunk=False)
            key_types = {k: index.schema[k] for k in self.pk}
            src = pl.scan_ipc(staged.path).select(*staged_keep, *_hash_words("record_hash", "_s_h"))
            yield index, src.cast(key_types), None
            return
        bucket = self._bucket(buckets)
        prefix, base = f"{self.contract.bronze_table}-plan-", self.storage.settings.stage_dir
        with tempfile.TemporaryDirectory(prefix=prefix, dir=stage_dir(base)) as spill:
            index_schema = _spill(index_pieces, bucket, Path(spill), "t")
            key_types = {k: index_schema[k] for k in self.pk}
            columns = [*staged_keep, "record_hash"]
            reader = staged.reader()
            schema = pa.schema([reader.schema.field(c) for c in columns])
            rows = pa.RecordBatchReader.from_batches(schema, (b.select(columns) for b in reader))
            staged_schema = _spill((piece.cast(key_types) for piece in _narrowed(rows, staged_keep, "_s_h")),
                                   bucket, Path(spill), "s")
            for b in range(buckets):
                index = _unspill(Path(spill), "t", b, index_schema)
                src = _unspill(Path(spill), "s", b, staged_schema)
                yield index, src.lazy(), bucket == b

    def _named_keys(self, staged: StagedBatch) -> pl.DataFrame | None:
        """The keys a plan needs the target's rows of, when a load names them all (its staged keys
        and the deleted keys it names, no key sweep) and they are few enough to hold (at most
        ``PLAN_BUCKET_ROWS``); ``None``: the plan reads the whole index."""
        if staged.keys_are_rows or staged.source_keys_path is not None:
            return None
        deleted = 0 if staged.deleted_keys is None else staged.deleted_keys.num_rows
        if staged.rows + deleted > PLAN_BUCKET_ROWS:
            return None
        keys = [pl.scan_ipc(staged.path).select(self.pk).collect()] if staged.rows else []
        if deleted:
            frame = pl.from_arrow(staged.deleted_keys.select(self.pk))  # type: ignore[union-attr]
            assert isinstance(frame, pl.DataFrame)
            keys.append(frame.cast(keys[0].schema) if keys else frame)
        return pl.concat(keys).unique() if keys else pl.DataFrame(schema=dict.fromkeys(self.pk, pl.Int64))

    def plan(
        self, dt: DeltaTable, staged: StagedBatch, backfill_unchanged: bool = False,
        resumed: str | None = None,
    ) -> tuple[pl.DataFrame, MergeResult]:
        """Classify every staged key (insert/update/unchanged) and every vanished key (delete).

        ``backfill_unchanged`` rewrites ACTIVE rows whose hash is unchanged too: the load that
        adds a new source column fills it in on existing rows (their hashes do not change).
        ``resumed`` names an interrupted batch: its committed rows count as skipped.
        """
        result = MergeResult(self.uri, staged.rows, resumed_batch_id=resumed)
        if _nothing_to_plan(staged):  # e.g. a CDC tick without changes: no need to read the target
            return pl.DataFrame(), result
        plans: list[pl.DataFrame] = []
        legacy = None
        if staged.legacy_hashes is not None:  # a v1 table: equal under v1 means unchanged
            legacy = _narrow(staged.legacy_hashes, self.pk, "_v1_h", column=LEGACY_HASH)
        dupes = 0
        for index, src, bucket in self._buckets(dt, staged, resumed):
            # joined by Polars' streaming engine: the plan holds the target index (of one key
            # bucket), never the staged rows or the joined rows
            key_types = {k: index.schema[k] for k in self.pk}
            if staged.rows:
                dupes += self._duplicates(src)
                legacy_keys = None if legacy is None else legacy.cast(key_types).lazy()
                if legacy_keys is not None and bucket is not None:
                    legacy_keys = legacy_keys.filter(bucket)
                rows = self._classify(src, index, legacy_keys, backfill_unchanged, resumed)
                ops = rows.get_column(OP)
                result.inserted += int((ops == "I").sum())
                result.updated += int((ops == "U").sum())
                result.rehashed_v1 += int((ops == "H").sum())
                result.forgotten_skipped += int(rows.get_column("_forgotten").sum())
                result.rows_skipped_by_checkpoint += int(rows.get_column("_kept").sum())
                plans.append(rows.filter(pl.col(OP).is_not_null()).select([*self.pk, OP, "_route"]))
            keys = None
            if staged.keys_are_rows:
                keys = src.select(self.pk)
            elif staged.source_keys_path is not None:
                keys = pl.scan_ipc(staged.source_keys_path).cast(key_types)
                if bucket is not None:
                    keys = keys.filter(bucket)
            vanished = None
            if keys is not None:
                vanished = index.lazy().filter(pl.col("_t_status") == ACTIVE).join(
                    keys, on=self.pk, how="anti").collect(engine="streaming")
            elif staged.deleted_keys is not None:  # log-based CDC names the deleted keys itself
                gone = pl.from_arrow(staged.deleted_keys).lazy().cast(key_types)  # type: ignore[union-attr]
                if bucket is not None:
                    gone = gone.filter(bucket)
                vanished = index.lazy().filter(pl.col("_t_status") == ACTIVE).join(
                    gone, on=self.pk, how="semi").collect(engine="streaming")
            if vanished is not None:
                result.soft_deleted += vanished.height
                route = pl.col(TARGET_PART) if self.part else pl.lit(None)
                plans.append(vanished.select([*self.pk, pl.lit("D").alias(OP), route.alias("_route")]))
            del index
        self._refuse_duplicates(dupes)
        result.unchanged = staged.rows - result.inserted - result.updated - result.forgotten_skipped
        plans = [p.with_columns(pl.col("_route").cast(pl.Date)) for p in plans if p.height]
        plan = pl.concat(plans) if plans else pl.DataFrame()
        if self.part and plan.height:
            routes = plan.get_column("_route").drop_nulls().unique().sort()
            result.partitions = [d.isoformat() for d in routes.to_list()]
        return plan, result

    def _classify(self, src: pl.LazyFrame, index: pl.DataFrame, legacy: pl.LazyFrame | None,
                  backfill_unchanged: bool, resumed: str | None) -> pl.DataFrame:
        """Each staged key's operation (I/U/H or none) and route, keeping only the rows that matter:
        an operation, a FORGOTTEN key, or a row the ``resumed`` batch already committed."""
        joined = src.join(index.lazy(), on=self.pk, how="left")
        status = pl.col("_t_status")
        is_new = status.is_null()
        forgotten = (status == FORGOTTEN).fill_null(False)
        differs = ~_same("_t_h", "_s_h")
        rehash = pl.lit(False)
        if legacy is not None:
            joined = joined.join(legacy, on=self.pk, how="left")
            rehash = ((status == ACTIVE) & differs & _same("_t_h", "_v1_h")).fill_null(False)
        changed = ~is_new & ~forgotten & ~rehash & (differs | (status == DELETED)
                                                    | pl.lit(backfill_unchanged))
        op = (pl.when(is_new).then(pl.lit("I")).when(changed).then(pl.lit("U")).when(rehash)
              .then(pl.lit("H")).otherwise(pl.lit(None)))
        kept = pl.col("_t_resumed").fill_null(False) if resumed is not None else pl.lit(False)
        target_part = pl.col(TARGET_PART) if self.part else pl.lit(None)
        own_part = pl.col(self.part) if self.part else pl.lit(None)
        return joined.select(
            *self.pk, op.alias(OP), pl.when(is_new).then(own_part).otherwise(target_part).alias("_route"),
            forgotten.alias("_forgotten"), (op.is_null() & kept).alias("_kept"),
        ).filter(pl.col(OP).is_not_null() | pl.col("_forgotten") | pl.col("_kept")
                 ).collect(engine="streaming")  # the rows that matter: few, unless all are new

    # ------------------------------------------------------------------ writing
    def _merge_source(self, staged: StagedBatch, plan: pl.DataFrame) -> pa.RecordBatchReader:
        """Stream staged rows that need writing (routed to their partition) plus delete markers."""
        schema = staged.schema.append(pa.field(OP, pa.string()))
        upserts = plan.filter(pl.col(OP) != "D")
        deletes = plan.filter(pl.col(OP) == "D")
        ctx = staged.ctx

        def batches():
            if upserts.height:
                for batch in staged.batches():
                    frame = pl.from_arrow(batch)
                    assert isinstance(frame, pl.DataFrame)
                    hit = frame.join(upserts, on=self.pk, how="inner")
                    if not hit.height:
                        continue
                    if self.part:
                        hit = hit.with_columns(pl.col("_route").alias(self.part))
                    yield self._protect(_to_batch(hit, schema))
            if deletes.height:
                frame = deletes.with_columns(
                    pl.lit(ctx.batch_time).cast(pl.Datetime("us", "UTC")).alias("update_timestamp"),
                    pl.lit(ctx.batch_id).alias("batch_id"),
                    pl.lit(DELETED).alias("record_status"),
                )
                if self.part:
                    frame = frame.with_columns(pl.col("_route").alias(self.part))
                yield _to_batch(frame, schema)

        return pa.RecordBatchReader.from_batches(schema, batches())

    def _predicate(self, plan: pl.DataFrame) -> str:
        terms = [f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in self.pk]
        if self.part:
            part = quote_ident(self.part)
            terms.append(f"t.{part} = s.{part}")
            parts = plan.get_column("_route").drop_nulls().unique().sort().to_list()
            values = ", ".join(_sql_literal(v) for v in parts)
            null_part = plan.get_column("_route").null_count() > 0
            if values and not null_part:
                terms.append(f"t.{part} IN ({values})")
        terms.append(key_range_sql(f"t.{quote_ident(self.pk[0])}", key_ranges(plan.get_column(self.pk[0]))))
        return " AND ".join(terms)

    def _commit_properties(
        self, dt: DeltaTable | None, staged: StagedBatch, chunk: int = 0, chunks: int = 1
    ) -> CommitProperties:
        meta = commit_metadata(staged.ctx.batch_id, staged.window, staged.watermark, chunk, chunks,
                               staged.metadata, staged.final_metadata, staged.ctx.batch_time)
        return commit_properties(dt, self.contract, meta)

    def merge(self, staged: StagedBatch, on_commit: Callable[[CommitInfo], None] | None = None
              ) -> MergeResult:
        """Apply §2.3 to the table; retries commit conflicts after re-reading the table.

        A load of more than ``chunk_rows`` rows commits in chunks (``on_commit`` is told after
        each). A load killed between chunks keeps what it committed: the next load re-plans
        against the table, so those rows are unchanged and are not written again.
        """
        started = time.perf_counter()
        self._on_commit = on_commit
        self.pii = require_hook(self.contract, staged.pii, "write") if self.contract.encrypted_columns \
            else None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            dt = self.storage.open(self.contract.bronze_table)
            if dt is not None and staged.ctx.batch_id in committed_batch_ids(dt):
                log.info("%s: batch %s already committed", self.uri, staged.ctx.batch_id)
                result = MergeResult(self.uri, staged.rows, committed=True)
                break
            try:
                result = self._create(staged) if dt is None else self._merge(dt, staged)
                if dt is not None and not result.committed and staged.commit_always:
                    self._record_position(dt, staged)
                    result.committed, result.commits = True, 1
                break
            except (CommitFailedError, DeltaError) as exc:
                if attempt == MAX_ATTEMPTS or not _is_conflict(exc):
                    raise
                log.warning("%s: commit conflict (%s); re-reading and retrying", self.uri, exc)
                time.sleep(0.2 * 2**attempt)
        final = self.storage.open(self.contract.bronze_table)
        if final is not None:
            result.version = final.version()
            result.size_bytes, result.num_files = table_stats(final)
            result.engine_metrics = batch_metrics(final, staged.ctx.batch_id, result.commits)
        result.merge_seconds = round(time.perf_counter() - started, 3)
        if staged.rows:
            result.avg_quality_score = round(staged.score_sum / staged.rows, 2)
        return result

    def _record_position(self, dt: DeltaTable, staged: StagedBatch) -> None:
        """A commit without rows that records the batch's metadata (a CDC snapshot's log position
        when the table was already exact)."""
        if enable_change_feed(dt):
            dt = self.storage.open(self.contract.bronze_table) or dt
        commit_without_rows(dt, self._commit_properties(dt, staged), self.storage.delta_options)

    def _committed(self, staged: StagedBatch, chunk: int, chunks: int, rows: int) -> None:
        dt = self.storage.open(self.contract.bronze_table)
        info = CommitInfo(self.contract.bronze_table, staged.ctx.batch_id, staged.window, chunk, chunks,
                          rows, dt.version() if dt is not None else -1)
        log.info("%s: committed chunk %d/%d of batch %s (%d rows)", self.uri, chunk + 1, chunks,
                 staged.ctx.batch_id, rows)
        if self._on_commit is not None:
            self._on_commit(info)

    def _prepare_keys(self, subjects: pl.Series) -> None:
        """Ready the PII hook for every subject about to be written (e.g. their data keys)."""
        if self.pii is not None:
            self.pii.prepare(subjects.drop_nulls().unique().to_list())

    def _protect(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The PII columns protected by the hook (hash and score were computed on plaintext)."""
        return batch if self.pii is None else self.pii.protect(batch)

    def _staged_chunk(self, staged: StagedBatch, chunk: int, sizes: list[int], order: list[int] | None
                      ) -> Iterator[pa.RecordBatch]:
        """Rows ``[chunk * chunk_rows, (chunk + 1) * chunk_rows)`` of the staged rows in primary
        key order: the files of a snapshot get (nearly) disjoint key ranges, so a later MERGE's
        key-range predicate skips the files its keys cannot be in. ``order`` (see
        :func:`key_order`) lists the staged batches in key order when no sort is needed; then
        one batch at a time is read, else the chunk's rows are read and gathered by sorted key.
        ``sizes`` are the rows of each staged batch (batches outside the chunk are not read)."""
        lo, hi, offset = chunk * self.chunk_rows, (chunk + 1) * self.chunk_rows, 0
        slices = []
        for index in order if order is not None else range(len(sizes)):
            end = offset + sizes[index]
            if end > lo and offset < hi:
                piece = staged.batch(index).slice(max(lo - offset, 0), min(hi, end) - max(lo, offset))
                if order is not None:
                    yield self._protect(staged.complete(piece))
                else:
                    slices.append(piece)
            offset = end
            if offset >= hi:
                break
        if order is not None:
            return
        # sort the keys only, then gather one output batch at a time (no sorted copy of the chunk)
        table = pa.Table.from_batches(slices, schema=staged_schema(staged.schema))
        by_key = pc.sort_indices(table.select(self.pk), sort_keys=[(k, "ascending") for k in self.pk])
        for start in range(0, len(by_key), OUTPUT_BATCH_ROWS):
            for batch in table.take(by_key.slice(start, OUTPUT_BATCH_ROWS)).to_batches():
                yield self._protect(staged.complete(batch))

    def _create(self, staged: StagedBatch) -> MergeResult:
        chunks = max(1, math.ceil(staged.rows / self.chunk_rows))
        result = MergeResult(self.uri, staged.rows, inserted=staged.rows, committed=True)
        order, sizes = None, []
        if staged.rows:  # one streamed read of the narrow columns: keys, data subject, partition
            subject = [self.contract.data_subject] if self.pii is not None and self.contract.data_subject \
                else []
            part = [self.part] if self.part else []
            columns = list(dict.fromkeys(self.pk + subject + part))
            batches = [b.select(columns) for b in staged.reader()]
            order, sizes = key_order(batches, self.pk), [b.num_rows for b in batches]
            narrow = pl.from_arrow(pa.Table.from_batches(batches))
            assert isinstance(narrow, pl.DataFrame)
            del batches
            if order is None:  # sorted, disjoint batches cannot repeat a key
                self._refuse_duplicates(self._duplicates(narrow))
            if subject:
                self._prepare_keys(narrow.get_column(subject[0]))
            if part:
                result.partitions = [d.isoformat() for d in narrow.get_column(part[0]).drop_nulls().unique()
                                     .sort().to_list()]
            del narrow
        for chunk in range(chunks):
            dt = self.storage.open(self.contract.bronze_table) if chunk else None
            if dt is not None and chunk in committed_chunks(dt, staged.ctx.batch_id):
                continue  # landed before a commit error: never append it twice
            try:
                write_deltalake(
                    self.uri,
                    pa.RecordBatchReader.from_batches(
                        staged.schema, self._staged_chunk(staged, chunk, sizes, order)),
                    partition_by=[self.part] if self.part else None,
                    mode="append" if chunk else "error",
                    storage_options=self.storage.delta_options,
                    target_file_size=target_file_bytes(self.contract),
                    configuration=None if chunk else {
                        "delta.targetFileSize": str(target_file_bytes(self.contract)), CHANGE_FEED: "true"},
                    writer_properties=writer_properties(self.contract),
                    commit_properties=self._commit_properties(dt, staged, chunk, chunks),
                )
            except BaseException:
                if not chunk:
                    discard_uncommitted(self.uri)
                raise
            result.commits += 1
            self._committed(staged, chunk, chunks, min(staged.rows, (chunk + 1) * self.chunk_rows))
        return result

    def _merge(self, dt: DeltaTable, staged: StagedBatch) -> MergeResult:
        target_columns = {f.name for f in dt.schema().to_arrow()}
        backfill = staged.rewrite_unchanged or any(n not in target_columns for n in staged.schema.names)
        plan, result = self.plan(dt, staged, backfill_unchanged=backfill, resumed=interrupted_batch(dt))
        if not plan.height:
            return result
        if result.rehashed_v1:
            staged.metadata[REHASHED_KEY] = str(result.rehashed_v1)
            log.info("%s: %d unchanged rows re-hashed from record_hash v1 to v2", self.uri,
                     result.rehashed_v1)
        if enable_change_feed(dt):  # before the MERGE, so its changes are in the feed
            dt = self.storage.open(self.contract.bronze_table) or dt
        plan = plan.sort(self.pk)  # chunks are key ranges, so each MERGE predicate stays narrow
        if self.pii is not None:  # the data subject is the key of every PII table we have
            self._prepare_keys(plan.filter(pl.col(OP) != "D").get_column(self._subject_in_plan()))
        chunks = max(1, math.ceil(plan.height / self.chunk_rows))
        for chunk in range(chunks):
            piece = plan.slice(chunk * self.chunk_rows, self.chunk_rows)
            if chunk:
                dt = self.storage.open(self.contract.bronze_table) or dt
            self._merge_piece(dt, staged, piece, chunk, chunks)
            result.commits += 1
            self._committed(staged, chunk, chunks, min(plan.height, (chunk + 1) * self.chunk_rows))
        result.committed = True
        return result

    def _subject_in_plan(self) -> str:
        subject = self.contract.data_subject
        if subject not in self.pk:
            raise ValueError(f"{self.contract.bronze_table}: the data subject {subject} must be the "
                             f"primary key to encrypt during a MERGE")
        return str(subject)

    def _merge_piece(self, dt: DeltaTable, staged: StagedBatch, plan: pl.DataFrame, chunk: int,
                     chunks: int) -> None:
        extras = [n for n in staged.schema.names if n not in self.schema.names]
        evolve = sorted(set(extras) - {f.name for f in dt.schema().to_arrow()})
        source_cols = self.contract.column_names + extras
        update_cols = [*source_cols, "record_hash", "data_quality_score", "batch_id", "update_timestamp"]
        # quoted: a source column may be mixed-case or hold spaces ("MixedCase", "with space")
        updates = {quote_ident(c): f"s.{quote_ident(c)}" for c in update_cols}
        updates[quote_ident("record_status")] = f"'{ACTIVE}'"
        inserts = {quote_ident(c): f"s.{quote_ident(c)}" for c in staged.schema.names}
        (
            dt.merge(
                self._merge_source(staged, plan),
                predicate=self._predicate(plan),
                source_alias="s",
                target_alias="t",
                streamed_exec=True,
                merge_schema=bool(evolve),
                writer_properties=writer_properties(self.contract),
                commit_properties=self._commit_properties(dt, staged, chunk, chunks),
            )
            .when_matched_update(updates, predicate=f"s.{OP} = 'U' AND t.record_status <> '{FORGOTTEN}'")
            .when_matched_update({"record_hash": "s.record_hash"}, predicate=f"s.{OP} = 'H'")
            .when_matched_update(
                {"record_status": f"'{DELETED}'", "update_timestamp": "s.update_timestamp",
                 "batch_id": "s.batch_id"},
                predicate=f"s.{OP} = 'D' AND t.record_status = '{ACTIVE}'",
            )
            .when_not_matched_insert(inserts, predicate=f"s.{OP} = 'I'")
            .execute()
        )


@dataclass(frozen=True)
class CommitInfo:
    """One committed chunk of a batch (what ``bz_checkpoints`` records)."""

    table: str
    batch_id: str
    window: str
    chunk: int
    chunks: int
    rows_committed: int
    delta_version: int

    @property
    def complete(self) -> bool:
        return self.chunk == self.chunks - 1


def key_order(batches: list[pa.RecordBatch], pk: list[str]) -> list[int] | None:
    """The indexes of ``batches`` in key order, when each batch is sorted by a single-column key
    and their key ranges do not overlap (a heap read block range by block range in key order: the
    common case for a snapshot); None when the rows need a real sort."""
    if len(pk) != 1:
        return None
    spans = []
    for index, batch in enumerate(batches):
        keys = batch.column(pk[0]).to_numpy(zero_copy_only=False)
        if keys.size > 1 and not bool(np.all(keys[1:] > keys[:-1])):
            return None
        if keys.size:
            spans.append((keys[0], keys[-1], index))
    spans.sort()
    if any(prev[1] >= nxt[0] for prev, nxt in itertools.pairwise(spans)):
        return None
    return [index for _, _, index in spans]


def _to_batch(frame: pl.DataFrame, schema: pa.Schema) -> pa.RecordBatch:
    present = set(frame.columns)
    cols = []
    for f in schema:
        if f.name in present:
            cols.append(frame.get_column(f.name).to_arrow().cast(f.type))
        else:
            cols.append(pa.nulls(frame.height, f.type))
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def _is_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    version_taken = "version" in text and "exists" in text
    return isinstance(exc, CommitFailedError) or "conflict" in text or version_taken
