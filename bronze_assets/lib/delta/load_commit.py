"""Writing a load commit (both engines): its ``bronze.*`` metadata (keys in
:mod:`~bronze_assets.lib.delta.commit_log`) and the Delta app transaction that makes a retried
commit detectable."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.commit_log import (
    BATCH_KEY,
    BATCH_TIME_KEY,
    CHUNK_KEY,
    HASH_VERSION,
    HASH_VERSION_KEY,
    PARTITIONS_KEY,
    WATERMARK_KEY,
)
from bronze_assets.lib.delta.create_race import race_safe_properties

APP_ID_PREFIX = "bronze_assets/"


def app_id(contract: Contract, table: str | None = None) -> str:
    """The Delta app transaction id of a table's loads (both engines); ``table``: another table the
    load writes (its history), else ``bz_<name>``."""
    return APP_ID_PREFIX + (table or contract.bronze_table)


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


def partition_range_metadata(partition: tuple[datetime, datetime] | None) -> dict[str, str]:
    """The commit key recording the partition range (UTC start, end exclusive) a load ran for."""
    if partition is None:
        return {}
    start, end = partition
    return {PARTITIONS_KEY: f"{start.date().isoformat()}/{end.date().isoformat()}"}


def commit_properties(dt: DeltaTable | None, contract: Contract, meta: dict[str, str],
                      table: str | None = None) -> CommitProperties:
    """A load commit's properties: its bronze metadata and the table's next app transaction
    (``table``: see :func:`app_id`). The commit that creates the table (``dt`` None) is not
    retried (:mod:`~bronze_assets.lib.delta.create_race`): the merger re-plans the loser of a
    create race as a MERGE."""
    app = app_id(contract, table)
    txn = Transaction(app, next_txn_version(dt, app), int(time.time() * 1000))
    return race_safe_properties(dt, custom_metadata=meta, app_transactions=[txn])


def commit_without_rows(dt: DeltaTable, properties: CommitProperties, storage_options: dict[str, str] | None
                        ) -> None:
    """A commit that adds no rows, only ``properties`` (delta-spark makes no commit for an empty
    write, so the Spark engine records a metadata-only commit through this too)."""
    empty = pa.schema(dt.schema().to_arrow()).empty_table()
    write_deltalake(dt, empty, mode="append", commit_properties=properties, storage_options=storage_options)

