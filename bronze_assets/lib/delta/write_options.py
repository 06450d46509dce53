"""How the delta-rs writer lays out a bronze table's files: target file size, rows per commit,
Parquet writer properties."""

from __future__ import annotations

from deltalake import ColumnProperties, WriterProperties

from bronze_assets.contracts import Contract
from bronze_assets.settings import env

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

