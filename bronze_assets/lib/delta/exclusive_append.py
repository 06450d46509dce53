"""An append that two writers cannot both make: the rows to append are chosen against the table as
opened, and the commit carries a Delta app transaction, so a concurrent commit of the same app id
fails it (delta-rs' conflict checker); the append is then chosen again against the new table.
Used where bronze appends rows only if they are not there yet (the landing ledger, the landing
quarantine), so two runs at once never add them twice."""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow as pa
from deltalake import DeltaTable, PostCommitHookProperties, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from bronze_assets.lib.delta.change_feed import CHECKPOINT_PROPERTIES
from bronze_assets.lib.delta.create_race import race_safe_properties
from bronze_assets.lib.delta.storage import Storage

MAX_ATTEMPTS = 6


def is_conflict(exc: Exception) -> bool:
    """``exc`` is a lost race with another writer (a retry against the new table version may pass)."""
    text = str(exc).lower()
    version_taken = "version" in text and "exists" in text
    created = "table already exists" in text  # two first writes: the other created it
    return isinstance(exc, CommitFailedError) or "conflict" in text or version_taken or created


def append_exclusive(storage: Storage, table: str, app: str,
                     choose: Callable[[DeltaTable | None], pa.Table | None]) -> int:
    """Append ``choose(table as opened)`` (None or empty: nothing) to ``table`` in a commit of app
    transaction ``app``; a conflict re-opens the table and chooses again. Returns the rows appended."""
    return append_exclusive_from(None, storage, table, app, choose)[0]


def append_exclusive_from(start: DeltaTable | None, storage: Storage, table: str, app: str,
                          choose: Callable[[DeltaTable | None], pa.Table | None],
                          post_commit: PostCommitHookProperties | None = None,
                          configuration: dict[str, str] | None = None,
                          ) -> tuple[int, DeltaTable | None]:
    """:func:`append_exclusive`, first against ``start`` (the table kept open by the caller, not
    refreshed: a commit of ``app`` since it was opened fails the append, which then re-opens the
    table) when given; returns the rows appended and the table as it is after the commit (None if
    it does not exist). ``configuration``: the properties of a table the append creates (the
    checkpoint interval by default)."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        dt = start if attempt == 1 and start is not None else storage.open(table)
        rows = choose(dt)
        if rows is None or not rows.num_rows:
            return 0, dt
        version = ((dt.transaction_version(app) if dt is not None else None) or 0) + 1
        txn = Transaction(app, version, int(time.time() * 1000))
        properties = race_safe_properties(dt, app_transactions=[txn])
        try:  # a create (mode error) fails if the table appeared since it was opened
            write_deltalake(dt if dt is not None else storage.uri(table), rows,
                            mode="append" if dt is not None else "error",
                            storage_options=storage.delta_options, commit_properties=properties,
                            configuration=None if dt is not None else configuration or CHECKPOINT_PROPERTIES,
                            post_commithook_properties=post_commit if dt is not None else None)
            return rows.num_rows, dt
        except (CommitFailedError, DeltaError) as exc:
            if attempt == MAX_ATTEMPTS or not is_conflict(exc):
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")
