"""A data check's outcome, kept beside the bronze root with the Delta versions it read
(``<root>/_bronze_checks/<table>.<check>.json``): the same tables at the same versions give the
same answer, so a tick that committed nothing answers from it instead of reading every data file
again (on an object store a check reads each file's footer and key columns: README 'Deploying').

A table's state is its Delta table id and version: a version is immutable, and a table dropped
and created again has another id. A table the check reads only on a miss (a referential check's
parents) is told by a listing of its log instead (:func:`log_state`): opening it reads its log
from the last checkpoint, a dozen requests or more on an object store."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from deltalake import DeltaTable

from bronze_assets.lib.delta.storage import Storage

MEMO_DIR = "_bronze_checks"


def tables_state(tables: Mapping[str, DeltaTable]) -> dict[str, str]:
    """``{name: "<table id>@<version>"}``: what a check of ``tables`` reads."""
    return {name: f"{dt.metadata().id}@{dt.version()}" for name, dt in sorted(tables.items())}


def log_state(storage: Storage, table: str) -> str | None:
    """``table``'s state from one listing of its ``_delta_log`` (None: no table): its latest
    commit's version, size and time, after its oldest log file's (a table created again has
    another). A commit file is never rewritten, so a new commit is a new state."""
    commits = [(name, size, mtime) for name, size, mtime in storage.listing(f"{table}/_delta_log")
               if name.endswith(".json") and name[:-5].isdigit()]
    if not commits:
        return None
    (first, first_size, first_mtime), (last, size, mtime) = commits[0], commits[-1]
    return f"{first}:{first_size}:{first_mtime}/{int(last[:-5])}:{size}:{mtime}"


def _path(table: str, check: str) -> str:
    return f"{MEMO_DIR}/{table}.{check}.json"


def kept_outcome(storage: Storage, table: str, check: str, state: Mapping[str, str]) -> dict[str, Any] | None:
    """The outcome (as :func:`keep_outcome` was given it) of ``check`` on ``table`` when it was
    computed at ``state``, else None."""
    raw = storage.read_file(_path(table, check))
    kept = json.loads(raw) if raw else None
    return kept["outcome"] if kept is not None and kept.get("state") == dict(state) else None


def keep_outcome(storage: Storage, table: str, check: str, state: Mapping[str, str],
                 outcome: Mapping[str, Any]) -> None:
    """Keep ``outcome`` (plain JSON values) of ``check`` on ``table``, computed at ``state``."""
    record = {"state": dict(state), "outcome": dict(outcome)}
    storage.write_file(_path(table, check), json.dumps(record).encode())
