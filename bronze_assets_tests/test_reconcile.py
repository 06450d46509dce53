"""Reconciliation (ARCHITECTURE §2.8) against a real PostgreSQL and real Delta tables: planted
faults are found and repaired, concurrent source writes are pending (never faults), never-loaded
and dropped tables are named, FORGOTTEN rows are skipped by --deep."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable, write_deltalake

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.checks import build_reconciliation_check
from bronze_assets.lib.delta.control import AUDIT_LOG, RECONCILIATION, read_table
from bronze_assets.lib.governance.erasure import forget_subject
from bronze_assets.lib.reconcile import reconcile, source_side
from bronze_assets.lib.reconcile.bronze_side import BronzeTable
from bronze_assets.lib.reconcile.source_side import SourceSnapshot
from bronze_assets.settings import ENV_SOURCE_DSN
from bronze_assets_tests.bronze_helpers import Bronze, assert_table_exact
from bronze_assets_tests.conftest import query


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["reconcile", *args])
    return result.exit_code, result.output


def _tables(output: str) -> dict[str, dict]:
    return {t["table"]: t for t in json.loads(output)["tables"]}


@pytest.fixture
def bronze(seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bronze:
    monkeypatch.setenv(ENV_SOURCE_DSN, seeded)
    return Bronze(seeded, tmp_path / "bronze")  # $BRONZE_ROOT (conftest)


def test_planted_faults_are_found_and_repair_fixes_them(bronze: Bronze) -> None:
    for table in ("products", "orders", "customers"):
        bronze.load_direct(table)
    assert _cli("bz_products", "bz_orders", "bz_customers")[0] == 0
    # the four faults: a row changed in the source without touching updated_at, a bronze column
    # altered by hand, a row deleted from bronze by hand, an ACTIVE key the source never had
    query(bronze.dsn, "UPDATE tests.products SET product_name = 'renamed quietly' WHERE product_id = 3")
    DeltaTable(bronze.uri("products")).update(updates={"sku": "'TAMPERED-000'"}, predicate="product_id = 4")
    DeltaTable(bronze.uri("orders")).delete("order_id = 11")
    orders = DeltaTable(bronze.uri("orders"))
    row = orders.to_pyarrow_table(filters=[("order_id", "=", 12)])
    key = row.schema.get_field_index("order_id")
    extra = row.set_column(key, "order_id", pa.array([999_999], pa.int64()))
    write_deltalake(bronze.uri("orders"), extra.cast(row.schema), mode="append")

    code, out = _cli("bz_products", "bz_orders", "bz_customers", "--json")
    assert code == 1
    doc = json.loads(out)
    assert set(doc) >= {"run_id", "started", "deep", "healthy", "tables"} and doc["healthy"] is False
    found = _tables(out)
    assert set(found["bz_products"]) >= {"state", "source_rows", "bronze_active_rows", "buckets",
                                         "buckets_differing", "counts", "sample_keys", "pending_since",
                                         "problem", "action", "repair"}
    assert found["bz_products"]["sample_keys"] == {"differs": [3]}  # the altered sku hashes alike
    assert found["bz_orders"]["sample_keys"] == {"missing": [11], "extra": [999_999]}
    assert found["bz_orders"]["state"] == "faults" and found["bz_customers"]["state"] == "ok"
    assert found["bz_products"]["buckets_differing"] == 1  # only the bucket of key 3 was read key by key

    code, out = _cli("bz_products", "--deep", "--json")
    assert code == 1
    assert _tables(out)["bz_products"]["sample_keys"] == {"differs": [3], "altered": [4]}
    assert _tables(out)["bz_products"]["deep_rows"] == 100

    code, out = _cli("bz_products", "bz_orders", "bz_customers", "--deep", "--repair", "--json")
    assert code == 0, out
    repaired = _tables(out)
    # the planted extra row carries order 12's hash: its columns do not hash to it either
    assert repaired["bz_orders"]["repair"]["found"] == {"extra": 1, "missing": 1, "differs": 0, "altered": 1,
                                                        "pending": 0}
    assert repaired["bz_orders"]["repair"]["soft_deleted"] == 1
    assert repaired["bz_orders"]["repair"]["inserted"] + repaired["bz_orders"]["repair"]["updated"] == 1
    assert repaired["bz_products"]["repair"]["updated"] == 2
    assert all(t["healthy"] for t in repaired.values())
    assert _cli("--deep")[0] == 1  # the tables never loaded still fail the whole run …
    assert _cli("bz_products", "bz_orders", "bz_customers", "--deep")[0] == 0  # … these three are equal
    for table in ("products", "orders"):
        assert_table_exact(bronze.dsn, bronze.root, table)
    products = pl.from_arrow(DeltaTable(bronze.uri("products")).to_pyarrow_table())
    assert products.filter(pl.col("product_id") == 4)["sku"][0] != "TAMPERED-000"

    ledger = pl.from_arrow(read_table(bronze.root, RECONCILIATION))
    repair_run = ledger.filter(pl.col("repaired_at").is_not_null())
    assert sorted(zip(repair_run["table_name"], repair_run["key"], repair_run["kind"], strict=True)) == [
        ("bz_orders", "11", "missing"), ("bz_orders", "999999", "altered"), ("bz_orders", "999999", "extra"),
        ("bz_products", "3", "differs"), ("bz_products", "4", "altered")]
    audit = pl.from_arrow(read_table(bronze.root, AUDIT_LOG))
    assert audit.filter(pl.col("operation_type") == "RECONCILE_REPAIR").height == 2
    assert audit.filter(pl.col("operation_type") == "RECONCILE").height >= 3


def test_reconcile_prints_a_table_naming_the_faults(bronze: Bronze) -> None:
    bronze.load_direct("products")
    DeltaTable(bronze.uri("products")).delete("product_id = 2")
    code, out = _cli("products")
    assert code == 1
    assert "bz_products" in out and "missing keys 2" in out and "--repair" in out


def test_concurrent_source_writes_are_pending_never_faults(bronze: Bronze) -> None:
    bronze.load_direct("orders")
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            query(bronze.dsn, f"UPDATE tests.orders SET total_amount = total_amount + 1, updated_at = now() "
                              f"WHERE order_id = {1 + n % 400}")
            query(bronze.dsn, f"INSERT INTO tests.orders (order_id, customer_id, order_date, status, "
                              f"total_amount, updated_at) "
                              f"VALUES ({800_000 + n}, 1, DATE '2026-11-30', 'PENDING', 1, now())")
            written[0] = n

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        while written[0] < 3:
            time.sleep(0.05)
        runs = [reconcile([CONTRACTS["orders"]], bronze.dsn, bronze.root) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    for run in runs:
        (table,) = run.tables
        assert table.healthy and not table.faults
        assert table.counts["pending"] > 0
        assert {m.pending_kind for m in table.mismatches} <= {"differs", "missing"}


def test_one_snapshot_for_the_whole_run(bronze: Bronze) -> None:
    """A change committed after the run began (here: between two tables) is not seen by it."""
    bronze.load_direct("orders")
    bronze.load_direct("products")

    def side(contract):  # called as each table starts; the snapshot was taken before the first
        if contract.name == "products":
            query(bronze.dsn, "DELETE FROM tests.products WHERE product_id = 5")
            query(bronze.dsn, "UPDATE tests.products SET product_name = 'late' WHERE product_id = 6")
        return BronzeTable

    run = reconcile([CONTRACTS["orders"], CONTRACTS["products"]], bronze.dsn, bronze.root, bronze_side=side)
    assert run.healthy and not any(t.mismatches for t in run.tables)
    after = reconcile([CONTRACTS["products"]], bronze.dsn, bronze.root)
    assert after.tables[0].samples() == {"differs": [6], "extra": [5]}


def test_a_pass_over_a_whole_table_is_split_into_block_ranges(bronze: Bronze,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The first level's pass over a table runs in heap block ranges on any free connection of the
    run's snapshot: the ranges' bucket sums add up to one pass's, and a run finds the same faults."""
    bronze.load_direct("orders")
    bronze.load_direct("products")
    DeltaTable(bronze.uri("orders")).delete("order_id = 11")
    query(bronze.dsn, "UPDATE tests.orders SET status = 'quietly' WHERE order_id = 40")
    query(bronze.dsn, "UPDATE tests.products SET category = 'quietly' WHERE product_id = 7")
    with SourceSnapshot(bronze.dsn, 2) as snapshot:
        orders = snapshot.table(CONTRACTS["orders"])
        lo, hi, _ = orders.key_range()
        assert orders.blocks >= 3
        monkeypatch.setattr(source_side, "PART_BLOCKS", 1)  # a part per block
        assert orders._parts(lo, hi).parts == orders.blocks and orders._parts(lo + 1, hi).parts == 1
        parts = orders.buckets(lo, hi, 7)
        monkeypatch.setattr(source_side, "PART_BLOCKS", orders.blocks + 1)
        assert orders._parts(lo, hi).parts == 1
        assert parts == orders.buckets(lo, hi, 7)
        (rows,) = snapshot.query("SELECT count(*) FROM tests.orders")[0]
        assert sum(n for n, _ in parts.values()) == rows
    monkeypatch.setattr(source_side, "PART_BLOCKS", 1)
    for parallelism in (1, 2, 3):
        run = reconcile([CONTRACTS["orders"], CONTRACTS["products"]], bronze.dsn, bronze.root,
                        parallelism=parallelism)
        assert [t.samples() for t in run.tables] == [{"missing": [11], "differs": [40]}, {"differs": [7]}]


