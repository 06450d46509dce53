"""Landing-zone files (ARCHITECTURE §2.6) on the Spark engine, for real: local Spark + delta-spark
land real files through the one load lifecycle; the rows, quarantine and ledger are compared with
the local engine's landing of the same files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from deltalake import DeltaTable

from bronze_assets.contracts.model import Contract, Evolution, LandingFormat
from bronze_assets.lib.delta.control import AUDIT_LOG, read_table
from bronze_assets.lib.delta.landing_ledger import LEDGER_TABLE
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.delta.writers import DeletionVectorsError
from bronze_assets.lib.load.engine import LocalEngine
from bronze_assets.lib.load.errors import SchemaMismatchError
from bronze_assets.lib.load.landing_schema import INFERRED, StoredColumn, read_schema
from bronze_assets.lib.load.lifecycle import Lifecycle, LoadRequest
from bronze_assets.lib.spark.engine import SparkEngine
from bronze_assets.lib.spark.load import SparkLoader
from bronze_assets.settings import Settings
from bronze_assets_tests.bronze_helpers import bronze_frame
from bronze_assets_tests.test_landing import EVENTS, drop, drop_parquet, event

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("spark")]

PER_LOAD = ("batch_id", "load_timestamp", "update_timestamp", "load_date")  # differ by run, not by engine


def _storage(tmp_path: Path, root: str) -> Storage:
    settings = Settings(data_dir=tmp_path, bronze_root=str(tmp_path / root),
                        landing_root=str(tmp_path / "landing"), stage_dir=tmp_path / "stage")
    return Storage(settings.bronze_root, settings=settings)


def _land(storage: Storage, engine: str, spark: Any = None, contract: Contract = EVENTS) -> dict:
    chosen = LocalEngine(storage) if engine == "local" else \
        SparkEngine(SparkLoader(spark, storage), data_docs=False)
    return Lifecycle(LoadRequest(contract, None), chosen, "", storage).run().metadata


def _rows(storage: Storage) -> pl.DataFrame:
    frame = bronze_frame(storage.uri(EVENTS.bronze_table))
    return frame.drop(PER_LOAD).select(sorted(c for c in frame.columns if c not in PER_LOAD)).sort("event_id")


def _quarantine(storage: Storage) -> list[dict]:
    if storage.open(QUARANTINE_TABLE) is None:
        return []
    return sorted((json.loads(r["record"]) for r in read_table(storage, QUARANTINE_TABLE).to_pylist()),
                  key=lambda r: (r["file"], r["line"] or 0))


def _ledger(storage: Storage) -> list[tuple]:
    rows = DeltaTable(storage.uri(LEDGER_TABLE)).to_pyarrow_table().to_pylist()
    return sorted((r["table_name"], r["path"], r["size"], r["modification_time"], r["sha256"], r["rows"])
                  for r in rows)


def _files(local: Storage) -> None:
    """Files of every kind at once: a later file that wins for a key, an extra field, bad lines, a
    value that does not parse, a gzip file, an empty and a 0-byte file."""
    drop(local, "2026/01/a.jsonl", [event(1), event(2, "PICKED_UP"), event(3, event_time="yesterday")],
         age=300)
    drop(local, "b.json.gz", [event(2, "DELIVERED"), "{not json", event(4, "LOST"), "[1, 2]"],
         age=240, gz=True)
    drop(local, "c.jsonl", [event(5, carrier_code="DHL"), "", event(6, location=None),
                            event(7, shipment_id="x12")], age=180)
    drop(local, "empty.jsonl", ["", "  "], age=120)
    drop(local, "zero.jsonl", [], age=120)


def test_both_engines_land_the_same_files_into_the_same_rows(spark: Any, tmp_path: Path) -> None:
    local, remote = _storage(tmp_path, "local"), _storage(tmp_path, "spark")
    _files(local)
    meta_local, meta_spark = _land(local, "local"), _land(remote, "spark", spark)
    assert meta_spark["engine"] == "spark" and meta_spark["landing_files"] == meta_local["landing_files"] == 5
    a, b = _rows(local), _rows(remote)
    assert a.columns == b.columns and "carrier_code" in a.columns
    for column in a.columns:
        assert a[column].to_list() == b[column].to_list(), column
    assert a["event_id"].to_list() == [1, 2, 3, 4, 5, 6, 7]
    got = {r["event_id"]: r for r in b.to_dicts()}
    assert got[2]["status"] == "DELIVERED" and got[2]["_source_file"].endswith("b.json.gz")
    assert json.loads(got[3]["_rescued_data"])["event_time"] == "yesterday"
    assert got[3]["data_quality_score"] == 60
    assert json.loads(got[7]["_rescued_data"]) == {"shipment_id": "x12", "_file_path": got[7]["_source_file"]}
    assert got[5]["carrier_code"] == "DHL" and got[1]["carrier_code"] is None
    assert _quarantine(local) == _quarantine(remote) and len(_quarantine(remote)) == 2
    assert {q["line"] for q in _quarantine(remote)} == {2, 4}
    assert _ledger(local) == _ledger(remote)
    stored_local, stored_spark = read_schema(local, EVENTS), read_schema(remote, EVENTS)
    assert stored_local is not None and stored_spark is not None
    assert stored_spark.columns == stored_local.columns  # the same schema stored under _schemas/
    assert stored_spark.columns[-1] == StoredColumn("carrier_code", "text", INFERRED)
    assert {Path(r[1]).name: r[5] for r in _ledger(remote)} == \
        {"a.jsonl": 3, "b.json.gz": 2, "c.jsonl": 3, "empty.jsonl": 0, "zero.jsonl": 0}
    audit = [r for r in read_table(remote, AUDIT_LOG).to_pylist()
             if r["operation_type"] == "SCHEMA_EVOLUTION"]
    assert [json.loads(r["details"])["added"] for r in audit] == [["carrier_code"]]
    version = DeltaTable(remote.uri(EVENTS.bronze_table)).version()
    assert _land(remote, "spark", spark)["landing_files"] == 0  # nothing new: no commit
    assert DeltaTable(remote.uri(EVENTS.bronze_table)).version() == version


def test_both_engines_quarantine_records_without_their_primary_key(spark: Any, tmp_path: Path) -> None:
    local, remote = _storage(tmp_path, "local"), _storage(tmp_path, "spark")
    missing, null, unfit = event(2), event(3) | {"event_id": None}, event(4) | {"event_id": "four"}
    missing.pop("event_id")
    drop(local, "a.jsonl", [event(1), missing, null, unfit, event(5)], age=120)
    _land(local, "local")
    _land(remote, "spark", spark)
    assert _rows(local)["event_id"].to_list() == _rows(remote)["event_id"].to_list() == [1, 5]
    assert _quarantine(local) == _quarantine(remote)
    quarantined = [(q["line"], json.loads(q["raw"])) for q in _quarantine(remote)]
    assert quarantined == [(2, missing), (3, null), (4, unfit)]
    assert _ledger(local) == _ledger(remote)


def test_either_engine_continues_the_others_table_exactly_once(spark: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """local lands a file, Spark the next (a new field: a column added by delta-spark's MERGE),
    killed after its commit before the ledger copy; the local engine then sees every file once."""
    storage = _storage(tmp_path, "bronze")
    drop(storage, "a.jsonl", [event(1), event(2)], age=300)
    _land(storage, "local")
    drop(storage, "b.jsonl", [event(2, "DELIVERED", carrier_code="UPS"), event(3)], age=200)
    from bronze_assets.lib.load import landing_source

    def killed(*_: object) -> None:
        raise KeyboardInterrupt("killed after the commit")

    monkeypatch.setattr(landing_source, "materialise", killed)
    with pytest.raises(KeyboardInterrupt):
        _land(storage, "spark", spark)
    monkeypatch.undo()
    drop(storage, "c.jsonl", [event(4)], age=100)
    # Spark's MERGE marked event 2's old row with a deletion vector: the local engine refuses the
    # table until the vectors are purged on Spark
    with pytest.raises(DeletionVectorsError, match=r"^bz_shipment_events: refusing the local engine's load"):
        _land(storage, "local")
    spark.sql(f"REORG TABLE delta.`{storage.uri(EVENTS.bronze_table)}` APPLY (PURGE)")
    assert _land(storage, "local")["landing_files"] == 1  # b.jsonl is in the ledger of Spark's commit
    rows = {r["event_id"]: r for r in _rows(storage).to_dicts()}
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[2]["status"] == "DELIVERED" and rows[2]["carrier_code"] == "UPS"
    assert sorted(Path(r[1]).name for r in _ledger(storage)) == ["a.jsonl", "b.jsonl", "c.jsonl"]
    drop(storage, "d.jsonl", [event(1, "DELIVERED")], age=50)
    assert _land(storage, "spark", spark)["landing_files"] == 1
    assert _rows(storage).filter(pl.col("event_id") == 1)["status"].to_list() == ["DELIVERED"]
    assert len(_ledger(storage)) == 4


def test_evolution_modes_on_spark(spark: Any, tmp_path: Path) -> None:
    storage = _storage(tmp_path, "bronze")
    drop(storage, "a.jsonl", [event(1, extra="x")])
    assert EVENTS.landing is not None
    strict = replace(EVENTS, landing=replace(EVENTS.landing, evolution=Evolution.FAIL_ON_NEW_COLUMNS))
    with pytest.raises(SchemaMismatchError, match=r"a\.jsonl.*extra.*failOnNewColumns"):
        _land(storage, "spark", spark, strict)
    assert storage.open(EVENTS.bronze_table) is None and storage.open(LEDGER_TABLE) is None
    rescue = replace(EVENTS, landing=replace(EVENTS.landing, evolution=Evolution.RESCUE))
    _land(storage, "spark", spark, rescue)
    got = _rows(storage).to_dicts()[0]
    assert "extra" not in got and json.loads(got["_rescued_data"])["extra"] == "x"
    drop(storage, "b.jsonl", [event(2, other=1)])
    _land(storage, "spark", spark, replace(EVENTS, landing=replace(EVENTS.landing, evolution=Evolution.NONE)))
    got = _rows(storage).to_dicts()[1]
    assert "other" not in got and got["_rescued_data"] is None


def test_csv_and_parquet_files_land_as_on_the_local_engine(spark: Any, tmp_path: Path) -> None:
    assert EVENTS.landing is not None
    for fmt in (LandingFormat.CSV, LandingFormat.PARQUET):
        contract = replace(EVENTS, landing=replace(EVENTS.landing, format=fmt))
        local, remote = _storage(tmp_path / fmt, "local"), _storage(tmp_path / fmt, "spark")
        if fmt is LandingFormat.CSV:
            drop(local, "a.csv", ["event_id,shipment_id,event_time,status,location",
                                  "1,101,2026-01-01T10:00:00+02:00,IN_TRANSIT,\"hub, 1\"",
                                  "2,102,2026-01-02T10:00:00Z,DELIVERED,hub 2,surplus",
                                  "3,103,soon,PICKED_UP,hub 3"])
        else:
            drop_parquet(local)
        _land(local, "local", contract=contract)
        _land(remote, "spark", spark, contract)
        a, b = _rows(local), _rows(remote)
        assert a.columns == b.columns, fmt
        for column in a.columns:
            assert a[column].to_list() == b[column].to_list(), (fmt, column)
        assert len(_quarantine(remote)) == 1
        if fmt is LandingFormat.CSV:
            assert _quarantine(local) == _quarantine(remote)
        else:  # the reader's message differs, the file and the missing line do not
            (q_local,), (q_spark,) = _quarantine(local), _quarantine(remote)
            assert q_spark["file"] == q_local["file"] and q_spark["line"] is None
            assert "Parquet" in q_spark["raw"]
        assert _ledger(local) == _ledger(remote)


def test_bronze_engine_tables_routes_the_landing_asset_to_spark(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spark_pipes: Any) -> None:
    """``BRONZE_ENGINE_TABLES=bz_shipment_events=spark``: the asset runs the Spark job through
    Pipes (no database asked for) and reports the landing metadata and checks."""
    from datetime import UTC, datetime

    import dagster as dg

    from bronze_assets.defs.assets import build_bronze_asset
    from bronze_assets.defs.resources import BronzeStorage, PostgresSource, build_resources

    monkeypatch.setenv("BRONZE_LANDING_ROOT", str(tmp_path / "landing"))
    monkeypatch.setenv("BRONZE_ENGINE_TABLES", "bz_shipment_events=spark")
    bronze = BronzeStorage(root=str(tmp_path / "bronze"))
    storage = bronze.storage()
    drop(storage, "a.jsonl", [event(1), event(2, status="LOST"), "{bad"])
    resources = build_resources(PostgresSource(dsn="postgresql://nobody@localhost:1/unused"), bronze,
                                pipes=spark_pipes)  # the job on this worker's JVM
    result = dg.materialize([build_bronze_asset(EVENTS)], resources=resources, raise_on_error=False,
                            partition_key=datetime.now(UTC).date().isoformat())
    assert result.success
    (event_,) = [e for e in result.get_asset_materialization_events()
                 if "rows_read" in e.materialization.metadata]
    meta = {k: v.value for k, v in event_.materialization.metadata.items()}
    assert meta["engine"] == "spark" and meta["landing_files"] == 1 and meta["rows_read"] == 2
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["key_uniqueness"] and checks["landing_files_changed"] and "quality_score" in checks
    assert _rows(storage)["event_id"].to_list() == [1, 2] and len(_quarantine(storage)) == 1


def test_both_engines_land_the_seeded_event_files_alike(spark: Any, tmp_path: Path) -> None:
    """``bronze seed``'s event files (≈ 2 events per shipment, the defect rate, bad lines, a fourth
    file with an extra field): the same rows, quarantine and ledger on both engines."""
    from bronze_assets.demo.event_files import write_event_files
    from bronze_assets.demo.generator import SeedOptions

    local, remote = _storage(tmp_path, "local"), _storage(tmp_path, "spark")
    written = write_event_files(local.settings.landing_root, 9000, SeedOptions(scale=0.1, defect_rate=0.02))
    assert len(written.files) == 4 and written.defects["bad_lines"] > 0
    _land(local, "local")
    _land(remote, "spark", spark)
    a, b = _rows(local), _rows(remote)
    assert a.columns == b.columns and "carrier_code" in a.columns and a.height == written.events
    for column in a.columns:
        assert a[column].to_list() == b[column].to_list(), column
    assert _quarantine(local) == _quarantine(remote)
    assert len(_quarantine(remote)) == written.defects["bad_lines"]
    assert _ledger(local) == _ledger(remote)


def test_a_run_at_once_on_the_other_engine_lands_nothing_twice(spark: Any, tmp_path: Path) -> None:
    """Spark has staged the new files when another run (the local engine) lands them: before its
    commit Spark drops them, so every record and every file is in the table and the ledger once."""
    from bronze_assets.lib.load.lifecycle import commit

    storage = _storage(tmp_path, "bronze")
    drop(storage, "a.jsonl", [event(1), event(2, "DELIVERED")], age=120)
    engine = SparkEngine(SparkLoader(spark, storage), data_docs=False)
    lifecycle = Lifecycle(LoadRequest(EVENTS, None), engine, "", storage)
    staged = lifecycle.stage()
    assert _land(storage, "local")["landing_files"] == 1  # the other run, at once
    version = DeltaTable(storage.uri(EVENTS.bronze_table)).version()
    outcome = commit(engine, staged, storage, None)
    lifecycle.finish(staged)
    assert outcome.result.commits == 0 and DeltaTable(storage.uri(EVENTS.bronze_table)).version() == version
    assert _rows(storage)["event_id"].to_list() == [1, 2]
    assert [Path(r[1]).name for r in _ledger(storage)] == ["a.jsonl"]
