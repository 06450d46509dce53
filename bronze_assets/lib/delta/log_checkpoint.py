"""A checkpoint at a table's current version, written by a load that committed nothing.

Opening a Delta table reads its last checkpoint and then every commit since it (deltalake 1.6.6
reads each of those commit files twice); tables checkpoint every ten commits, so an hourly tick
that finds nothing new would read up to nine commits twice on every run until the next load
commits. The first unchanged tick after a commit writes the checkpoint instead: the next ticks
open the table from it (README 'Bronze on S3', requests per tick). A checkpoint holds what the
log already says and is no commit: it never conflicts with a writer."""

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


def checkpoint_current(storage: Storage, table: str, dt: DeltaTable) -> bool:
    """Write a checkpoint at ``dt``'s version unless the table has one there; True when written.
    A failure is logged, never raised: the load it follows is done."""
    try:
        latest = latest_checkpoint(storage, table)
        if latest is not None and latest >= dt.version():
            return False
        dt.create_checkpoint()
    except Exception as exc:  # the table stays as readable as before: only slower to open
        log.warning("%s: no checkpoint written at version %d (%s)", table, dt.version(), exc)
        return False
    log.info("%s: checkpoint written at version %d", table, dt.version())
    return True