def test_never_loaded_and_dropped_source_tables_are_named(bronze: Bronze) -> None:
    code, out = _cli("returns")
    assert code == 1
    assert "bz_returns has never been loaded" in out
    assert "dagster asset materialize -m bronze_assets.definitions --select bz_returns" in out

    bronze.load_direct("warehouses")
    query(bronze.dsn, "DROP TABLE tests.warehouses")
    code, out = _cli("warehouses", "--json")
    assert code == 1
    (table,) = json.loads(out)["tables"]
    assert table["state"] == "source table missing" and "tests.warehouses" in table["problem"]

    assert _cli("no_such_table")[0] == 1


def test_deep_skips_forgotten_rows_and_decrypts_the_others(bronze: Bronze) -> None:
    bronze.load_direct("customers")
    forget_subject("customers", 5, storage=bronze.root)
    query(bronze.dsn, "UPDATE tests.customers SET customer_name = 'in the source' WHERE customer_id = 5")
    code, out = _cli("customers", "--deep", "--json")
    assert code == 0, out
    (table,) = json.loads(out)["tables"]
    assert table["forgotten_skipped"] == 1 and table["deep_rows"] == 249
    assert table["counts"] == {"extra": 0, "missing": 0, "differs": 0, "altered": 0, "pending": 0}

    DeltaTable(bronze.uri("customers")).update(
        updates={"updated_at": "CAST('2020-01-01T00:00:00Z' AS TIMESTAMP)"}, predicate="customer_id = 9")
    code, out = _cli("customers", "--deep", "--json")
    assert code == 1
    assert json.loads(out)["tables"][0]["sample_keys"] == {"altered": [9]}


