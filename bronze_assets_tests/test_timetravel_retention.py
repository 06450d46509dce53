"""Time travel (history, dry-run, audited restore) and retention (archive + bronze = before)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from bronze_assets.contracts import CONTRACTS
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.delta.control import AUDIT_LOG, read_table
from bronze_assets.lib.delta.retention import apply_retention, business_date_column
from bronze_assets.lib.delta.timetravel import TimeTravelError, history, plan_restore, restore
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

pytestmark = pytest.mark.integration


@pytest.fixture
def bronze(seed_db: SeedDb, tmp_path: Path) -> Bronze:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    return Bronze(fresh_dsn, tmp_path / "bronze")


def _snapshot(frame: pl.DataFrame, pk: str) -> pl.DataFrame:
    return frame.select(pk, "record_hash", "record_status").sort(pk)


def test_restore_returns_the_table_to_the_chosen_version_and_is_audited(bronze: Bronze) -> None:
    contract = CONTRACTS["products"]
    bronze.load_direct("products")
    v0 = _snapshot(bronze.read("products"), "product_id")
    query(bronze.dsn, "UPDATE tests.products SET unit_price = unit_price + 1, updated_at = now() "
                      "WHERE product_id <= 10")
    query(bronze.dsn, "DELETE FROM tests.products WHERE product_id BETWEEN 11 AND 13")
    bronze.load_direct("products")
    assert [h["version"] for h in history(bronze.root, contract.bronze_table)] == [1, 0]
    assert history(bronze.root, contract.bronze_table)[0]["operation"] == "MERGE"

    plan = plan_restore(bronze.root, contract, version=0)
    assert (plan.current_version, plan.target_version) == (1, 0)
    assert plan.rows_changed == 13 and plan.keys_removed == 0 and plan.keys_restored == 0
    dry = restore(bronze.root, contract, version=0, dry_run=True)
    assert dry == plan and bronze.version("products") == 1, "a dry run changes nothing"
    assert read_table(str(bronze.root), AUDIT_LOG).num_rows == 0

    restore(bronze.root, contract, version=0)
    assert bronze.version("products") == 2
    assert _snapshot(bronze.read("products"), "product_id").equals(v0)
    (audit,) = read_table(str(bronze.root), AUDIT_LOG).to_pylist()
    assert audit["operation_type"] == "RESTORE" and audit["status"] == "SUCCESS"
    assert audit["records_affected"] == 13 and json.loads(audit["details"])["target_version"] == 0


def test_restore_by_timestamp_and_clear_errors(bronze: Bronze) -> None:
    contract, uri = CONTRACTS["warehouses"], bronze.uri("warehouses")
    with pytest.raises(TimeTravelError, match=r"has not been loaded yet.*--select bz_warehouses"):
        history(bronze.root, contract.bronze_table)
    bronze.load_direct("warehouses")
    first_commit = DeltaTable(uri).history()[-1]["timestamp"]
    query(bronze.dsn, "UPDATE tests.warehouses SET capacity = capacity + 1, updated_at = now()")
    bronze.load_direct("warehouses")
    moment = datetime.fromtimestamp(first_commit / 1000 + 0.0005, UTC)
    assert plan_restore(bronze.root, contract, timestamp=moment).target_version == 0
    with pytest.raises(TimeTravelError, match="does not exist"):
        plan_restore(bronze.root, contract, version=7)
    with pytest.raises(TimeTravelError, match="exactly one"):
        plan_restore(bronze.root, contract)


def test_retention_moves_exactly_the_old_rows_and_loses_nothing(bronze: Bronze) -> None:
    root = str(bronze.root)
    for table in ("orders", "returns", "products"):
        bronze.load_direct(table)
    today = date(2026, 11, 1)
    for table, pk in (("orders", "order_id"), ("returns", "return_id")):
        contract = CONTRACTS[table]
        column = business_date_column(contract)
        before = _snapshot(bronze.read(table), pk)
        sql = f"SELECT count(*) FROM tests.{table} WHERE {column} < DATE '2024-11-01'"
        (old,) = query(bronze.dsn, sql)[0]
        assert old > 0
        result = apply_retention(contract, root, years=2, today=today)
        assert result.moved == old and result.cutoff == date(2024, 11, 1)
        kept, archived = bronze.read(table), pl.from_arrow(DeltaTable(result.archive_uri).to_pyarrow_table())
        assert isinstance(archived, pl.DataFrame)
        assert kept.filter(pl.col(column) < date(2024, 11, 1)).height == 0
        assert archived.filter(pl.col(column) >= date(2024, 11, 1)).height == 0
        union = pl.concat([_snapshot(kept, pk), _snapshot(archived, pk)]).sort(pk)
        assert union.equals(before), "archive + bronze = before"
        again = apply_retention(contract, root, years=2, today=today)
        assert again.moved == 0 and DeltaTable(result.archive_uri).to_pyarrow_table().num_rows == old
    products = apply_retention(CONTRACTS["products"], root, years=2, today=today)
    assert products.moved == 0 and products.archive_uri is None, "no business date, nothing moves"
    audits = [a for a in read_table(root, AUDIT_LOG).to_pylist() if a["operation_type"] == "RETENTION"]
    assert sorted(a["records_affected"] for a in audits)[-1] > 0 and len(audits) == 4
