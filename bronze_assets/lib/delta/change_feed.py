"""The change data feed of a bronze table (ARCHITECTURE §2.7: on for every bz_* table)."""

from __future__ import annotations

import logging

from deltalake import DeltaTable

log = logging.getLogger(__name__)

CHANGE_FEED = "delta.enableChangeDataFeed"


def change_feed_on(dt: DeltaTable) -> bool:
    """Whether ``dt`` records its change data feed (``delta.enableChangeDataFeed``)."""
    return str(dt.metadata().configuration.get(CHANGE_FEED, "")).lower() == "true"


def enable_change_feed(dt: DeltaTable) -> bool:
    """Turn the change data feed on for a table created without it (§2.7: with its next load that
    writes). delta-rs offers this as a SET TBLPROPERTIES commit of its own (the protocol goes to
    writer version 4); it carries no bronze keys, and every reader of the bronze metadata
    (:func:`~bronze_assets.lib.delta.commit_log.commit_history`) skips a commit without them.
    True when the commit was made."""
    if change_feed_on(dt):
        return False
    dt.alter.set_table_properties({CHANGE_FEED: "true"})
    log.info("%s: change data feed enabled (version %d)", dt.table_uri, dt.version())
    return True
