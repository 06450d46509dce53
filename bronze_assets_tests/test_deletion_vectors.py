"""Deletion vectors (issue #26 item 4): the Spark engine's tables get them and a tick marks the rows
it replaces instead of copying their files; every read bronze makes of a table works on one; the
local engine refuses to write one, in one line naming the table and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS, Contract
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.delta.maintenance import maintain_table
from bronze_assets.lib.delta.query import read_snapshot, table_rows
from bronze_assets.lib.delta.writers import DeletionVectorsError, files_with_deletion_vectors
from bronze_assets.lib.failures import classify
from bronze_assets.lib.load.engine import LocalEngine
from bronze_assets.lib.load.lifecycle import Lifecycle, LoadReport, LoadRequest
from bronze_assets.lib.quality.checks import KEY_UNIQUENESS, QUALITY_SCORE, REFERENTIAL_INTEGRITY
from bronze_assets.lib.spark.engine import SparkEngine
from bronze_assets.lib.spark.load import SparkLoader
from bronze_assets_tests.bronze_helpers import active_hashes, env_storage, source_hashes
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("spark")]

CHECKS = frozenset({KEY_UNIQUENESS, REFERENTIAL_INTEGRITY, QUALITY_SCORE})


@pytest.fixture
def seeded(seed_db: SeedDb) -> str:
    return seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))


def _log_has_deletion_vectors(uri: str, version: int) -> bool:
    lines = (Path(uri) / "_delta_log" / f"{version:020d}.json").read_text().splitlines()
    return any((json.loads(line).get("add") or {}).get("deletionVector") for line in lines)


def _frame(uri: str) -> pl.DataFrame:
    frame = pl.from_arrow(read_snapshot(DeltaTable(uri)))
    assert isinstance(frame, pl.DataFrame)
    return frame


def test_a_spark_tick_writes_deletion_vectors_and_every_read_works(
        seeded: str, spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "bronze"
    monkeypatch.setenv("BRONZE_ROOT", str(root))
    monkeypatch.setenv("BRONZE_SOURCE_DSN", seeded)
    monkeypatch.setenv("BRONZE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    storage = env_storage(root)
    engine = SparkEngine(SparkLoader(spark, storage), data_docs=False)
    orders, customers = CONTRACTS["orders"], CONTRACTS["customers"]

    def load(contract: Contract) -> LoadReport:
        return Lifecycle(LoadRequest(contract, None, checks=CHECKS), engine, seeded, storage).run()

    for contract in (customers, orders):
        load(contract)
    uri = storage.uri("bz_orders")
    created = DeltaTable(uri)
    assert created.metadata().configuration["delta.enableDeletionVectors"] == "true"
    assert "deletionVectors" in (created.protocol().reader_features or [])

    query(seeded, "UPDATE tests.customers SET email = 'new-' || email, updated_at = now() "
                  "WHERE customer_id % 7 = 0")
    query(seeded, "UPDATE tests.orders SET status = 'CANCELLED', updated_at = now() WHERE order_id % 11 = 0")
    query(seeded, "DELETE FROM tests.orders WHERE order_id % 17 = 0")
    load(customers)
    tick = load(orders)
    meta, changed = tick.metadata, tick.outcome.result.rows_changed
    merged = DeltaTable(uri).version()
    assert _log_has_deletion_vectors(uri, merged), "the MERGE marks rows with deletion vectors"
    assert meta["merge_deletion_vectors_added"] > 0 and files_with_deletion_vectors(DeltaTable(uri)) > 0
    assert changed == meta["rows_updated"] + meta["rows_soft_deleted"] > 0
    assert meta["merge_rows_copied"] <= 19 * changed and meta["rewrite_ratio"] <= 20, meta
    assert all(c.passed for c in tick.checks) and {c.name for c in tick.checks} == CHECKS, tick.checks

    # every read of the table: DataFusion, with the vectors applied
    frame = _frame(uri)
    assert frame["order_id"].n_unique() == frame.height
    assert active_hashes(frame, "order_id") == source_hashes(seeded, "orders")
    deleted = frame.filter(pl.col("record_status") == "DELETED").height
    cli = CliRunner()
    status = cli.invoke(main, ["status", "--json"])
    (row,) = [t for t in json.loads(status.stdout)["tables"] if t["table"] == "bz_orders"]
    assert (row["rows"], row["deleted"], row["delta_version"]) == (frame.height, deleted, merged), row
    reconciled = cli.invoke(main, ["reconcile", "orders", "customers", "--json"])
    assert reconciled.exit_code == 0, reconciled.output
    read = cli.invoke(main, ["read", "customers", "--role", "analyst", "--limit", "0", "--format", "json"])
    assert read.exit_code == 0, read.output
    rows = [json.loads(line) for line in read.stdout.splitlines()]
    assert len(rows) == _frame(storage.uri("bz_customers")).height
    assert rows and all(r["email"] is None or "***@" in r["email"] for r in rows), rows[:2]
    history = cli.invoke(main, ["history", "bz_orders"])
    assert history.exit_code == 0 and "MERGE" in history.stdout, history.output
    dry = cli.invoke(main, ["restore", "bz_orders", "--version", "0", "--dry-run"])
    assert dry.exit_code == 0 and f"{changed:,} rows changed" in dry.stdout, dry.output
    feed = pa.table(DeltaTable(uri).load_cdf(starting_version=merged, ending_version=merged).read_all())
    kinds = pl.from_arrow(feed.select(["_change_type"]))["_change_type"].cast(pl.String).value_counts()
    assert dict(kinds.iter_rows()).get("update_postimage") == changed, kinds

    # the local engine refuses every write, in one line, and leaves the table as it was
    with pytest.raises(DeletionVectorsError) as refused:
        Lifecycle(LoadRequest(orders, None), LocalEngine(storage), seeded, storage).run()
    message = classify(refused.value, "bz_orders").message
    assert message.startswith("bz_orders: refusing the local engine's load") and "\n" not in message
    assert "BRONZE_ENGINE_TABLES=bz_orders=spark" in message and "APPLY (PURGE)" in message
    with pytest.raises(DeletionVectorsError, match=r"^bz_orders: .*OPTIMIZE and VACUUM on Spark"):
        maintain_table(storage, "bz_orders", orders)
    restore = cli.invoke(main, ["restore", "bz_orders", "--version", "0"])
    assert restore.exit_code == 1 and len(restore.stderr.splitlines()) == 1 \
        and restore.stderr.startswith("error: bz_orders: refusing the local engine's restore"), restore.output
    assert DeltaTable(uri).version() == merged
    # but an erasure does not wait: delta-rs' UPDATE applies the vectors of the file it rewrites
    people = storage.uri("bz_customers")
    assert files_with_deletion_vectors(DeltaTable(people)) > 0
    known = _frame(people).height
    forget = cli.invoke(main, ["forget", "--customer-id", "7"])
    assert forget.exit_code == 0, forget.output
    after = _frame(people)
    assert after.height == after["customer_id"].n_unique() == known
    assert after.filter(pl.col("customer_id") == 7)["record_status"].to_list() == ["FORGOTTEN"]

    # the fix the message names: purged on Spark, the table loads locally again
    spark.sql(f"REORG TABLE delta.`{uri}` APPLY (PURGE)")
    assert files_with_deletion_vectors(DeltaTable(uri)) == 0
    query(seeded, "UPDATE tests.orders SET total_amount = 1.23, updated_at = now() WHERE order_id % 10 = 1")
    local = Lifecycle(LoadRequest(orders, None), LocalEngine(storage), seeded, storage).run()
    assert local.outcome.result.updated > 0
    assert active_hashes(_frame(uri), "order_id") == source_hashes(seeded, "orders")


def test_table_rows_counts_the_live_rows_of_a_table_with_deletion_vectors(spark, tmp_path: Path) -> None:
    """``table_rows`` (the row count from the log, used to order and size work) leaves out the
    rows a deletion vector removed."""
    uri = str(tmp_path / "t")
    spark.range(0, 1000).repartition(2).write.format("delta") \
        .option("delta.enableDeletionVectors", "true").save(uri)
    spark.sql(f"DELETE FROM delta.`{uri}` WHERE id % 10 = 0")
    dt = DeltaTable(uri)
    assert files_with_deletion_vectors(dt) == 2, "each file keeps its rows and gets a vector"
    assert table_rows(dt) == read_snapshot(dt).num_rows == 900
