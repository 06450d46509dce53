"""A checkpoint at a table's current version, written by a load that committed nothing.

Opening a Delta table on an object store reads its last checkpoint (11 ranged GETs, deltalake
1.6.6) and then every commit since it, each commit file twice; tables checkpoint every ten
commits, so an hourly tick that finds nothing new would read up to nine commits twice on every run
until the next load commits. The first unchanged tick after a commit writes the checkpoint when
that makes the next opens cheaper (README 'Bronze on S3', requests per tick). A checkpoint holds
what the log already says and is no commit: it never conflicts with a writer."""

from __future__ import annotations

import logging

from deltalake import DeltaTable

from bronze_assets.lib.delta.storage import Storage

log = logging.getLogger(__name__)


def latest_checkpoint(storage: Storage, table: str) -> int | None:
    """The version of ``table``'s latest checkpoint (one listing of its log), None without one."""
    versions = [int(name.split(".", 1)[0]) for name, _, _ in storage.listing(f"{table}/_delta_log")
                if ".checkpoint." in name and name.endswith(".parquet") and name.split(".", 1)[0].isdigit()]
    return max(versions, default=None)


CHECKPOINT_GETS, COMMIT_GETS = 11, 2  # what an open reads: a checkpoint, each commit after it


def worth_a_checkpoint(latest: int | None, version: int) -> bool:
    """Whether opening the table from a checkpoint at ``version`` reads less than from its latest
    checkpoint (``latest``; None: none, every commit is read)."""
    since = version - (-1 if latest is None else latest)
    return since * COMMIT_GETS > (CHECKPOINT_GETS if latest is None else 0)


def checkpoint_current(storage: Storage, table: str, dt: DeltaTable) -> bool:
    """Write a checkpoint at ``dt``'s version when :func:`worth_a_checkpoint`; True when written.
    A failure is logged, never raised: the load it follows is done."""
    try:
        if not worth_a_checkpoint(latest_checkpoint(storage, table), dt.version()):
            return False
        dt.create_checkpoint()
    except Exception as exc:  # the table stays as readable as before: only slower to open
        log.warning("%s: no checkpoint written at version %d (%s)", table, dt.version(), exc)
        return False
    log.info("%s: checkpoint written at version %d", table, dt.version())
    return True
