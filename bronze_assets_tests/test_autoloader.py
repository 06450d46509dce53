"""Auto Loader on Databricks (ARCHITECTURE §2.6). Open-source Spark has no ``cloudFiles`` source:
the options are checked against §2.6 here, and the ``foreachBatch`` body runs for real on local
Spark over a batch read with the same options' plain equivalents (the schema hints as the schema,
the same format options; ``_rescued_data`` has no plain equivalent, so it is NULL)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from bronze_assets.contracts.model import Evolution, LandingFormat
from bronze_assets.lib.delta.landing_ledger import LEDGER_TABLE
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load.landing_source import landing_folder
from bronze_assets.lib.load.lifecycle import Lifecycle, LoadReport, LoadRequest
from bronze_assets.lib.spark.autoloader import (
    MicroBatchSource,
    autoloader_options,
    format_options,
    micro_batch_body,
    schema_hints,
)
from bronze_assets.lib.spark.engine import SparkEngine
from bronze_assets.lib.spark.landing_stream import StreamedFiles
from bronze_assets.lib.spark.load import SparkLoader
from bronze_assets.settings import Settings
from bronze_assets_tests.bronze_helpers import bronze_frame
from bronze_assets_tests.test_landing import EVENTS, drop, event


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    settings = Settings(data_dir=tmp_path, bronze_root=str(tmp_path / "bronze"),
                        landing_root=str(tmp_path / "landing"), stage_dir=tmp_path / "stage")
    return Storage(settings.bronze_root, settings=settings)


def test_the_landing_contract_maps_one_to_one_onto_cloudfiles_options(storage: Storage) -> None:
    options = autoloader_options(EVENTS, storage)
    assert options["cloudFiles.format"] == "json"
    assert options["cloudFiles.schemaLocation"] == f"{storage.root}/_schemas/bz_shipment_events"
    assert options["cloudFiles.inferColumnTypes"] == "true"
    assert options["cloudFiles.schemaEvolutionMode"] == "addNewColumns"
    assert options["cloudFiles.allowOverwrites"] == "false"
    assert options["rescuedDataColumn"] == "_rescued_data"
    assert options["cloudFiles.schemaHints"] == (
        "`event_id` BIGINT, `shipment_id` BIGINT, `event_time` TIMESTAMP, `status` STRING, `location` STRING")
    assert options["allowSingleQuotes"] == "false"
    assert options["columnNameOfCorruptRecord"] == "_corrupt_record"
    assert EVENTS.landing is not None
    other = replace(EVENTS, landing=replace(
        EVENTS.landing, format=LandingFormat.CSV, evolution=Evolution.RESCUE, infer_column_types=False,
        allow_overwrites=True, schema_hints=(("weight_kg", "numeric(6,2)"),)))
    options = autoloader_options(other, storage)
    assert (options["cloudFiles.format"], options["cloudFiles.schemaEvolutionMode"]) == ("csv", "rescue")
    assert options["cloudFiles.inferColumnTypes"] == "false"
    assert options["cloudFiles.allowOverwrites"] == "true"
    assert options["header"] == "true"
    # the contract's columns in their types, then the hinted fields the contract does not list
    assert schema_hints(other).startswith("`event_id` BIGINT,") and schema_hints(other).endswith(
        "`location` STRING, `weight_kg` DECIMAL(6,2)")
    for mode in Evolution:
        chosen = replace(EVENTS, landing=replace(EVENTS.landing, evolution=mode))
        assert autoloader_options(chosen, storage)["cloudFiles.schemaEvolutionMode"] == mode.value


@pytest.mark.integration
@pytest.mark.xdist_group("spark")
def test_the_foreach_batch_body_lands_a_batch_once(spark: Any, storage: Storage) -> None:
    """A batch as Auto Loader hands it over (schema from the hints plus an added column, bad lines
    in ``_corrupt_record``, ``_metadata``) lands through the lifecycle with its ledger rows; the same
    batch delivered again (a stream restarted before its checkpoint) lands nothing twice."""
    drop(storage, "a.jsonl", [event(1), "{not json", event(2, carrier_code="DHL")], age=120)
    drop(storage, "b.json.gz", [event(2, "DELIVERED"), event(3)], age=60, gz=True)
    schema = schema_hints(EVENTS) + ", `carrier_code` STRING, `_corrupt_record` STRING"
    from pyspark.sql import functions as F

    batch = spark.read.format("json").options(**format_options(EVENTS)).schema(schema) \
        .load(landing_folder(storage.settings.landing_root, EVENTS)).select("*", "_metadata") \
        .withColumn("_rescued_data", F.lit(None).cast("string"))
    engine = SparkEngine(SparkLoader(spark, storage), data_docs=False)
    reports: list[LoadReport] = []

    def run(selection: StreamedFiles) -> LoadReport:
        return Lifecycle(LoadRequest(EVENTS, None), engine, "", storage,
                         source=MicroBatchSource(selection, storage)).run()

    body = micro_batch_body(run, EVENTS, storage, reports)
    body(batch, 0)
    (report,) = reports
    assert report.metadata["landing_files"] == 2 and report.metadata["rows_inserted"] == 3
    rows = {r["event_id"]: r for r in bronze_frame(storage.uri(EVENTS.bronze_table)).to_dicts()}
    assert rows[2]["status"] == "DELIVERED" and rows[2]["_source_file"].endswith("b.json.gz")
    assert rows[1]["carrier_code"] is None and rows[1]["source_system"] == "landing"
    ledger = DeltaTable(storage.uri(LEDGER_TABLE)).to_pyarrow_table().to_pylist()
    assert sorted((Path(r["path"]).name, r["rows"]) for r in ledger) == [("a.jsonl", 2), ("b.json.gz", 2)]
    assert all(len(r["sha256"]) == 64 for r in ledger)
    quarantine = [json.loads(r["record"]) for r in
                  DeltaTable(storage.uri("bz_quarantine")).to_pyarrow_table().to_pylist()]
    assert [(Path(q["file"]).name, q["line"], q["raw"]) for q in quarantine] == \
        [("a.jsonl", None, "{not json")]
    version = DeltaTable(storage.uri(EVENTS.bronze_table)).version()
    body(batch, 0)  # delivered again
    assert len(reports) == 1 and DeltaTable(storage.uri(EVENTS.bronze_table)).version() == version
    assert len(DeltaTable(storage.uri(LEDGER_TABLE)).to_pyarrow_table()) == 2


def test_a_column_auto_loader_inferred_is_typed_as_the_local_engine_types_it() -> None:
    """Spark's type names (``LongType`` is ``bigint`` in SQL, ``long`` as typeName) map to the JSON
    types the local engine's inference rule reads: a long Auto Loader inferred is a BIGINT column."""
    from pyspark.sql.types import DecimalType, IntegerType, LongType, StringType, StructField, StructType

    from bronze_assets.lib.spark.landing_columns import json_type

    assert [json_type(t.simpleString()) for t in (LongType(), IntegerType(), DecimalType(10, 2), StringType(),
                                                   StructType([StructField("a", LongType())]))] == \
        ["BIGINT", "BIGINT", "DOUBLE", "VARCHAR", "OBJECT"]
    assert json_type("OBJECT<a: BIGINT>") == "OBJECT" and json_type("INT") == "BIGINT"  # schema_of_variant
