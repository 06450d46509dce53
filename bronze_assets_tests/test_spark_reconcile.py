"""Reconciliation of a Spark-engine table: the bronze side in Spark SQL (``conv``) gives the same
key ranges (or hash positions), bucket counts and checksums, and key rows, as the DataFusion side,
and a reconcile through it finds the same faults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
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
    local, remote = BronzeTable(contract, dt), SparkBronzeTable(contract, dt, spark)
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


def test_spark_bronze_side_matches_datafusion_on_a_uuid_key(fresh_dsn: str, spark: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A table keyed by a uuid, loaded by Spark: the same hash-position buckets, key names and
    other-status rows in Spark SQL as through DataFusion, and the same faults found."""
    from bronze_assets.lib.reconcile import bisect
    from bronze_assets.lib.reconcile.checksum import POSITIONS
    from bronze_assets_tests.test_reconcile_keys import DEVICES, _source, _table

    monkeypatch.setattr(bisect, "BUCKET_ROWS", 16)
    monkeypatch.setattr(bisect, "LEAF_ROWS", 8)
    contract = _table(fresh_dsn, DEVICES, "devices")
    root = tmp_path / "spark"
    SparkLoader(spark, env_storage(root)).load(contract, fresh_dsn)
    uri = str(root / contract.bronze_table)
    DeltaTable(uri).update(updates={"record_status": "'DELETED'"}, predicate="label = 'device 8'")
    dt = DeltaTable(uri)
    local, remote = BronzeTable(contract, dt), SparkBronzeTable(contract, dt, spark)
    # the rows of key_range only size the buckets: both sides take the log's file statistics
    # (every status); the buckets count the ACTIVE rows exactly
    assert remote.key_range() == local.key_range() == (0, POSITIONS - 1, 300)
    for width in (POSITIONS // 16, POSITIONS // 1000, POSITIONS):
        assert remote.buckets(0, POSITIONS - 1, width) == local.buckets(0, POSITIONS - 1, width)
    assert sum(n for n, _ in local.buckets(0, POSITIONS - 1, POSITIONS).values()) == 299
    ranges = [(0, POSITIONS // 8), (POSITIONS // 2, POSITIONS // 2 + POSITIONS // 16)]
    mine = local.rows(ranges).sort("key")
    assert remote.rows(ranges).sort("key").equals(mine) and mine.height > 10
    assert set(mine["key"]) <= set(_source(fresh_dsn, contract))  # named as the source names them
    eight = pl.Series(list(_source(fresh_dsn, contract, "label = 'device 8'")))
    assert remote.others(eight).equals(local.others(eight)) and local.others(eight).height == 1

    query(fresh_dsn, "UPDATE tests.devices SET label = 'renamed' WHERE label = 'device 3'")
    DeltaTable(uri).delete("label = 'device 5'")
    run = reconcile([contract], fresh_dsn, root, bronze_side=lambda c: spark_bronze_side(spark))
    expected = {"differs": list(_source(fresh_dsn, contract, "label = 'renamed'")),
                "missing": sorted([*_source(fresh_dsn, contract, "label IN ('device 5', 'device 8')")])}
    assert run.tables[0].samples() == expected
    assert reconcile([contract], fresh_dsn, root).tables[0].samples() == expected
