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
import pyarrow.compute as pc
from deltalake import write_deltalake

from bronze_assets.lib.delta.change_feed import CHECKPOINT_PROPERTIES
from bronze_assets.lib.delta.commit_log import commit_history
from bronze_assets.lib.delta.storage import Storage

LEDGER_TABLE = "bz_landing_files"
LEDGER_KEY = "bronze.landing_files"  # the ledger rows of the batch, JSON, on its last data commit
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


def committed_rows(storage: Storage, bronze_table: str) -> list[LedgerRow]:
    """The ledger rows recorded in the commits of ``bronze_table`` (every commit of its history)."""
    dt = storage.open(bronze_table)
    if dt is None:
        return []
    return [LedgerRow.from_json(r) for entry in commit_history(dt)
            if isinstance(text := entry.get(LEDGER_KEY), str) for r in json.loads(text)]


def table_rows(storage: Storage, bronze_table: str) -> list[LedgerRow]:
    """The rows ``bz_landing_files`` holds for ``bronze_table``."""
    dt = storage.open(LEDGER_TABLE)
    if dt is None:
        return []
    rows = dt.to_pyarrow_table()
    mine = rows.filter(pc.equal(rows.column("table_name"), bronze_table))
    return [LedgerRow(**r) for r in mine.to_pylist()]


def materialise(storage: Storage, bronze_table: str, rows: list[LedgerRow],
                present: list[LedgerRow] | None = None) -> int:
    """Append to ``bz_landing_files`` the committed ledger ``rows`` of ``bronze_table`` whose batch
    it does not hold yet (``present``: its rows, if already read). Returns how many."""
    done = {r.batch_id for r in (table_rows(storage, bronze_table) if present is None else present)}
    pending = [r for r in rows if r.batch_id not in done]
    if pending:
        table = pa.Table.from_pylist([asdict(r) for r in pending], schema=LEDGER_SCHEMA)
        write_deltalake(storage.uri(LEDGER_TABLE), table, mode="append",
                        storage_options=storage.delta_options,
                        configuration=CHECKPOINT_PROPERTIES)  # at create
    return len(pending)


def ingested(storage: Storage, bronze_table: str) -> dict[str, LedgerRow]:
    """Every file ``bronze_table`` has ingested, by URI: the rows of ``bz_landing_files`` (which
    outlive the data table's log retention) and those its data commits record, which are copied
    into ``bz_landing_files`` when it lacks them (a run killed after its commit)."""
    present = table_rows(storage, bronze_table)
    committed = committed_rows(storage, bronze_table)
    materialise(storage, bronze_table, committed, present)
    return {r.path: r for r in sorted([*present, *committed], key=lambda r: r.ingested_at)}
