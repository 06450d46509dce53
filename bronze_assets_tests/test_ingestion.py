"""Bronze MERGE semantics (§2.3), record_hash (§2.2) and partition layout (§2.4), end to end."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from deltalake.table import TableMerger

from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.partitions import partitions_def
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.demo.run import materialize_all
from bronze_assets.lib.delta import merge_plan, merger
from bronze_assets.lib.delta.key_ranges import key_range_sql, key_ranges
from bronze_assets.lib.delta.merge_result import DuplicateKeyError
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.lib.source import extract
from bronze_assets_tests.bronze_helpers import (
    Bronze,
    active_hashes,
    assert_table_exact,
    at_once,
    source_hashes,
)
from bronze_assets_tests.conftest import AS_OF, SeedDb, query, sessions_opened

pytestmark = pytest.mark.integration


@pytest.fixture
def bronze(seed_db: SeedDb, tmp_path: Path) -> Bronze:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    return Bronze(fresh_dsn, tmp_path / "bronze")


@pytest.fixture
def clean_bronze(seed_db: SeedDb, tmp_path: Path) -> Bronze:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))
    return Bronze(fresh_dsn, tmp_path / "bronze")


def test_every_table_loads_with_the_spec_hash_and_no_duplicates(bronze: Bronze) -> None:
    for name in CONTRACTS:
        assert bronze.load_direct(name).inserted > 0
    for name, contract in CONTRACTS.items():
        frame = bronze.read(name)
        pk = contract.primary_key[0]
        assert frame[pk].n_unique() == frame.height, f"{name}: duplicate keys"
        assert active_hashes(frame, pk) == source_hashes(bronze.dsn, name), name
        assert set(frame["source_system"].unique()) == {"PostgreSQL_DE"}
        assert frame["data_quality_score"].min() >= 0 and frame["data_quality_score"].max() <= 100
        assert (frame["load_timestamp"] == frame["update_timestamp"]).all()
        assert frame["batch_id"].n_unique() == 1
        part = contract.partitioning.delta_column
        if part:
            assert DeltaTable(bronze.uri(name)).metadata().partition_columns == [part]
            assert frame[part].null_count() == 0
    # second load of everything: nothing changes, no new Delta version anywhere
    versions = {name: bronze.version(name) for name in CONTRACTS}
    again = {name: bronze.load_direct(name) for name in CONTRACTS}
    assert {name: bronze.version(name) for name in CONTRACTS} == versions
    assert all(not r.committed and r.unchanged == r.rows_read for r in again.values())


def test_single_run_backfill_of_a_daily_range_through_dagster(bronze: Bronze,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", "2026-10-20")
    b = Bronze(bronze.dsn, bronze.root)  # the partitions follow the start date
    first, last = "2026-10-20", "2026-10-25"
    result = dg.materialize(
        [b.assets["bz_stock_levels"]], resources=b.resources,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
    )
    assert result.success
    keys = {e.partition for e in result.get_asset_materialization_events()}
    assert keys == {f"2026-10-{d}" for d in range(20, 26)}
    frame = b.read("stock_levels")
    where = "updated_at < TIMESTAMPTZ '2026-10-26'"  # the range holds the initial snapshot
    assert active_hashes(frame, "stock_level_id") == source_hashes(b.dsn, "stock_levels", where)
    assert frame["load_date"].min() == date(2026, 10, 20) and frame["load_date"].max() <= date(2026, 10, 25)
    assert frame.filter(pl.col("load_date") > date(2026, 10, 20)).height > 0


def test_demo_materialize_all_covers_every_asset(bronze: Bronze, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_PARTITIONS_START", "2026-10-01")  # keep the range run short
    monkeypatch.setenv("BRONZE_START_DATE", "2026-11-01")  # independent of today's date
    narrow = Bronze(bronze.dsn, bronze.root)
    now = datetime(2026, 11, 2, tzinfo=UTC)
    instance = dg.DagsterInstance.ephemeral()  # `bronze demo` without $DAGSTER_HOME: ranges in batches
    metadata = materialize_all(narrow.definitions(), narrow.dsn, instance, now=now)
    assert set(metadata) == {c.bronze_table for c in CONTRACTS.values()}
    assert all(m["rows_read"] > 0 for m in metadata.values())
    for contract in CONTRACTS.values():  # every partition of each range recorded, with the load's metadata
        key, parts = dg.AssetKey(contract.bronze_table), partitions_def(contract)
        if parts is not None:
            assert instance.get_materialized_partitions(key) == set(parts.get_partition_keys(now))
        latest = instance.get_latest_materialization_event(key)
        assert latest is not None and latest.asset_materialization is not None
        shown = latest.asset_materialization.metadata["rows_read"].value
        assert shown == metadata[contract.bronze_table]["rows_read"]


@pytest.fixture(params=["whole", "buckets"])
def plan_buckets(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the plan of the whole table, and with a plan in many small key buckets
    (what a table of millions of rows gets) — the MERGE must do the same either way."""
    if request.param == "buckets":
        monkeypatch.setattr(merge_plan, "PLAN_BUCKET_ROWS", 16)
    return request.param


