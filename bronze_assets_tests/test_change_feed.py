"""ARCHITECTURE §2.7: every bz_* table records the Delta change data feed, on both engines; the feed
of a run's versions holds exactly the inserts, updates and soft deletes the run reports (a soft
delete is an update of record_status, so an update_preimage/update_postimage pair, never a delete),
whichever engine wrote the table and whichever reads the feed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable

from bronze_assets.contracts import CONTRACTS
from bronze_assets.lib.delta.change_feed import CHANGE_FEED, CHECKPOINT_PROPERTIES, change_feed_on
from bronze_assets.lib.delta.commit_log import (
    BATCH_KEY,
    HASH_VERSION,
    CommitLog,
    commit_history,
)
from bronze_assets.lib.delta.load_commit import commit_without_rows
from bronze_assets_tests.bronze_helpers import Bronze, env_storage
from bronze_assets_tests.conftest import query

pytestmark = pytest.mark.integration

PK = "product_id"
T1 = datetime(2026, 11, 27, 10, tzinfo=UTC)
T2, T3 = T1 + timedelta(hours=1), T1 + timedelta(hours=2)


def _feed(uri: str, start: int, end: int) -> pl.DataFrame:
    """delta-rs: the change data feed of versions start..end (inclusive)."""
    frame = pl.from_arrow(pa.table(DeltaTable(uri).load_cdf(starting_version=start, ending_version=end)))
    assert isinstance(frame, pl.DataFrame)
    return frame.select(PK, "record_status", "_change_type", "_commit_version")


def _spark_feed(spark: Any, uri: str, start: int, end: int) -> pl.DataFrame:
    """delta-spark: the same through ``readChangeFeed``."""
    rows = (spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", start)
            .option("endingVersion", end).load(uri)
            .select(PK, "record_status", "_change_type", "_commit_version").collect())
    return pl.DataFrame([r.asDict() for r in rows],
                        schema={PK: pl.Int64, "record_status": pl.String, "_change_type": pl.String,
                                "_commit_version": pl.Int64})


def _changes(feed: pl.DataFrame) -> dict[str, set[int]]:
    """The feed as the keys inserted, updated (ACTIVE after) and soft-deleted (DELETED after), checking
    that every update is one preimage and one postimage and that nothing is a delete."""
    kind = pl.col("_change_type")
    assert set(feed["_change_type"]) <= {"insert", "update_preimage", "update_postimage"}, feed
    pre, post = feed.filter(kind == "update_preimage"), feed.filter(kind == "update_postimage")
    assert sorted(pre[PK]) == sorted(post[PK]), "every update has one preimage and one postimage"
    inserted = feed.filter(kind == "insert")
    assert inserted[PK].n_unique() == inserted.height and post[PK].n_unique() == post.height
    deleted = post.filter(pl.col("record_status") == "DELETED")
    assert set(pre.filter(pl.col(PK).is_in(deleted[PK].implode()))["record_status"]) <= {"ACTIVE"}
    updated = post.filter(pl.col("record_status") == "ACTIVE")
    return {"inserted": set(inserted[PK]), "updated": set(updated[PK]), "soft_deleted": set(deleted[PK])}


def _counts(changes: dict[str, set[int]]) -> tuple[int, int, int]:
    return len(changes["inserted"]), len(changes["updated"]), len(changes["soft_deleted"])


def _change_source(dsn: str, updated: tuple[int, ...], deleted: int, inserted: int) -> None:
    query(dsn, f"UPDATE tests.products SET unit_price = unit_price + 1, updated_at = now() "
               f"WHERE product_id IN ({', '.join(map(str, updated))})")
    query(dsn, f"DELETE FROM tests.products WHERE product_id = {deleted}")
    query(dsn, f"INSERT INTO tests.products VALUES ({inserted}, 'new', 'x', 1.00, 'ABC-123', now())")


def _turn_feed_off(uri: str) -> None:
    """A table as this change found it: created before the feed was on."""
    DeltaTable(uri).alter.set_table_properties({CHANGE_FEED: "false"})
    assert not change_feed_on(DeltaTable(uri))


def _assert_feed_table(dt: DeltaTable) -> None:
    config = dt.metadata().configuration
    assert change_feed_on(dt)
    assert config.get("delta.columnMapping.mode", "none") == "none", "delta-rs reads no CDF of such tables"


def test_the_feed_of_a_run_is_what_its_merge_reports(seeded: str, tmp_path: Path) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    uri = b.uri("products")
    first = b.materialize("products")
    _assert_feed_table(b.table("products"))
    feed = _feed(uri, 0, first["delta_version"])
    assert set(feed["_change_type"]) == {"insert"}
    assert feed.height == first["rows_inserted"] == first["rows_read"]
    assert set(feed[PK]) == set(b.read("products")[PK]) and feed[PK].n_unique() == feed.height
    assert CHECKPOINT_PROPERTIES.items() <= b.table("products").metadata().configuration.items()

    # an existing table without the feed (nor the checkpoint interval) gets both with its next
    # load that writes, in one commit before the MERGE
    DeltaTable(uri).alter.set_table_properties({"delta.checkpointInterval": "100"})
    _turn_feed_off(uri)
    before = b.version("products")
    _change_source(seeded, (1, 2), deleted=3, inserted=990001)
    second = b.materialize("products")
    _assert_feed_table(b.table("products"))
    assert CHECKPOINT_PROPERTIES.items() <= b.table("products").metadata().configuration.items()
    assert second["delta_version"] == before + 2, "one property commit, then the MERGE"
    changes = _changes(_feed(uri, before + 1, second["delta_version"]))
    assert changes == {"inserted": {990001}, "updated": {1, 2}, "soft_deleted": {3}}
    assert _counts(changes) == (second["rows_inserted"], second["rows_updated"], second["rows_soft_deleted"])
    # the engine counts a soft delete as an update: its postimages are every update it made
    assert second["merge_rows_updated"] == len(changes["updated"] | changes["soft_deleted"])
    assert second["merge_rows_inserted"] == len(changes["inserted"])

    # the property commit carries no bronze keys and hides none of the load's
    dt = b.table("products")
    latest, prop = commit_history(dt, 2)
    assert prop["operation"] == "SET TBLPROPERTIES" and not any(k.startswith("bronze.") for k in prop)
    assert latest[BATCH_KEY] == second["batch_id"] and latest["version"] == second["delta_version"]
    commits = CommitLog.read(dt)
    assert second["batch_id"] in commits.committed_batch_ids() and commits.interrupted_batch() is None
    watermark = second.get("watermark")  # none for a whole-table load such as this one
    assert commits.watermark() == (datetime.fromisoformat(watermark) if watermark else None)
    assert commits.hash_version() == HASH_VERSION

    # a load that changes nothing commits nothing; a metadata-only commit adds nothing to the feed
    assert b.materialize("products")["committed"] is False
    commit_without_rows(dt, CommitProperties(custom_metadata={"note": "metadata only"}), None)
    empty = b.version("products")
    assert _feed(uri, empty, empty).height == 0
    query(seeded, "INSERT INTO tests.products VALUES (3, 'back', 'x', 1.00, 'ABC-123', now())")  # returns
    query(seeded, "DELETE FROM tests.products WHERE product_id = 4")
    third = b.materialize("products")
    changes = _changes(_feed(uri, before + 1, third["delta_version"]).filter(
        pl.col("_commit_version") > second["delta_version"]))
    assert changes == {"inserted": set(), "updated": {3}, "soft_deleted": {4}}
    assert _counts(changes) == (third["rows_inserted"], third["rows_updated"], third["rows_soft_deleted"])
    assert b.version("products") == third["delta_version"] == empty + 1, "enabled once: one property commit"


@pytest.mark.xdist_group("spark")  # the worker of the Spark tests: their Spark session (one JVM)
def test_the_feed_across_engines(seeded: str, spark: Any, tmp_path: Path) -> None:
    from bronze_assets.lib.spark.load import SparkLoader

    contract = CONTRACTS["products"]
    spark_root, local = tmp_path / "spark", Bronze(seeded, tmp_path / "local")
    spark_uri, local_uri = str(spark_root / "bz_products"), local.uri("products")
    loader, on_local = SparkLoader(spark, env_storage(spark_root)), SparkLoader(spark, local.storage())

    first = loader.load(contract, seeded, batch_time=T1).merge  # a table Spark creates has the feed
    _assert_feed_table(DeltaTable(spark_uri))
    feed = _feed(spark_uri, 0, first.version or 0)
    assert set(feed["_change_type"]) == {"insert"} and feed.height == first.inserted == first.rows_read
    local.load_direct("products", batch_time=T1)
    _turn_feed_off(local_uri)
    local_before = local.version("products")

    _change_source(seeded, (1, 2), deleted=3, inserted=990001)
    expected = {"inserted": {990001}, "updated": {1, 2}, "soft_deleted": {3}}
    # Spark's MERGE on its own table, read by delta-rs and by Spark
    second = loader.load(contract, seeded, batch_time=T2).merge
    assert (second.inserted, second.updated, second.soft_deleted) == (1, 2, 1)
    assert _changes(_feed(spark_uri, (first.version or 0) + 1, second.version or 0)) == expected
    assert _changes(_spark_feed(spark, spark_uri, (first.version or 0) + 1, second.version or 0)) == expected
    # Spark's MERGE on a delta-rs table created without the feed: it gets it first
    on = on_local.load(contract, seeded, batch_time=T2).merge
    _assert_feed_table(DeltaTable(local_uri))
    assert (on.inserted, on.updated, on.soft_deleted) == (1, 2, 1)
    assert _changes(_feed(local_uri, local_before + 1, on.version or 0)) == expected
    assert _changes(_spark_feed(spark, local_uri, local_before + 1, on.version or 0)) == expected

    # delta-rs MERGEs on both tables (one Spark created), read by Spark; Spark's MERGEs wrote
    # deletion vectors, which the local engine refuses to write over until they are purged on Spark
    for uri in (spark_uri, local_uri):
        spark.sql(f"REORG TABLE delta.`{uri}` APPLY (PURGE)")
    query(seeded, "UPDATE tests.products SET product_name = 'renamed', updated_at = now() "
                  "WHERE product_id = 5")
    query(seeded, "DELETE FROM tests.products WHERE product_id = 6")
    expected = {"inserted": set(), "updated": {5}, "soft_deleted": {6}}
    for uri, root in ((spark_uri, spark_root), (local_uri, local.root)):
        start = DeltaTable(uri).version() + 1
        third = Bronze(seeded, root).load_direct("products", batch_time=T3)
        assert (third.inserted, third.updated, third.soft_deleted) == (0, 1, 1)
        assert _changes(_spark_feed(spark, uri, start, third.version or 0)) == expected
        assert _changes(_feed(uri, start, third.version or 0)) == expected
