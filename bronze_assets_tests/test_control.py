"""Control tables: every materialization writes audit, lineage and cost rows, failures included."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.delta.control import AUDIT_LOG, COST_TRACKING, LINEAGE, read_table
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

pytestmark = pytest.mark.integration


@pytest.fixture
def bronze(seed_db: SeedDb, tmp_path: Path) -> Bronze:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    return Bronze(fresh_dsn, tmp_path / "bronze")


def _rows(bronze: Bronze, table: str) -> list[dict]:
    return read_table(str(bronze.root), table).to_pylist()


def test_success_writes_audit_lineage_and_cost(bronze: Bronze, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_USER", "etl-bot")
    monkeypatch.setenv("BRONZE_COMPUTE_COST_PER_HOUR", "3.6")
    result = dg.materialize([bronze.assets["bz_products"]], resources=bronze.resources)
    assert result.success
    (products,) = query(bronze.dsn, "SELECT count(*) FROM tests.products")[0]

    (audit,) = _rows(bronze, AUDIT_LOG)
    assert audit["table_name"] == "bz_products" and audit["operation_type"] == "LOAD"
    assert audit["status"] == "SUCCESS" and audit["error_message"] is None
    assert audit["job_id"] == result.run_id and audit["user_id"] == "etl-bot"
    assert audit["records_affected"] == products
    assert audit["start_timestamp"] <= audit["end_timestamp"]
    details = json.loads(audit["details"])
    assert details["inserted"] == products and details["delta_version"] == 0

    (lineage,) = _rows(bronze, LINEAGE)
    assert (lineage["source_table"], lineage["target_table"]) == ("tests.products", "bz_products")
    assert lineage["transformation_type"] == "MERGE_FULL" and lineage["records_processed"] == products
    assert lineage["job_id"] == result.run_id and lineage["processing_duration_seconds"] > 0

    (cost,) = _rows(bronze, COST_TRACKING)
    assert cost["rows_processed"] == products and cost["storage_bytes"] > 0
    assert cost["compute_cost"] == pytest.approx(cost["compute_seconds"] / 1000, rel=0.01)

    again = dg.materialize([bronze.assets["bz_products"]], resources=bronze.resources)
    (second,) = [a for a in _rows(bronze, AUDIT_LOG) if a["job_id"] == again.run_id]
    assert second["status"] == "SUCCESS" and second["records_affected"] == 0, "unchanged re-load"


def test_failed_extraction_leaves_a_failed_audit_row(bronze: Bronze) -> None:
    query(bronze.dsn, "ALTER TABLE tests.warehouses DROP COLUMN capacity")
    result = dg.materialize([bronze.assets["bz_warehouses"]], resources=bronze.resources,
                            raise_on_error=False)
    assert not result.success
    (audit,) = _rows(bronze, AUDIT_LOG)
    assert audit["status"] == "FAILED" and audit["job_id"] == result.run_id
    assert "capacity" in audit["error_message"] and "bz_quarantine" in audit["error_message"]
    assert _rows(bronze, LINEAGE) == [], "a failed load has no lineage"
    assert len(_rows(bronze, COST_TRACKING)) == 1, "the compute it spent is still costed"


def test_failed_merge_leaves_a_failed_audit_row(bronze: Bronze) -> None:
    query(bronze.dsn, "ALTER TABLE tests.customers DROP CONSTRAINT customers_pkey")
    query(bronze.dsn, "INSERT INTO tests.customers SELECT * FROM tests.customers WHERE customer_id = 1")
    result = dg.materialize([bronze.assets["bz_customers"]], resources=bronze.resources,
                            raise_on_error=False)
    assert not result.success
    failed = [a for a in _rows(bronze, AUDIT_LOG) if a["status"] == "FAILED"]
    assert len(failed) == 1 and "repeats primary key values" in failed[0]["error_message"]


def test_schema_evolution_is_audited(bronze: Bronze) -> None:
    query(bronze.dsn, "ALTER TABLE tests.warehouses ADD COLUMN manager text DEFAULT 'kim'")
    assert dg.materialize([bronze.assets["bz_warehouses"]], resources=bronze.resources).success
    evolution = [a for a in _rows(bronze, AUDIT_LOG) if a["operation_type"] == "SCHEMA_EVOLUTION"]
    assert len(evolution) == 1
    assert json.loads(evolution[0]["details"])["added"] == ["manager"]
