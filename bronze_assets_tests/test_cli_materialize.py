"""The standard Dagster CLI materializes one partition from a shell (ARCHITECTURE §2 'run')."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from bronze_assets.demo.generator import SeedOptions
from bronze_assets_tests.conftest import AS_OF, SeedDb, query
from bronze_assets_tests.webserver import XDIST_GROUP, running_webserver

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def test_dagster_asset_materialize_one_partition(seed_db: SeedDb, tmp_path: Path) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))
    env = os.environ | {
        "BRONZE_SOURCE_DSN": fresh_dsn,
        "BRONZE_ROOT": str(tmp_path / "bronze"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    (tmp_path / "dagster_home").mkdir()
    cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "bronze_assets.definitions",
           "--select", "bz_orders", "--partition", "2025-03-01"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pl.from_arrow(DeltaTable(str(tmp_path / "bronze" / "bz_orders")).to_pyarrow_dataset().to_table())
    (expected,) = query(fresh_dsn, "SELECT count(*) FROM tests.orders WHERE order_date >= DATE '2025-03-01' "
                                   "AND order_date < DATE '2025-04-01'")[0]
    assert frame.height == expected > 0
    assert "RUN_SUCCESS" in done.stderr + done.stdout


@pytest.mark.xdist_group(XDIST_GROUP)
def test_webserver_serves_the_ten_assets(tmp_path: Path) -> None:
    """What `dagster dev -w workspace.yaml` shows: the webserver's GraphQL lists the ten assets."""
    with running_webserver(tmp_path / "home") as web:
        nodes = web.asset_nodes()
    bronze = {n["assetKey"]["path"][0] for n in nodes if n["groupName"] == "bronze"}
    tables = {f"bz_{t}" for t in ("products", "suppliers", "warehouses", "inventory", "orders",
                                  "order_details", "shipments", "returns", "stock_levels", "customers")}
    history = {f"bz_{t}_history" for t in ("products", "suppliers", "warehouses", "customers")}
    assert bronze == tables | history | {"bz_shipment_events"}
    checks = {n["assetKey"]["path"][0]: {c["name"] for c in n["assetChecksOrError"]["checks"]}
              for n in nodes if n["groupName"] == "bronze"}
    assert checks["bz_products"] == {"schema_contract", "quality_score", "key_uniqueness", "reconciliation"}
    assert checks["bz_orders"] == {"schema_contract", "quality_score", "key_uniqueness",
                                   "referential_integrity", "reconciliation"}