def test_full_load_insert_update_unchanged_delete_reappear(bronze: Bronze, plan_buckets: str) -> None:
    first = bronze.materialize("products")
    assert first["rows_inserted"] == 100 and first["delta_version"] == 0
    before = bronze.read("products").sort("product_id")

    unchanged = bronze.materialize("products")
    assert unchanged["committed"] is False and unchanged["rows_unchanged"] == 100
    assert bronze.version("products") == 0
    assert bronze.read("products").sort("product_id").equals(before)

    query(bronze.dsn, "UPDATE tests.products SET unit_price = unit_price + 1, updated_at = now() "
                      "WHERE product_id = 5")
    query(bronze.dsn, "INSERT INTO tests.products VALUES (100001, 'New Drill', 'Tools', 9.99, "
                      "'TLS-100001', now())")
    query(bronze.dsn, "DELETE FROM tests.products WHERE product_id = 7")
    meta = bronze.materialize("products")
    assert (meta["rows_inserted"], meta["rows_updated"], meta["rows_soft_deleted"]) == (1, 1, 1)
    assert meta["rows_read"] == 100 and meta["rows_unchanged"] == 98 and meta["delta_version"] == 1
    after = bronze.read("products")
    assert after.height == 101, "soft delete keeps the row"
    row = {r["product_id"]: r for r in after.to_dicts()}
    old = {r["product_id"]: r for r in before.to_dicts()}
    assert row[5]["record_hash"] == source_hashes(bronze.dsn, "products", "product_id = 5")[5]
    assert row[5]["record_hash"] != old[5]["record_hash"]
    assert row[5]["load_timestamp"] == old[5]["load_timestamp"]
    assert row[5]["update_timestamp"] > old[5]["update_timestamp"]
    assert row[5]["batch_id"] != old[5]["batch_id"] and row[5]["record_status"] == "ACTIVE"
    assert row[100001]["record_status"] == "ACTIVE"
    assert row[100001]["load_timestamp"] == row[100001]["update_timestamp"]
    assert row[7]["record_status"] == "DELETED" and row[7]["update_timestamp"] > old[7]["update_timestamp"]
    assert row[7]["product_name"] == old[7]["product_name"], "a soft delete keeps the last values"
    for key in set(old) - {5, 7}:
        assert row[key] == old[key], f"untouched row {key} changed"

    query(bronze.dsn, "INSERT INTO tests.products SELECT * FROM (VALUES "
                      f"({old[7]['product_id']}, 'Back Again', 'Tools', 1.00, 'TLS-000007', now())) v")
    back = bronze.materialize("products")
    assert back["rows_updated"] == 1
    row7 = bronze.read("products").filter(pl.col("product_id") == 7).to_dicts()[0]
    assert row7["record_status"] == "ACTIVE" and row7["product_name"] == "Back Again"
    assert row7["load_timestamp"] == old[7]["load_timestamp"]


