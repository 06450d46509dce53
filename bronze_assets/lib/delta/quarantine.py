"""``bz_quarantine``: batches (raw rows as JSON) that could not be loaded, with the reason."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from bronze_assets.lib.delta.change_feed import CHECKPOINT_PROPERTIES
from bronze_assets.lib.delta.exclusive_append import append_exclusive
from bronze_assets.lib.delta.key_ranges import sql_literal
from bronze_assets.lib.delta.query import read_columns
from bronze_assets.lib.delta.storage import Storage, StorageLike, as_storage

QUARANTINE_TABLE = "bz_quarantine"
QUARANTINE_SCHEMA = pa.schema([
    pa.field("quarantine_id", pa.string()),
    pa.field("table_name", pa.string()),
    pa.field("batch_id", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("quarantined_at", pa.timestamp("us", tz="UTC")),
    pa.field("record", pa.string()),
])


def quarantine_rows(
    storage: StorageLike, table: str, batch_id: str, reason: str, records: Iterable[pa.RecordBatch],
) -> int:
    """Append the raw JSON ``records`` (one string column) to ``bz_quarantine`` in one commit."""
    storage = as_storage(storage)
    now = datetime.now(UTC)
    raw = [b.column(0).cast(pa.string()) for b in records if b.num_rows]
    if not raw:  # an empty batch still records why it was refused
        raw = [pa.nulls(1, pa.string())]

    def batches() -> Iterable[pa.RecordBatch]:
        for column in raw:
            n = len(column)
            yield pa.RecordBatch.from_arrays([
                pa.array([str(uuid.uuid4()) for _ in range(n)], pa.string()),
                pa.array([table] * n, pa.string()),
                pa.array([batch_id] * n, pa.string()),
                pa.array([reason] * n, pa.string()),
                pa.array([now] * n, QUARANTINE_SCHEMA.field("quarantined_at").type),
                column,
            ], schema=QUARANTINE_SCHEMA)

    rows = pa.RecordBatchReader.from_batches(QUARANTINE_SCHEMA, batches())
    write_deltalake(storage.uri(QUARANTINE_TABLE), rows, mode="append", storage_options=storage.delta_options,
                    configuration=CHECKPOINT_PROPERTIES)  # at create
    return sum(len(c) - c.null_count for c in raw)


def quarantine_once(storage: Storage, table: str, batch_id: str, reason: str,
                    records: list[tuple[str, str]], since: datetime) -> int:
    """Append the ``(quarantine_id, record)`` pairs whose id ``bz_quarantine`` does not hold yet
    among its rows of ``table`` quarantined at or after ``since`` (ids that name the record: a run
    killed after it quarantined, or another run at once, does not quarantine it twice).
    Returns how many were appended."""
    if not records:
        return 0
    now = datetime.now(UTC)
    # in the scan: the files whose statistics end before ``since`` are skipped, not read
    recent = (f"table_name = {sql_literal(table)} "
              f"AND quarantined_at >= {sql_literal(since if since.tzinfo else since.replace(tzinfo=UTC))}")

    def missing(dt: DeltaTable | None) -> pa.Table | None:
        held: set[str] = set()
        if dt is not None:
            ids = read_columns(dt, ["quarantine_id"], where=recent).column("quarantine_id")
            held = set(ids.cast(pa.string()).to_pylist())  # DataFusion hands back string_view
        new = [(i, r) for i, r in records if i not in held]
        if not new:
            return None
        n = len(new)
        return pa.table([pa.array([i for i, _ in new], pa.string()), pa.array([table] * n, pa.string()),
                         pa.array([batch_id] * n, pa.string()), pa.array([reason] * n, pa.string()),
                         pa.array([now] * n, QUARANTINE_SCHEMA.field("quarantined_at").type),
                         pa.array([r for _, r in new], pa.string())], schema=QUARANTINE_SCHEMA)

    return append_exclusive(storage, QUARANTINE_TABLE, f"bronze_assets/{QUARANTINE_TABLE}/{table}", missing)
