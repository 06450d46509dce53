"""Reconciliation of a Spark-engine table: the bronze side in Spark SQL (``conv``) gives the same
key ranges, bucket counts and checksums, and key rows, as the DataFusion side, and a reconcile
through it finds the same faults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from bronze_assets.contracts import CONTRACTS
from bronze_assets.lib.reconcile import reconcile
from bronze_assets.lib.reconcile.bronze_side import BronzeTable
from bronze_assets.lib.spark.load import SparkLoader
from bronze_assets.lib.spark.reconcile import SparkBronzeTable, spark_bronze_side
from bronze_assets_tests.bronze_helpers import env_storage
from bronze_assets_tests.conftest import query

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("spark")]


def test_spark_bronze_side_matches_datafusion_and_finds_the_same_faults(seeded: str, spark: Any,
                                                                       tmp_path: Path) -> None:
    root = tmp_path / "spark"
    contract = CONTRACTS["orders"]
    SparkLoader(spark, env_storage(root)).load(contract, seeded)
    dt = DeltaTable(str(root / contract.bronze_table))
    local, remote = BronzeTable(contract, dt), SparkBronzeTable(contract, dt.table_uri, spark)
    lo, hi, rows = local.key_range()
    assert remote.key_range() == (lo, hi, rows) and rows > 0
    assert lo is not None and hi is not None
    for width in (1, 7, hi - lo + 1):
        assert remote.buckets(lo, hi, width) == local.buckets(lo, hi, width)
    assert remote.rows([(lo, lo + 20)]).sort("key").equals(local.rows([(lo, lo + 20)]).sort("key"))

    assert reconcile([contract], seeded, root, bronze_side=lambda c: spark_bronze_side(spark)).healthy
    query(seeded, "UPDATE tests.orders SET status = 'SHIPPED?' WHERE order_id = 3")
    DeltaTable(str(root / contract.bronze_table)).delete("order_id = 5")
    run = reconcile([contract], seeded, root, bronze_side=lambda c: spark_bronze_side(spark))
    assert run.tables[0].samples() == {"differs": [3], "missing": [5]}
    assert run.tables[0].samples() == reconcile([contract], seeded, root).tables[0].samples()
