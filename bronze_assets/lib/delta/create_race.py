"""The create race of delta-rs (1.6.6): when two writers create one table at once, it lands the
loser's create as version 1 on top of the winner's, without a conflict check, so both writers'
rows are in the table (reproduced: 12 of 20 racing first loads; 20 of 20 racing landing-ledger
appends). A writer whose rows were chosen against the table's absence (a load, the history
seed, an exclusive append, the key store, the retention archive) creates it with mode
``error`` (a table that appeared since it looked fails the write, where ``append`` would add to
it) and :func:`race_safe_properties`: its create is not retried, the loser fails with a commit
conflict and decides again against the new table. Plain appends (control tables, a load's quarantined
rows) want both writers' rows and need no guard."""

from __future__ import annotations

from typing import Any

from deltalake import CommitProperties, DeltaTable


def race_safe_properties(dt: DeltaTable | None, **properties: Any) -> CommitProperties:
    """``CommitProperties(**properties)`` for a commit to ``dt``; when the commit creates the
    table (``dt`` None), delta-rs does not retry it (see the module)."""
    return CommitProperties(max_commit_retries=0 if dt is None else None, **properties)
