"""``bronze status``: freshness against each cadence's window, failed loads, exit codes, ``--json``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from bronze_assets.cli import main
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.demo.seed import seed_source
from bronze_assets.lib.monitoring.status import FRESH, NEVER, STALE, bronze_status
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import AS_OF, query

pytestmark = pytest.mark.integration


def test_status_reports_fresh_stale_failed_and_never_loaded(fresh_dsn: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    seed_source(fresh_dsn, SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))
    b = Bronze(fresh_dsn, tmp_path / "bronze")
    instance = dg.DagsterInstance.ephemeral()
    for table in ("products", "warehouses", "customers"):
        assert dg.materialize([b.assets[f"bz_{table}"]], resources=b.resources, instance=instance).success
    query(fresh_dsn, "ALTER TABLE tests.customers RENAME COLUMN email TO email_address")
    failed = dg.materialize([b.assets["bz_customers"]], resources=b.resources, instance=instance,
                            raise_on_error=False)
    assert not failed.success

    now = datetime.now(UTC)
    rows = {s.table: s for s in bronze_status(str(b.root), now=now, instance=instance)}
    assert rows["bz_products"].freshness == FRESH and rows["bz_products"].healthy
    assert rows["bz_products"].rows == rows["bz_products"].active == 100
    assert rows["bz_products"].delta_version == 0 and rows["bz_products"].files >= 1
    assert rows["bz_products"].checks["quality_score"] == "passed"
    assert rows["bz_customers"].last_load_failed and "email" in (rows["bz_customers"].last_error or "")
    assert rows["bz_customers"].checks["schema_contract"] == "failed"
    assert "schema_contract" in (rows["bz_customers"].failing_check or "")
    assert rows["bz_orders"].freshness == NEVER and not rows["bz_orders"].healthy
    assert rows["bz_warehouses"].checks == {"schema_contract": "passed", "quality_score": "passed",
                                            "key_uniqueness": "passed"}
    later = {s.table: s for s in bronze_status(str(b.root), now=now + timedelta(hours=27))}
    assert later["bz_products"].freshness == STALE, "a daily table is stale after 26 h"
    assert later["bz_warehouses"].freshness == FRESH, "a monthly table is not"
    assert next(iter(later)) != "bz_warehouses", "problems are listed first"

    monkeypatch.setenv("BRONZE_ROOT", str(b.root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance"))
    (tmp_path / "no_instance").mkdir()
    result = CliRunner().invoke(main, ["status", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["healthy"] is False
    assert {t["table"] for t in report["tables"] if t["healthy"]} == {"bz_products", "bz_warehouses"}
    text = CliRunner().invoke(main, ["status"])
    assert text.exit_code == 1 and "bz_customers: last load failed" in text.output
    assert "bz_orders: never loaded" in text.output