def test_forgotten_rows_stay_forgotten(bronze: Bronze, plan_buckets: str) -> None:
    bronze.materialize("customers")
    bronze.table("customers").update(
        updates={"record_status": "'FORGOTTEN'", "customer_name": "NULL", "email": "NULL"},
        predicate="customer_id = 9",
    )
    query(bronze.dsn, "UPDATE tests.customers SET customer_name = 'Changed Name', updated_at = now() "
                      "WHERE customer_id = 9")
    meta = bronze.materialize("customers")
    assert meta["rows_forgotten_skipped"] == 1 and meta["rows_updated"] == 0
    row = bronze.read("customers").filter(pl.col("customer_id") == 9).to_dicts()[0]
    assert row["record_status"] == "FORGOTTEN" and row["customer_name"] is None
    query(bronze.dsn, "DELETE FROM tests.customers WHERE customer_id = 9")
    bronze.materialize("customers")
    row = bronze.read("customers").filter(pl.col("customer_id") == 9).to_dicts()[0]
    assert row["record_status"] == "FORGOTTEN"


def test_daily_partition_update_merges_where_the_key_lives(bronze: Bronze,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", "2026-10-01")
    b = Bronze(bronze.dsn, bronze.root)
    meta0 = b.materialize("inventory", "2026-10-01")  # the initial snapshot: all history
    expected0 = source_hashes(b.dsn, "inventory", "updated_at < TIMESTAMPTZ '2026-10-02'")
    assert meta0["rows_read"] == len(expected0)
    frame0 = b.read("inventory")
    assert set(frame0["inventory_id"]) == set(expected0)
    assert set(frame0["load_date"]) == {date(2026, 10, 1)}

    later = "2026-10-30"
    query(b.dsn, "UPDATE tests.inventory SET quantity_available = 4242, "
                 f"updated_at = TIMESTAMPTZ '{later} 12:00:00+00' WHERE inventory_id = 1")
    query(b.dsn, "DELETE FROM tests.inventory WHERE inventory_id = 2")
    result = dg.materialize([b.assets["bz_inventory"]], resources=b.resources, partition_key=later)
    (own,) = [e for e in result.get_asset_materialization_events() if e.partition == later]
    assert own.materialization.metadata["rows_updated"].value == 1
    others = {e.partition for e in result.get_asset_materialization_events()} - {later}
    assert others == {"2026-10-01"}, "the old partition the update landed in is materialized too"
    frame = b.read("inventory")
    assert frame["inventory_id"].n_unique() == frame.height
    row1 = frame.filter(pl.col("inventory_id") == 1).to_dicts()[0]
    assert row1["quantity_available"] == 4242 and row1["load_date"] == date(2026, 10, 1)
    new_rows = frame.filter(pl.col("load_date") == date.fromisoformat(later))
    assert 1 not in set(new_rows["inventory_id"])
    if 2 in set(frame0["inventory_id"]):
        assert frame.filter(pl.col("inventory_id") == 2)["record_status"].to_list() == ["DELETED"]


def test_monthly_backfill_loads_exactly_those_months(clean_bronze: Bronze) -> None:
    for month in ("2025-03-01", "2025-05-01"):
        meta = clean_bronze.materialize("orders", month)
        assert meta["rows_read"] > 0
    frame = clean_bronze.read("orders")
    expected = source_hashes(
        clean_bronze.dsn, "orders",
        "date_trunc('month', order_date) IN (DATE '2025-03-01', DATE '2025-05-01')",
    )
    assert active_hashes(frame, "order_id") == expected
    assert set(frame["order_month"]) == {date(2025, 3, 1), date(2025, 5, 1)}
    months = frame.select(pl.col("order_date").dt.truncate("1mo").alias("m"), "order_month")
    assert (months["m"] == months["order_month"]).all()


def test_batch_metadata_published(bronze: Bronze) -> None:
    meta = bronze.materialize("warehouses")
    for key in ("table_uri", "rows_read", "rows_inserted", "rows_updated", "rows_unchanged",
                "rows_soft_deleted", "delta_version", "size_bytes", "duration_seconds",
                "avg_quality_score", "batch_id"):
        assert key in meta, key
    assert meta["size_bytes"] > 0 and meta["table_uri"] == bronze.uri("warehouses")


def test_io_manager_loads_bronze_for_downstream_assets_and_rejects_foreign_outputs(bronze: Bronze) -> None:
    @dg.asset(ins={"bz_warehouses": dg.AssetIn(input_manager_key="bronze_io_manager")})
    def warehouse_count(bz_warehouses: pa.Table) -> int:
        return bz_warehouses.num_rows

    result = dg.materialize([bronze.assets["bz_warehouses"], warehouse_count], resources=bronze.resources)
    assert result.output_for_node("warehouse_count") == 1

    @dg.asset(name="not_bronze", io_manager_key="bronze_io_manager")
    def not_bronze() -> int:
        return 1

    failed = dg.materialize([not_bronze], resources=bronze.resources, raise_on_error=False)
    assert not failed.success
    errors = [e for e in failed.all_events if e.is_step_failure]
    assert "StagedBatch outputs only" in str(errors[0].event_specific_data.error)


@pytest.mark.parametrize("parallelism", [1, 3])
def test_parallel_extraction_reads_each_row_once(clean_bronze: Bronze, parallelism: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_EXTRACT_PARALLELISM", str(parallelism))
    monkeypatch.setattr(extract, "MIN_BLOCKS_PER_PART", 1)  # split even a small heap
    query(clean_bronze.dsn, "UPDATE tests.orders SET order_date = NULL WHERE order_id % 50 = 0")
    with extract.SourceReader(clean_bronze.dsn, CONTRACTS["orders"], parallelism=parallelism) as reader:
        assert reader.parallelism == parallelism, "each connection scans its own block range"
        keys = pa.concat_arrays([b.column(0) for b in reader.key_batches()])
    (count,) = query(clean_bronze.dsn, "SELECT count(*) FROM tests.orders")[0]
    assert len(keys) == len(pc.unique(keys)) == count
    meta = clean_bronze.materialize("orders", "2025-03-01")
    frame = clean_bronze.read("orders")
    assert frame["order_id"].n_unique() == frame.height == meta["rows_read"]


def test_named_keys_are_read_on_one_connection(clean_bronze: Bronze, monkeypatch: pytest.MonkeyPatch) -> None:
    """A window of named keys (CDC) is not split into block ranges: each part would look every key
    up again on a connection of its own. Each named key present is read once."""
    from bronze_assets.lib.source.window import LoadWindow

    monkeypatch.setattr(extract, "MIN_BLOCKS_PER_PART", 1)  # a small heap would be split
    keys = [k for (k,) in query(clean_bronze.dsn, "SELECT order_id FROM tests.orders WHERE order_id % 7 = 0")]
    window = LoadWindow(start=datetime(2025, 1, 1, tzinfo=UTC), end=datetime(2025, 4, 1, tzinfo=UTC),
                        first_month=date(2025, 1, 1), newest_end=date(2025, 4, 1), keys=tuple(keys))
    with sessions_opened(clean_bronze.dsn) as opened:
        with extract.SourceReader(clean_bronze.dsn, CONTRACTS["orders"], parallelism=3) as reader:
            assert reader.parallelism == 3  # the table's own reads are split
            read = pa.concat_arrays([b.column("order_id") for b in reader.batches(window)])
        assert opened(1) == 1
    assert sorted(read.to_pylist()) == sorted(keys)


def test_at_most_merge_slots_merges_run_at_once(bronze: Bronze, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three tables' loads on threads of one process: at most ``MERGE_SLOTS`` delta-rs MERGEs
    execute at a time (the first waits here for a second to be in, however slow the loads; then
    each waits until all three are in, or 3 s), the others after; every table then equals its
    source."""
    tables = ("orders", "inventory", "order_details")
    for name in tables:
        bronze.load_direct(name)
        pk = CONTRACTS[name].primary_key[0]
        query(bronze.dsn, f"UPDATE tests.{name} SET updated_at = now() WHERE {pk} % 5 = 0")
    running, entered, most, changed = 0, 0, 0, threading.Condition()
    execute = TableMerger.execute

    def counted(self: TableMerger) -> dict:
        nonlocal running, entered, most
        with changed:
            running += 1
            entered += 1
            most = max(most, running)
            changed.notify_all()
            changed.wait_for(lambda: entered >= merger.MERGE_SLOTS, timeout=60)
            changed.wait_for(lambda: running == len(tables), timeout=3)
        try:
            return execute(self)
        finally:
            with changed:
                running -= 1

    monkeypatch.setattr(TableMerger, "execute", counted)
    at_once(*(lambda name=name: bronze.load_direct(name) for name in tables))
    assert most == merger.MERGE_SLOTS < len(tables)
    for name in tables:
        assert_table_exact(bronze.dsn, bronze.root, name)


def test_a_plan_in_key_buckets_equals_the_plan_of_the_whole_table(bronze: Bronze, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A large table is planned key bucket by key bucket (index spilled once, memory of one
    bucket): the same operations, routes and counts as one plan over the whole table."""
    bronze.load_direct("orders")
    query(bronze.dsn, "UPDATE tests.orders SET total_amount = total_amount + 1, updated_at = now() "
                      "WHERE order_id % 7 = 0")
    query(bronze.dsn, "DELETE FROM tests.orders WHERE order_id % 11 = 0")
    query(bronze.dsn, "INSERT INTO tests.orders SELECT order_id + 100000, customer_id, order_date, status, "
                      "total_amount, now() FROM tests.orders WHERE order_id % 13 = 0")
    contract = CONTRACTS["orders"]
    staged = extract_and_stage(contract, bronze.dsn, bronze.root)
    try:
        merger = BronzeMerger(contract, bronze.root)
        whole, counts = merger.planner.plan(bronze.table("orders"), staged)
        monkeypatch.setattr(merge_plan, "PLAN_BUCKET_ROWS", 23)
        buckets = list(merger.planner.buckets(bronze.table("orders"), staged))
        bucketed, bucket_counts = merger.planner.plan(bronze.table("orders"), staged)
    finally:
        staged.cleanup()
    assert len(buckets) > 10 and all(b is not None for _, _, b in buckets)
    assert sum(index.height for index, _, _ in buckets) == bronze.read("orders").height
    assert sum(src.collect().height for _, src, _ in buckets) == staged.rows
    assert counts.inserted and counts.updated and counts.soft_deleted, "every operation is planned"
    assert bucket_counts.as_dict() == counts.as_dict()
    assert bucketed.sort(contract.primary_key).equals(whole.sort(contract.primary_key))
    assert not list(Path(staged.path).parent.glob("bz_orders-plan-*")), "the spilled index is removed"


def test_a_plan_of_named_keys_takes_them_in_the_tables_key_type(bronze: Bronze, tmp_path: Path) -> None:
    """A load that names its keys (a CDC tick: staged rows and deleted keys, no key sweep) plans
    the same when its staged key column's type differs from the table's: the named keys are cast
    to the table's type before they narrow the target (Polars' ``is_in`` refuses a float64 list
    on an int64 column), as the join after it does."""
    bronze.load_direct("orders")
    query(bronze.dsn, "UPDATE tests.orders SET total_amount = total_amount + 1, updated_at = now() "
                      "WHERE order_id % 7 = 0")
    query(bronze.dsn, "INSERT INTO tests.orders SELECT order_id + 100000, customer_id, order_date, status, "
                      "total_amount, now() FROM tests.orders WHERE order_id % 13 = 0")
    contract = CONTRACTS["orders"]
    pk = list(contract.primary_key)
    staged = extract_and_stage(contract, bronze.dsn, bronze.root)
    try:
        gone = pa.table({pk[0]: pa.array([11, 22, 33], pa.int64())})
        named = replace(staged, keys_are_rows=False, source_keys_path=None, deleted_keys=gone)
        retyped_path = tmp_path / "retyped.arrow"
        rows = pa.ipc.open_file(staged.path).read_all()
        index = rows.schema.get_field_index(pk[0])
        with pa.ipc.new_file(retyped_path, rows.schema.set(index, pa.field(pk[0], pa.float64()))) as out:
            out.write_table(rows.set_column(index, pk[0], rows.column(pk[0]).cast(pa.float64())))
        retyped = replace(named, path=retyped_path, deleted_keys=gone.cast(
            pa.schema([pa.field(pk[0], pa.float64())])))
        planner = BronzeMerger(contract, bronze.root).planner
        expected, counts = planner.plan(bronze.table("orders"), named)
        plan, retyped_counts = planner.plan(bronze.table("orders"), retyped)
    finally:
        staged.cleanup()
    assert counts.inserted and counts.updated and counts.soft_deleted == 3, "every operation is planned"
    assert retyped_counts.as_dict() == counts.as_dict()
    assert plan.sort(pk).equals(expected.sort(pk))


def test_duplicate_keys_are_refused_whatever_bucket_they_fall_in(bronze: Bronze,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bronze.load_direct("products")
    query(bronze.dsn, "ALTER TABLE tests.products DROP CONSTRAINT products_pkey")
    query(bronze.dsn, "INSERT INTO tests.products SELECT * FROM tests.products "
                      "WHERE product_id IN (SELECT min(product_id) FROM tests.products "
                      "UNION SELECT max(product_id) FROM tests.products)")
    monkeypatch.setattr(merge_plan, "PLAN_BUCKET_ROWS", 1)
    version = bronze.version("products")
    with pytest.raises(DuplicateKeyError, match=r"2 row\(s\) more than keys"):
        bronze.load_direct("products")
    assert bronze.version("products") == version, "nothing was merged"


@pytest.mark.parametrize("bucket_rows", [merge_plan.PLAN_BUCKET_ROWS, 7])
def test_a_new_table_with_duplicate_keys_is_refused_whole_or_by_key_bucket(
        bronze: Bronze, monkeypatch: pytest.MonkeyPatch, bucket_rows: int) -> None:
    query(bronze.dsn, "ALTER TABLE tests.products DROP CONSTRAINT products_pkey")
    query(bronze.dsn, "INSERT INTO tests.products SELECT * FROM tests.products "
                      "WHERE product_id IN (SELECT min(product_id) FROM tests.products "
                      "UNION SELECT max(product_id) FROM tests.products)")
    monkeypatch.setattr(merge_plan, "PLAN_BUCKET_ROWS", bucket_rows)  # 7: the keys spilled by bucket
    with pytest.raises(DuplicateKeyError, match=r"^bz_products: .*\(product_id\): 2 row\(s\) more than keys"):
        bronze.load_direct("products")
    assert not (Path(bronze.uri("products")) / "_delta_log").exists(), \
        "nothing was created"


def test_key_ranges_split_at_the_widest_gaps() -> None:
    keys = pl.Series([5, 1, 2, 3, 100, 101, 1000, 2, None])
    assert key_ranges(keys) == [(1, 3), (5, 5), (100, 101), (1000, 1000)]
    assert key_ranges(keys, limit=3) == [(1, 5), (100, 101), (1000, 1000)]
    assert key_ranges(keys, limit=1) == [(1, 1000)]
    assert key_ranges(pl.Series(["b", "a", "c"])) == [("a", "c")]
    assert key_ranges(pl.Series([], dtype=pl.Int64)) == []
    assert key_range_sql("t.k", [(1, 3), (7, 7)]) == "((t.k >= 1 AND t.k <= 3) OR t.k = 7)"
    assert key_range_sql("t.s", [("a", "o'k")]) == "((t.s >= 'a' AND t.s <= 'o''k'))"