def test_reconciliation_check_warns_with_sample_keys_and_runs_daily(bronze: Bronze) -> None:
    bronze.load_direct("products")
    DeltaTable(bronze.uri("products")).delete("product_id = 7")
    check = build_reconciliation_check(CONTRACTS["products"])
    job = dg.define_asset_job("reconcile_products", selection=dg.AssetSelection.checks(check))
    defs = dg.Definitions(assets=[bronze.assets["bz_products"]], asset_checks=[check],
                          resources=bronze.resources, jobs=[job])
    result = defs.resolve_job_def("reconcile_products").execute_in_process()
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "reconciliation" and not evaluation.passed
    assert evaluation.severity is dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["sample_keys"].value == {"missing": [7]}
    assert evaluation.metadata["missing"].value == 1
    ledger = pl.from_arrow(read_table(bronze.root, RECONCILIATION))
    assert ledger.select("run_id", "key", "kind").rows() == [(result.run_id, "7", "missing")]

    from bronze_assets.definitions import defs as project

    repo = project().get_repository_def()
    schedule = repo.get_schedule_def("bronze_reconciliation_schedule")
    assert schedule.cron_schedule == "0 4 * * *" and schedule.execution_timezone == "UTC"
    job = repo.get_job(schedule.job_name)
    checked = {k.asset_key.to_user_string() for k in job.asset_layer.asset_graph.asset_check_keys
               if k.name == "reconciliation"}
    assert checked == {c.bronze_table for c in CONTRACTS.values()}
    assert not job.asset_layer.selected_asset_keys  # the checks alone: nothing is loaded


