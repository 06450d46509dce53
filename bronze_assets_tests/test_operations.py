"""Operations jobs and the report asset, run through Dagster against real bronze tables."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import dagster as dg
import pytest
from deltalake import DeltaTable
from PIL import Image

from bronze_assets.defs.operations import bronze_maintenance, bronze_retention, monitoring_report
from bronze_assets.defs.resources import BronzeStorage
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.delta.control import AUDIT_LOG, read_table
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

pytestmark = pytest.mark.integration


@pytest.fixture
def bronze(seed_db: SeedDb, tmp_path: Path) -> Bronze:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    return Bronze(fresh_dsn, tmp_path / "bronze")


def test_maintenance_job_compacts_and_reports_per_table(bronze: Bronze) -> None:
    bronze.load_direct("products")
    for i in range(5):  # five small insert-only MERGE commits: one new file each
        query(bronze.dsn, f"INSERT INTO tests.products SELECT product_id + {1000 * (i + 1)}, product_name, "
                          f"category, unit_price, sku, now() FROM tests.products WHERE product_id <= 5")
        bronze.load_direct("products")
    before = set(Path(bronze.uri("products")).glob("*.parquet"))
    rows = bronze.read("products").sort("product_id")
    files_before = len(DeltaTable(bronze.uri("products")).file_uris())
    versions = bronze.read("products_history").sort("product_id", "_valid_from")
    assert len(DeltaTable(bronze.uri("products_history")).file_uris()) > 1
    instance = dg.DagsterInstance.ephemeral()
    result = bronze_maintenance.execute_in_process(
        resources={"bronze": BronzeStorage(root=str(bronze.root))}, instance=instance)
    assert result.success
    observations = [e.event_specific_data.asset_observation for e in result.all_events
                    if e.event_type_value == "ASSET_OBSERVATION"]
    (obs,) = [o for o in observations if o.asset_key == dg.AssetKey("bz_products")]
    meta = {k: v.value for k, v in obs.metadata.items()}
    assert meta["files_before"] == files_before > meta["files_after_optimize"] == 1
    assert meta["zorder_columns"] == ["product_id"]
    assert len(DeltaTable(bronze.uri("products")).file_uris()) == 1
    assert bronze.read("products").sort("product_id").equals(rows), "maintenance never changes data"
    assert before <= set(Path(bronze.uri("products")).glob("*.parquet")), "files younger than 168 h stay"
    audit = [a for a in read_table(str(bronze.root), AUDIT_LOG).to_pylist()
             if a["operation_type"] == "MAINTENANCE"]
    assert {"bz_products", "bz_products_history"} <= {a["table_name"] for a in audit}
    # the history (products keep one) is compacted too, its versions unchanged
    assert len(DeltaTable(bronze.uri("products_history")).file_uris()) == 1
    assert bronze.read("products_history").sort("product_id", "_valid_from").equals(versions)
    assert all(a["status"] == "SUCCESS" for a in audit)


def test_retention_job_runs_over_every_table_with_a_business_date(bronze: Bronze,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bronze.load_direct("returns")
    sql = "SELECT count(*) FROM tests.returns WHERE return_date < current_date - interval '1 year'"
    (old,) = query(bronze.dsn, sql)[0]
    monkeypatch.setenv("BRONZE_RETENTION_YEARS", "1")
    result = bronze_retention.execute_in_process(resources={"bronze": BronzeStorage(root=str(bronze.root))},
                                                 instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert result.output_for_node("apply_bronze_retention") == old > 0


def test_report_asset_attaches_plots_the_ui_can_show(bronze: Bronze) -> None:
    for table in ("products", "warehouses"):
        assert dg.materialize([bronze.assets[f"bz_{table}"]], resources=bronze.resources).success
    result = dg.materialize([monitoring_report], resources={"bronze": BronzeStorage(root=str(bronze.root))})
    assert result.success
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert Path(meta["report"].value).is_file()
    plots = {k: v.value for k, v in meta.items() if k.startswith("plot_")}
    assert len(plots) == 5
    for markdown in plots.values():
        png = base64.b64decode(markdown.split("base64,", 1)[1].rstrip(")"))
        image = Image.open(io.BytesIO(png))
        assert image.size[0] >= 400 and image.size[1] >= 300
    assert meta["loads"].value == 2 and meta["records_processed"].value > 0
