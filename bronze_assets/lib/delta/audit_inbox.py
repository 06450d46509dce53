"""The audit rows of loads that changed nothing, on an object store, until they join ``bz_audit_log``.

Appending a row to a Delta table opens it: on an object store that reads its last checkpoint and
every commit since it, each twice, and every tenth append writes a checkpoint — 18 to 74 requests
for the one row an unchanged hourly tick records (README 'Bronze on S3', requests per tick). Such a
row is instead written as one small file, ``<root>/_bronze_audit_inbox/<audit_id>.json`` (one
request), and the next append to the audit log through Delta (a load that moved data, a failure,
any audited operation) carries the waiting rows in its own commit, then removes their files.

Exact under concurrent runs: every tick writes a file of its own (its row's ``audit_id``); a
fold commits under one Delta app transaction (:mod:`exclusive_append`), so two folds at once do
not both append a row, and it appends only the rows whose ``audit_id`` is not in the table yet
(a fold that died between its commit and removing the files appended them already). Readers
(:func:`~bronze_assets.lib.delta.control.read_table`) list the inbox *before* reading the table
and keep one row per ``audit_id``: a row is in the table before its file goes, so none is missed.

The lineage and cost rows of a load that read rows but changed none (a daily full load of an
unchanged table) wait the same way, each table in an inbox of its own (:data:`INBOXES`). Within a
run every append to these tables and to ``bz_checkpoints`` waits here too, on a local folder as on
an object store, and the run's end commits them, one commit per table
(:func:`~bronze_assets.lib.delta.control.hold_appends`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bronze_assets.lib.delta.storage import Storage

INBOX = "_bronze_audit_inbox"
FOLD_APP = "bronze.audit_inbox"  # the Delta app transaction of a fold


@dataclass(frozen=True)
class Inbox:
    """Where the rows of one control table wait: the folder under the root, the Delta app
    transaction of a fold, the row's id column and the time column that bounds a fold's read of
    the ids already in the table (always filled when a row is posted)."""

    folder: str
    app: str
    id_column: str
    time_column: str


AUDIT_INBOX = Inbox(INBOX, FOLD_APP, "audit_id", "start_timestamp")
INBOXES = {  # by control table
    "bz_audit_log": AUDIT_INBOX,
    "bz_data_lineage": Inbox("_bronze_inbox/bz_data_lineage", "bronze.inbox.bz_data_lineage", "lineage_id",
                             "processing_timestamp"),
    "bz_cost_tracking": Inbox("_bronze_inbox/bz_cost_tracking", "bronze.inbox.bz_cost_tracking", "cost_id",
                              "recorded_at"),
    "bz_checkpoints": Inbox("_bronze_inbox/bz_checkpoints", "bronze.inbox.bz_checkpoints", "checkpoint_id",
                            "checkpoint_timestamp"),
}


def path_of(row: Mapping[str, Any], inbox: Inbox = AUDIT_INBOX) -> str:
    """The file of ``row`` (its id filled) in ``inbox``."""
    return f"{inbox.folder}/{row[inbox.id_column]}.json"


def post(storage: Storage, row: Mapping[str, Any], inbox: Inbox = AUDIT_INBOX) -> str:
    """Write one complete row (its id filled) as a file of its own in ``inbox``; returns its path."""
    text = json.dumps({k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()},
                      default=_plain)
    path = path_of(row, inbox)
    storage.write_file(path, text.encode())
    return path


def _plain(value: Any) -> Any:
    """A NumPy or Arrow scalar as the Python value JSON writes (a row's counts may be either)."""
    if hasattr(value, "as_py"):
        return value.as_py()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"an inbox row holds a {type(value).__name__}, which JSON cannot write: {value!r}")


@dataclass(frozen=True)
class Pending:
    """The rows waiting in the inbox (as ``schema``) and their files."""

    rows: pa.Table
    paths: tuple[str, ...]


def pending(storage: Storage, schema: pa.Schema, inbox: Inbox = AUDIT_INBOX,
            known: Mapping[str, Mapping[str, Any]] | None = None) -> Pending:
    """The rows waiting in ``inbox``: one listing, then one read per file, except the files in
    ``known`` (path: the row this process posted there); a file removed meanwhile by a fold is
    skipped: its row is in the table."""
    rows, paths = [], []
    known = known or {}
    for path in sorted(storage.list_files(inbox.folder)):
        if path in known:
            rows.append(dict(known[path]))
            paths.append(path)
            continue
        data = storage.read_file(path) if path.endswith(".json") else None
        if data is None:
            continue
        row = json.loads(data)
        for f in schema:
            if pa.types.is_timestamp(f.type) and isinstance(row.get(f.name), str):
                row[f.name] = datetime.fromisoformat(row[f.name])
        rows.append(row)
        paths.append(path)
    return Pending(pa.Table.from_pylist(rows, schema=schema), tuple(paths))


def not_in(table: pa.Table | None, rows: pa.Table, id_column: str) -> pa.Table:
    """``rows`` whose ``id_column`` value is not in ``table`` (None: all)."""
    if table is None or not rows.num_rows:
        return rows
    present = table[id_column].cast(rows.schema.field(id_column).type)  # DataFusion: string_view
    return rows.filter(pc.invert(pc.is_in(rows[id_column], value_set=present)))


def remove(storage: Storage, paths: Sequence[str]) -> None:
    """Remove the files of rows that are in the table now (:meth:`Storage.delete_files`)."""
    storage.delete_files(paths)