def test_deep_does_not_blame_values_bronze_cannot_store(bronze: Bronze) -> None:
    """A NaN price is NULL in bronze (its text in bz_quarantine): the row equals the source, and
    --deep does not call it altered."""
    query(bronze.dsn, "UPDATE tests.products SET unit_price = 'NaN' WHERE product_id = 8")
    bronze.load_direct("products")
    code, out = _cli("products", "--deep", "--json")
    assert code == 0, out
    (table,) = json.loads(out)["tables"]
    assert table["counts"]["altered"] == 0 and "1 rows not judged" in table["deep_note"]
    DeltaTable(bronze.uri("products")).update(updates={"sku": "'TAMPERED-001'"}, predicate="product_id = 9")
    assert _tables(_cli("products", "--deep", "--json")[1])["bz_products"]["sample_keys"] == {"altered": [9]}


def test_a_restored_table_is_replayed_to_the_present_by_repair(bronze: Bronze) -> None:
    """`bronze restore … && bronze reconcile --repair`: the changes since the restored version are
    pending (inserted and updated rows) or extra (deleted keys), and the repair brings them all."""
    bronze.load_direct("suppliers")
    query(bronze.dsn, "UPDATE tests.suppliers SET supplier_name = 'new name', updated_at = now() "
                      "WHERE supplier_id IN (2, 3)")
    query(bronze.dsn, "INSERT INTO tests.suppliers SELECT 9001, 'new supplier', contact_number, email, "
                      "product_id, now() FROM tests.suppliers WHERE supplier_id = 4")
    query(bronze.dsn, "DELETE FROM tests.suppliers WHERE supplier_id = 5")
    bronze.load_direct("suppliers")
    assert _cli("suppliers")[0] == 0
    assert CliRunner().invoke(main, ["restore", "bz_suppliers", "--version", "0"]).exit_code == 0

    code, out = _cli("suppliers", "--json")
    assert code == 1  # the deleted key is ACTIVE again: extra; the rest is pending
    assert _tables(out)["bz_suppliers"]["sample_keys"] == {"pending": [2, 3, 9001], "extra": [5]}
    code, out = _cli("suppliers", "--repair", "--json")
    assert code == 0, out
    assert_table_exact(bronze.dsn, bronze.root, "suppliers")


def test_bronze_key_bounds_come_from_file_statistics_else_from_a_scan(tmp_path: Path) -> None:
    """Bronze's key bounds cost no scan when every file has statistics for the key (any status:
    they only bound the buckets); a file without them sends the bounds to a read of the ACTIVE rows."""
    from bronze_assets.lib.delta.query import key_bounds

    contract = CONTRACTS["products"]
    key = contract.primary_key[0]

    def rows(keys: list[int], status: str) -> pa.Table:
        return pa.table({key: pa.array(keys, pa.int64()), "record_hash": ["0" * 32] * len(keys),
                         "record_status": [status] * len(keys)})

    with_stats, without = str(tmp_path / "with_stats"), str(tmp_path / "without")
    write_deltalake(with_stats, rows([3, 9, 5], "ACTIVE"))
    write_deltalake(with_stats, rows([1, 12], "DELETED"), mode="append")
    assert key_bounds(DeltaTable(with_stats), key) == (1, 12)
    assert BronzeTable(contract, DeltaTable(with_stats)).key_range() == (1, 12, 5)

    no_stats = {"delta.dataSkippingNumIndexedCols": "0"}  # numRecords only
    write_deltalake(without, rows([1, 12], "DELETED"), configuration=no_stats)
    write_deltalake(without, rows([3, 9, 5], "ACTIVE"), mode="append")
    assert key_bounds(DeltaTable(without), key) is None
    assert BronzeTable(contract, DeltaTable(without)).key_range() == (3, 9, 5)
