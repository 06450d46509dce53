"""The table properties bronze sets on its tables: the change data feed (ARCHITECTURE §2.7: on
for every bz_* table), a checkpoint every 10 commits (README 'Deploying', requests per tick), and
deletion vectors on the Spark engine's tables (delta-spark writes them, so a MERGE marks the rows
it replaces instead of copying their files; delta-rs cannot write such a table, see
:func:`~bronze_assets.lib.delta.writers.refuse_deletion_vectors`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from deltalake import DeltaTable

log = logging.getLogger(__name__)

CHANGE_FEED = "delta.enableChangeDataFeed"
# A checkpoint every 10 commits, not delta's 100: opening a table in a new process (each Dagster
# run) reads every commit since its last checkpoint, one request (or two) each on an object store.
CHECKPOINT_PROPERTIES = {"delta.checkpointInterval": "10"}
BRONZE_PROPERTIES = {CHANGE_FEED: "true", **CHECKPOINT_PROPERTIES}
DELETION_VECTORS = "delta.enableDeletionVectors"
# The Spark engine's tables: the feed and deletion vectors (the checkpoint interval is delta-spark's
# own default, 10). Set on the tables it creates through its session defaults
# (lib/spark/session.py), on a table it loads that lacks them with its next MERGE.
SPARK_PROPERTIES = {CHANGE_FEED: "true", DELETION_VECTORS: "true"}


def change_feed_on(dt: DeltaTable) -> bool:
    """Whether ``dt`` records its change data feed (``delta.enableChangeDataFeed``)."""
    return str(dt.metadata().configuration.get(CHANGE_FEED, "")).lower() == "true"


def ensure_properties(dt: DeltaTable, properties: dict[str, str] = BRONZE_PROPERTIES,
                      apply: Callable[[dict[str, str]], None] | None = None) -> bool:
    """Set the ``properties`` a table created without them lacks (§2.7: with its next load that
    writes), in one SET TBLPROPERTIES commit (for the change feed delta-rs moves the protocol to
    writer version 4); it carries no bronze keys, and every reader of the bronze metadata
    (:func:`~bronze_assets.lib.delta.commit_log.commit_history`) skips a commit without them.
    ``apply`` sets them instead of delta-rs (the Spark engine: delta-spark upgrades the protocol
    for deletion vectors itself; delta-rs 1.6.6 would also add the variantType feature).
    True when the commit was made (the caller re-reads the table)."""
    configuration = dt.metadata().configuration
    missing = {k: v for k, v in properties.items() if str(configuration.get(k, "")).lower() != v.lower()}
    if not missing:
        return False
    (apply or dt.alter.set_table_properties)(missing)
    log.info("%s: table properties %s set (version %d)", dt.table_uri, sorted(missing), dt.version())
    return True
