"""The Spark engine inside Dagster: a bronze asset materialized with ``engine=spark`` runs the
Spark job through ``PipesSubprocessClient`` (real local Spark, real embedded PostgreSQL) and shows
the same metadata and check results as the local engine."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.assets import build_bronze_asset
from bronze_assets.defs.engines import BronzeEngine, Engine, parse_table_engines
from bronze_assets.defs.resources import BronzePipes, BronzeStorage, PostgresSource, build_resources
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE
from bronze_assets.settings import Settings
from bronze_assets_tests.bronze_helpers import Bronze, assert_orders_exact, bronze_frame
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("spark_pipes")]

# differ by nature between two loads (or engines): timing, file layout, ids, the engine's name
PER_RUN = {"batch_id", "table_uri", "extract_seconds", "merge_seconds", "duration_seconds", "size_bytes",
           "num_files", "engine", "merge_files_added", "merge_files_removed"}  # file layout is the engine's
PER_RUN_CHECK = {"data_docs", "failing_keys_sample"}  # a docs page per run; sample keys in read order


@pytest.fixture
def seeded(seed_db: SeedDb) -> str:
    return seed_db(SeedOptions(scale=0.01, defect_rate=0.05, as_of=AS_OF))


def materialize(dsn: str, root: Path, engine: str, table: str, partition: str | None = None,
                pipes: BronzePipes | None = None) -> dg.ExecuteInProcessResult:
    """``table`` loaded on ``engine``; a Spark job through the ``pipes`` given (the ``spark_pipes``
    fixture: on the worker's JVM)."""
    resources = build_resources(PostgresSource(dsn=dsn), BronzeStorage(root=str(root)),
                                BronzeEngine(engine=engine), pipes)
    return dg.materialize([build_bronze_asset(CONTRACTS[table])], resources=resources,
                          partition_key=partition, raise_on_error=False)


def outcome(result: dg.ExecuteInProcessResult) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The materialization's metadata and, per check, what the UI shows of it."""
    (event,) = [e for e in result.get_asset_materialization_events()
                if "rows_read" in e.materialization.metadata]
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    checks = {}
    for e in result.get_asset_check_evaluations():
        checks[e.check_name] = {"passed": e.passed, "severity": e.severity, "description": e.description,
                                "metadata": {k: v.value for k, v in e.metadata.items()}}
    return meta, checks


def bronze_rows(root: Path, table: str) -> pl.DataFrame:
    contract = CONTRACTS[table]
    frame = bronze_frame(root / contract.bronze_table)
    return frame.select(*contract.primary_key, "record_hash", "data_quality_score", "record_status",
                        *([contract.partitioning.delta_column] if contract.partitioning.delta_column else [])
                        ).sort(contract.primary_key)


def test_order_details_through_pipes_shows_what_the_local_engine_shows(seeded: str, tmp_path: Path,
                                                                      spark_pipes: BronzePipes) -> None:
    partition = Settings.from_env().go_live().isoformat()  # the initial snapshot
    local = materialize(seeded, tmp_path / "local", "local", "order_details", partition)
    spark = materialize(seeded, tmp_path / "spark", "spark", "order_details", partition, spark_pipes)
    assert local.success and spark.success
    local_meta, local_checks = outcome(local)
    spark_meta, spark_checks = outcome(spark)

    assert (local_meta["engine"], spark_meta["engine"]) == ("local", "spark")
    assert local_meta.keys() == spark_meta.keys()
    assert {k: v for k, v in local_meta.items() if k not in PER_RUN} == \
        {k: v for k, v in spark_meta.items() if k not in PER_RUN}
    assert local_meta["rows_inserted"] == local_meta["rows_read"] > 1000
    assert spark_meta["merge_rows_written"] == local_meta["merge_rows_written"] == local_meta["rows_read"]
    assert spark_meta["rewrite_ratio"] == local_meta["rewrite_ratio"] == 1.0
    assert spark_meta["merge_files_added"] >= 1 and local_meta["merge_files_added"] >= 1

    assert set(local_checks) == set(spark_checks) == {"schema_contract", "quality_score", "key_uniqueness",
                                                       "referential_integrity"}
    for name, want in local_checks.items():
        got = spark_checks[name]
        assert (got["passed"], got["severity"], got["description"]) == \
            (want["passed"], want["severity"], want["description"]), name
        assert got["metadata"].keys() == want["metadata"].keys(), name
        assert {k: v for k, v in got["metadata"].items() if k not in PER_RUN_CHECK} == \
            {k: v for k, v in want["metadata"].items() if k not in PER_RUN_CHECK}, name
    # the seeded defects are found by both: GX agrees with the score on Spark's staged rows too
    quality = spark_checks["quality_score"]["metadata"]
    assert quality["gx_counts_match_score"] is True
    assert sum(v for k, v in quality.items() if k.startswith("violations")) > 0

    spark_rows = bronze_rows(tmp_path / "spark", "order_details")
    assert spark_rows.equals(bronze_rows(tmp_path / "local", "order_details"))
    audit = pl.from_arrow(DeltaTable(str(tmp_path / "spark" / "bz_audit_log")).to_pyarrow_table())
    assert isinstance(audit, pl.DataFrame)
    (load,) = audit.filter(pl.col("operation_type") == "LOAD").to_dicts()
    assert load["status"] == "SUCCESS" and '"engine": "spark"' in load["details"]


def test_a_schema_mismatch_on_spark_fails_once_and_quarantines(seeded: str, tmp_path: Path,
                                                              spark_pipes: BronzePipes) -> None:
    query(seeded, "ALTER TABLE tests.warehouses DROP COLUMN capacity")
    rows = query(seeded, "SELECT count(*) FROM tests.warehouses")[0][0]
    result = materialize(seeded, tmp_path, "spark", "warehouses", pipes=spark_pipes)
    assert not result.success
    failure = result.failure_data_for_node("load_bz_warehouses")
    assert failure is not None
    assert "bz_warehouses" in str(failure.error) and "capacity" in str(failure.error)
    assert not [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED"]  # no retry
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "schema_contract" and not check.passed
    quarantined = DeltaTable(str(tmp_path / QUARANTINE_TABLE)).to_pyarrow_table()
    assert quarantined.num_rows == rows
    assert not (tmp_path / "bz_warehouses").exists()


def test_engine_per_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_ENGINE", "spark")
    monkeypatch.setenv("BRONZE_ENGINE_TABLES", "bz_orders=databricks, bz_customers=local")
    engine = BronzeEngine(tables={"bz_products": "local"})
    assert engine.engine_for(CONTRACTS["orders"]) is Engine.DATABRICKS
    assert engine.engine_for(CONTRACTS["customers"]) is Engine.LOCAL
    assert engine.engine_for(CONTRACTS["products"]) is Engine.LOCAL
    assert engine.engine_for(CONTRACTS["inventory"]) is Engine.SPARK
    assert BronzeEngine(engine="local").engine_for(CONTRACTS["inventory"]) is Engine.LOCAL
    with pytest.raises(ValueError, match=r"BRONZE_ENGINE_TABLES.*bz_orders"):
        parse_table_engines("bz_orders=flink")
    with pytest.raises(ValueError, match=r"<bz_table>=<engine>"):
        parse_table_engines("bz_orders")


def test_log_based_cdc_on_spark_then_local_continues_the_stream(seeded: str, tmp_path: Path, spark: Any,
                                                               spark_pipes: BronzePipes) -> None:
    """The Spark engine reads the slot's snapshot and then the changed keys; its position lives in
    the commit, so the local engine carries on from it (once the deletion vectors of Spark's MERGE
    are purged). Bronze ends exact."""
    Bronze(seeded, tmp_path).load_direct("orders")  # exact already, without a log position
    month = datetime.now(UTC).date().replace(day=1).isoformat()  # the open partition of bz_orders
    first = materialize(seeded, tmp_path, "spark", "orders", month, spark_pipes)
    assert first.success
    meta, _ = outcome(first)
    assert (meta["engine"], meta["load_pattern"], meta["cdc_mode"]) == ("spark", "cdc", "snapshot")
    assert meta["rows_inserted"] == meta["rows_updated"] == 0  # nothing to write: the position alone
    assert CommitLog.read(DeltaTable(str(tmp_path / "bz_orders"))).cdc_position() is not None

    query(seeded, "INSERT INTO tests.orders VALUES (900001, 1, CURRENT_DATE, 'PENDING', 5.00, now())")
    # updated_at left alone: a watermark would miss it, the log does not
    query(seeded, "UPDATE tests.orders SET total_amount = total_amount + 1 WHERE order_id = 1")
    query(seeded, "DELETE FROM tests.orders WHERE order_id = 2")
    second = materialize(seeded, tmp_path, "spark", "orders", month, spark_pipes)
    assert second.success
    meta, _ = outcome(second)
    assert (meta["cdc_mode"], meta["cdc_keys_changed"]) == ("stream", 3)
    assert (meta["rows_read"], meta["rows_inserted"], meta["rows_updated"], meta["rows_soft_deleted"]) == \
        (2, 1, 1, 1)
    assert_orders_exact(seeded, tmp_path)

    query(seeded, "UPDATE tests.orders SET status = 'SHIPPED' WHERE order_id = 3")
    refused = materialize(seeded, tmp_path, "local", "orders", month)
    (failure,) = refused.get_step_failure_events()
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("bz_orders: refusing the local engine's load") and "\n" not in message
    spark.sql(f"REORG TABLE delta.`{tmp_path / 'bz_orders'}` APPLY (PURGE)")
    third = materialize(seeded, tmp_path, "local", "orders", month)
    meta, _ = outcome(third)
    assert (meta["engine"], meta["cdc_mode"], meta["cdc_keys_changed"], meta["rows_updated"]) == \
        ("local", "stream", 1, 1)
    assert_orders_exact(seeded, tmp_path)
