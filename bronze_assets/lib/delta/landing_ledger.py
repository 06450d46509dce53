"""``bz_landing_files``: the ledger of the landing-zone files each landing table has ingested
(ARCHITECTURE §2.6), one row per file.

Exactly once: a load's ledger rows ride in the metadata of its data commit (key
:data:`LEDGER_KEY` of the batch's last commit, as a CDC position does), so the data and "these
files are done" are one Delta transaction — a run killed before it committed left neither, one
killed after left both. The rows are then copied into ``bz_landing_files`` (the queryable ledger,
:func:`materialise`); a run killed between the two is repaired by the next listing, which reads
the ledger as the table's rows plus the commit metadata of the data table (:func:`ingested`). A
Delta transaction app id would record only a counter per table, not the files: the commit
metadata carries the files themselves.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable

from bronze_assets.lib.delta.commit_log import commit_history
from bronze_assets.lib.delta.exclusive_append import append_exclusive
from bronze_assets.lib.delta.key_ranges import sql_literal
from bronze_assets.lib.delta.query import read_snapshot
from bronze_assets.lib.delta.storage import Storage

LEDGER_TABLE = "bz_landing_files"
LEDGER_KEY = "bronze.landing_files"  # the ledger rows of the batch, JSON, on its last data commit
APP_PREFIX = "bronze_assets/bz_landing_files/"  # + the data table: the app id of its ledger appends
RECENT = 50  # commits read back first when looking for ledger rows not copied yet
TS = pa.timestamp("us", tz="UTC")
LEDGER_SCHEMA = pa.schema([
    pa.field("table_name", pa.string()),
    pa.field("path", pa.string()),  # the file's URI
    pa.field("size", pa.int64()),
    pa.field("modification_time", TS),
    pa.field("sha256", pa.string()),
    pa.field("rows", pa.int64()),
    pa.field("batch_id", pa.string()),
    pa.field("ingested_at", TS),
])


@dataclass(frozen=True)
class LedgerRow:
    """One ingested file: its URI, size, modification time, digest, the records it landed (valid
    lines) and the batch that landed it."""

    table_name: str
    path: str
    size: int
    modification_time: datetime
    sha256: str
    rows: int
    batch_id: str
    ingested_at: datetime

    def as_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["modification_time"] = self.modification_time.isoformat()
        row["ingested_at"] = self.ingested_at.isoformat()
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> LedgerRow:
        return cls(**(row | {"modification_time": datetime.fromisoformat(row["modification_time"]),
                             "ingested_at": datetime.fromisoformat(row["ingested_at"])}))


def ledger_metadata(rows: list[LedgerRow]) -> dict[str, str]:
    """The commit metadata that records ``rows`` with the data commit."""
    return {LEDGER_KEY: json.dumps([r.as_json() for r in rows])}


def committed_rows(storage: Storage, bronze_table: str, dt: DeltaTable | None = None,
                   present: set[str] | None = None, newer_than: int | None = None) -> list[LedgerRow]:
    """The ledger rows recorded in the commits of ``bronze_table`` (``dt``: the table, if open).
    ``present``: the batches ``bz_landing_files`` holds; the commits are read newest first and
    stop at one of those (the older ones were copied before it). ``newer_than``: only the commits
    after that table version."""
    dt = dt if dt is not None else storage.open(bronze_table)
    if dt is None:
        return []
    limit = None if newer_than is None else dt.version() - newer_than
    if limit is not None and limit <= 0:
        return []
    if present is not None and limit is None:
        limit = RECENT if dt.version() + 1 > RECENT else None
    while True:
        entries = commit_history(dt, limit)
        found: list[LedgerRow] = []
        for entry in entries:
            text = entry.get(LEDGER_KEY)
            if not isinstance(text, str):
                continue
            rows = [LedgerRow.from_json(r) for r in json.loads(text)]
            if present is not None and rows and rows[0].batch_id in present:
                return found  # copied already, and every older one before it
            found += rows
        if limit is None or newer_than is not None or len(entries) < limit:
            return found
        limit = None  # no copied batch among the newest: read them all


def table_rows(storage: Storage, bronze_table: str) -> list[LedgerRow]:
    """The rows ``bz_landing_files`` holds for ``bronze_table``."""
    dt = storage.open(LEDGER_TABLE)
    if dt is None:
        return []
    return _rows_of(dt, bronze_table)


def _rows_of(dt: DeltaTable, bronze_table: str) -> list[LedgerRow]:
    rows = read_snapshot(dt, where=f"table_name = {sql_literal(bronze_table)}")
    return [LedgerRow(**r) for r in rows.to_pylist()]


def materialise(storage: Storage, bronze_table: str, rows: list[LedgerRow]) -> int:
    """Append to ``bz_landing_files`` the committed ledger ``rows`` of ``bronze_table`` whose batch
    it does not hold yet; two runs at once never both append them (an app transaction per
    table). Returns how many."""
    if not rows:
        return 0

    def pending(dt: DeltaTable | None) -> pa.Table | None:
        done = {r.batch_id for r in _rows_of(dt, bronze_table)} if dt is not None else set()
        new = [asdict(r) for r in rows if r.batch_id not in done]
        return pa.Table.from_pylist(new, schema=LEDGER_SCHEMA) if new else None

    return append_exclusive(storage, LEDGER_TABLE, f"{APP_PREFIX}{bronze_table}", pending)


@dataclass(frozen=True)
class Ingested:
    """Every file a landing table has ingested, by URI, and the version of its data table read."""

    files: dict[str, LedgerRow]
    table_version: int | None


def ingested(storage: Storage, bronze_table: str, repair: bool = True) -> Ingested:
    """Every file ``bronze_table`` has ingested: the rows of ``bz_landing_files`` (which outlive
    the data table's log retention) and those its data commits record, which are copied into
    ``bz_landing_files`` when it lacks them (a run killed after its commit; ``repair`` false:
    only read, e.g. by ``bronze status``)."""
    present = table_rows(storage, bronze_table)
    dt = storage.open(bronze_table)
    committed = committed_rows(storage, bronze_table, dt, {r.batch_id for r in present})
    if repair:
        materialise(storage, bronze_table, committed)
    files = {r.path: r for r in sorted([*present, *committed], key=lambda r: r.ingested_at)}
    return Ingested(files, dt.version() if dt is not None else None)
