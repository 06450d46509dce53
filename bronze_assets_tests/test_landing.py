"""Landing-zone files (ARCHITECTURE §2.6) on the local engine: real files in a local landing
folder, landed by the one load lifecycle into real Delta tables, read back with deltalake."""

from __future__ import annotations

import gzip
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from bronze_assets.contracts.model import Contract, Evolution, LandingFormat
from bronze_assets.contracts.tables import LANDING
from bronze_assets.lib.delta.control import AUDIT_LOG, read_table
from bronze_assets.lib.delta.landing_ledger import LEDGER_TABLE
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load.engine import LocalEngine
from bronze_assets.lib.load.errors import SchemaMismatchError
from bronze_assets.lib.load.lifecycle import Lifecycle, LoadRequest
from bronze_assets.settings import Settings
from bronze_assets_tests.stores import Store

EVENTS = next(c for c in LANDING if c.name == "shipment_events")


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    settings = Settings(data_dir=tmp_path, bronze_root=str(tmp_path / "bronze"),
                        landing_root=str(tmp_path / "landing"), stage_dir=tmp_path / "stage")
    return Storage(settings.bronze_root, settings=settings)


def drop(storage: Storage, name: str, lines: list[str | dict], age: float = 60, gz: bool = False) -> Path:
    """Write a landing file of ``lines`` (dicts as JSON) modified ``age`` seconds ago."""
    path = Path(storage.settings.landing_root, EVENTS.name, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def drop_parquet(storage: Storage) -> None:
    """Two events in ``a.parquet`` (one with an unparseable event_time, one new column) and an
    unreadable ``broken.parquet``, both modified a minute ago."""
    import pyarrow.parquet as pq

    folder = Path(storage.settings.landing_root, EVENTS.name)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"event_id": [1, 2], "shipment_id": [101, 102],
                             "event_time": ["2026-01-01T10:00:00+02:00", "later"],
                             "status": ["IN_TRANSIT", "DELIVERED"], "weight_kg": [1.5, None]}),
                   folder / "a.parquet")
    (folder / "broken.parquet").write_bytes(b"PAR1 not really")
    for f in folder.iterdir():
        os.utime(f, (time.time() - 60,) * 2)


def event(i: int, status: str = "IN_TRANSIT", **extra: object) -> dict:
    return {"event_id": i, "shipment_id": 100 + i, "event_time": f"2026-01-0{1 + i % 9}T10:00:00+02:00",
            "status": status, "location": f"hub {i}"} | extra


def land(storage: Storage, contract: Contract = EVENTS) -> dict:
    report = Lifecycle(LoadRequest(contract, None), LocalEngine(storage), "", storage).run()
    return report.metadata


def rows(storage: Storage) -> dict[int, dict]:
    table = DeltaTable(storage.uri(EVENTS.bronze_table)).to_pyarrow_table()
    return {r["event_id"]: r for r in table.to_pylist()}


def ledger(storage: Storage) -> list[dict]:
    return DeltaTable(storage.uri(LEDGER_TABLE)).to_pyarrow_table().to_pylist()


def test_files_land_exactly_once_with_metadata_and_ledger(storage: Storage) -> None:
    first = drop(storage, "2026/01/a.jsonl", [event(1), event(2, "PICKED_UP")], age=120)
    drop(storage, "b.json.gz", [event(2, "DELIVERED"), event(3)], age=60, gz=True)  # later file: wins for 2
    drop(storage, "empty.jsonl", [], age=60)
    drop(storage, "writing.jsonl", [event(9)], age=0)  # still being written: next run
    meta = land(storage)
    assert meta["landing_files"] == 3 and meta["landing_files_waiting"] == 1
    got = rows(storage)
    assert sorted(got) == [1, 2, 3]
    assert got[2]["status"] == "DELIVERED" and got[2]["_source_file"].endswith("b.json.gz")
    assert got[1]["source_system"] == "landing" and got[1]["_rescued_data"] is None
    assert got[1]["_source_file"] == "file://" + str(first)
    assert str(got[1]["event_time"]) == "2026-01-02 08:00:00+00:00"
    assert got[1]["data_quality_score"] == 100 and len(got[1]["record_hash"]) == 32
    files = {Path(r["path"]).name: r for r in ledger(storage)}
    assert set(files) == {"a.jsonl", "b.json.gz", "empty.jsonl"}
    assert files["b.json.gz"]["rows"] == 2 and files["empty.jsonl"]["size"] == 0
    assert len(files["a.jsonl"]["sha256"]) == 64 and files["a.jsonl"]["size"] == first.stat().st_size

    version = DeltaTable(storage.uri(EVENTS.bronze_table)).version()
    writing = Path(storage.settings.landing_root, EVENTS.name, "writing.jsonl")
    os.utime(writing)  # still being written (the first run may outlast the settle window on a loaded machine)
    again = land(storage)  # nothing new: no commit, nothing twice
    assert again["landing_files"] == 0 and again["landing_files_waiting"] == 1
    assert DeltaTable(storage.uri(EVENTS.bronze_table)).version() == version
    assert len(ledger(storage)) == 3

    os.utime(writing, (time.time() - 30,) * 2)
    assert land(storage)["landing_files"] == 1
    assert sorted(rows(storage)) == [1, 2, 3, 9] and len(ledger(storage)) == 4


def test_a_run_killed_after_its_commit_is_not_landed_twice(storage: Storage, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The ledger rides in the data commit: losing the copy into bz_landing_files (a kill right
    after the commit) neither loses the files nor lands them again."""
    drop(storage, "a.jsonl", [event(1), event(2)])
    from bronze_assets.lib.load import landing_source

    def killed(*_: object) -> None:
        raise KeyboardInterrupt("killed after the commit")

    monkeypatch.setattr(landing_source, "materialise", killed)
    with pytest.raises(KeyboardInterrupt):
        land(storage)
    monkeypatch.undo()
    assert sorted(rows(storage)) == [1, 2]
    assert land(storage)["landing_files"] == 0  # the listing repairs the ledger from the commit
    assert [Path(r["path"]).name for r in ledger(storage)] == ["a.jsonl"]
    assert len(DeltaTable(storage.uri(EVENTS.bronze_table)).to_pyarrow_table()) == 2


def test_bad_lines_are_quarantined_with_file_and_line(storage: Storage) -> None:
    path = drop(storage, "bad.jsonl", [event(1), "{not json", "", "[1, 2]", event(2)])
    land(storage)
    assert sorted(rows(storage)) == [1, 2]
    q = read_table(storage, QUARANTINE_TABLE).to_pylist()
    records = sorted((json.loads(r["record"]) for r in q), key=lambda r: r["line"])
    assert records == [{"file": "file://" + str(path), "line": 2, "raw": "{not json"},
                       {"file": "file://" + str(path), "line": 4, "raw": "[1, 2]"}]
    assert {r["table_name"] for r in q} == {EVENTS.name}
    assert next(r for r in ledger(storage))["rows"] == 2


def test_records_without_their_primary_key_are_quarantined_never_collapsed(storage: Storage) -> None:
    """A record whose key is missing, null or does not fit its type cannot be MERGEd by key: each
    is a bad line (file, line, raw text), not one NULL-key row standing for all of them; again in
    a later run."""
    missing, null, unfit = event(2), event(3) | {"event_id": None}, event(4) | {"event_id": "four"}
    missing.pop("event_id")
    path = drop(storage, "a.jsonl", [event(1), missing, null, unfit, event(5)], age=120)
    land(storage)
    assert sorted(rows(storage)) == [1, 5]
    q = sorted((json.loads(r["record"]) for r in read_table(storage, QUARANTINE_TABLE).to_pylist()),
               key=lambda r: r["line"])
    assert [(r["file"], r["line"]) for r in q] == [("file://" + str(path), n) for n in (2, 3, 4)]
    assert [json.loads(r["raw"]) for r in q] == [missing, null, unfit]
    assert [r["rows"] for r in ledger(storage)] == [2]
    drop(storage, "b.jsonl", [missing, event(6)])
    land(storage)
    assert sorted(rows(storage)) == [1, 5, 6]
    assert len(read_table(storage, QUARANTINE_TABLE)) == 4


def test_a_new_field_adds_a_column_in_the_same_run_and_is_audited(storage: Storage) -> None:
    drop(storage, "a.jsonl", [event(1)], age=120)
    land(storage)
    drop(storage, "b.jsonl", [event(2, carrier_code="DHL"), event(3)], age=60)
    land(storage)
    got = rows(storage)
    assert got[2]["carrier_code"] == "DHL"
    assert got[1]["carrier_code"] is None and got[3]["carrier_code"] is None
    audit = [r for r in read_table(storage, AUDIT_LOG).to_pylist()
             if r["operation_type"] == "SCHEMA_EVOLUTION"]
    assert len(audit) == 1 and json.loads(audit[0]["details"])["added"] == ["carrier_code"]
    drop(storage, "c.jsonl", [event(4)], age=30)  # a later file without it: NULL, no new evolution
    land(storage)
    assert rows(storage)[4]["carrier_code"] is None


def test_a_value_that_does_not_fit_its_type_is_rescued_and_scored(storage: Storage) -> None:
    drop(storage, "a.jsonl", [event(1, event_time="yesterday"), event(2), event(3, shipment_id=1.5)])
    land(storage)
    got = rows(storage)
    assert got[3]["shipment_id"] is None  # not 2: an integer column takes integers only
    assert json.loads(got[3]["_rescued_data"])["shipment_id"] == 1.5
    assert got[1]["event_time"] is None
    rescued = json.loads(got[1]["_rescued_data"])
    assert rescued["event_time"] == "yesterday" and rescued["_file_path"].endswith("a.jsonl")
    assert got[1]["data_quality_score"] < got[2]["data_quality_score"] == 100
    assert got[2]["_rescued_data"] is None
    assert pa_type(storage, "event_time").startswith("timestamp")  # the column's type never changes


def pa_type(storage: Storage, column: str) -> str:
    return str(pa.schema(DeltaTable(storage.uri(EVENTS.bronze_table)).schema().to_arrow()).field(column).type)


def test_other_evolution_modes(storage: Storage) -> None:
    drop(storage, "a.jsonl", [event(1, extra="x")])
    assert EVENTS.landing is not None
    strict = replace(EVENTS, landing=replace(EVENTS.landing, evolution=Evolution.FAIL_ON_NEW_COLUMNS))
    with pytest.raises(SchemaMismatchError, match=r"a\.jsonl.*extra.*failOnNewColumns"):
        land(storage, strict)
    assert storage.open(EVENTS.bronze_table) is None and storage.open(LEDGER_TABLE) is None
    land(storage, replace(EVENTS, landing=replace(EVENTS.landing, evolution=Evolution.RESCUE)))
    got = rows(storage)[1]
    assert "extra" not in got and json.loads(got["_rescued_data"])["extra"] == "x"


def test_the_sensor_requests_a_run_and_the_asset_lands_the_files(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Through Dagster: the sensor sees new files, the asset (daily partition) lands them with its
    checks, and the next tick has nothing to ask."""
    import dagster as dg

    from bronze_assets.defs.assets import build_bronze_asset
    from bronze_assets.defs.landing_files import build_landing_sensor
    from bronze_assets.defs.resources import BronzeStorage, PostgresSource, build_resources

    monkeypatch.setenv("BRONZE_LANDING_ROOT", str(tmp_path / "landing"))
    monkeypatch.delenv("BRONZE_SENSORS_RUNNING", raising=False)
    bronze = BronzeStorage(root=str(tmp_path / "bronze"))
    storage = bronze.storage()
    drop(storage, "a.jsonl", [event(1), event(2, status="LOST")])
    sensor = build_landing_sensor(EVENTS)
    assert sensor.name == "bz_shipment_events_files"
    assert sensor.default_status is dg.DefaultSensorStatus.STOPPED
    with dg.build_sensor_context(resources={"bronze": bronze}) as context:
        (request,) = sensor(context).run_requests
    asset = build_bronze_asset(EVENTS)
    resources = build_resources(PostgresSource(dsn="postgresql://nobody@localhost:1/unused"), bronze)
    result = dg.materialize([asset], resources=resources, partition_key=request.partition_key,
                            selection=[EVENTS.bronze_table])
    assert result.success
    got = rows(storage)
    assert sorted(got) == [1, 2] and got[2]["data_quality_score"] < 100  # LOST is not a status
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks.get("key_uniqueness") is True and checks.get("landing_files_changed") is True
    with dg.build_sensor_context(resources={"bronze": bronze}) as context:
        assert not sensor(context).run_requests
    drop(storage, "a.jsonl", [event(1), event(2, status="DELIVERED")])  # rewritten after ingestion
    result = dg.materialize([asset], resources=resources, partition_key=request.partition_key)
    (changed,) = [e for e in result.get_asset_check_evaluations()
                  if e.asset_check_key.name == "landing_files_changed"]
    assert not changed.passed and changed.severity is dg.AssetCheckSeverity.WARN
    assert changed.metadata["files"].value.endswith("a.jsonl") and rows(storage)[2]["status"] == "LOST"


def test_seeded_event_files_land_with_their_defects(storage: Storage) -> None:
    """``bronze seed``'s event files: ≈ 2 events per shipment, bad lines quarantined, the extra
    field added, the defects scored."""
    from bronze_assets.demo.event_files import write_event_files
    from bronze_assets.demo.generator import SeedOptions

    written = write_event_files(storage.settings.landing_root, 6000, SeedOptions(scale=0.1, defect_rate=0.02))
    assert 10_000 < written.events < 14_000 and len(written.files) == 3
    assert written.defects["bad_lines"] > 0 and written.defects["unknown_status"] > 0
    land(storage)
    table = DeltaTable(storage.uri(EVENTS.bronze_table)).to_pyarrow_table()
    assert table.num_rows == written.events and "carrier_code" not in table.column_names  # 3rd file: no
    rescued = sum(v is not None for v in table.column("_rescued_data").to_pylist())
    assert rescued == written.defects["bad_time"]
    q = read_table(storage, QUARANTINE_TABLE).to_pylist()
    assert len(q) == written.defects["bad_lines"]


def test_a_file_of_only_bad_lines_and_a_file_changed_after_ingestion(storage: Storage) -> None:
    """A file of only bad lines lands nothing but is ledgered; a file rewritten after it was
    ingested is counted as changed and not landed again, unless allow_overwrites."""
    drop(storage, "junk.jsonl", ["nope", "{still not"], age=120)
    path = drop(storage, "a.jsonl", [event(1)], age=120)
    land(storage)
    assert sorted(rows(storage)) == [1]
    assert {Path(r["path"]).name: r["rows"] for r in ledger(storage)} == {"junk.jsonl": 0, "a.jsonl": 1}
    assert len(read_table(storage, QUARANTINE_TABLE).to_pylist()) == 2
    drop(storage, "a.jsonl", [event(1, status="DELIVERED"), event(5)], age=60)  # rewritten in place
    meta = land(storage)
    assert meta["landing_files"] == 0 and meta["landing_files_changed"] == 1
    assert rows(storage)[1]["status"] == "IN_TRANSIT" and 5 not in rows(storage)
    assert EVENTS.landing is not None
    overwriting = replace(EVENTS, landing=replace(EVENTS.landing, allow_overwrites=True))
    assert land(storage, overwriting)["landing_files"] == 1
    got = rows(storage)
    assert got[1]["status"] == "DELIVERED" and got[5]["_source_file"] == "file://" + str(path)
    assert land(storage, overwriting)["landing_files"] == 0  # the new version is in the ledger


def test_csv_files_land_the_same_way(storage: Storage) -> None:
    """CSV with a header: fields typed by the contract, a row with the wrong field count
    quarantined with its line number, a value that does not cast rescued."""
    assert EVENTS.landing is not None
    csv = replace(EVENTS, landing=replace(EVENTS.landing, format=LandingFormat.CSV))
    path = drop(storage, "a.csv", ["event_id,shipment_id,event_time,status,location",
                                   "1,101,2026-01-01T10:00:00+02:00,IN_TRANSIT,\"hub, 1\"",
                                   "2,102,2026-01-02T10:00:00Z,DELIVERED,hub 2,surplus",
                                   "3,103,soon,PICKED_UP,hub 3"])
    land(storage, csv)
    got = rows(storage)
    assert sorted(got) == [1, 3] and got[1]["location"] == "hub, 1"
    assert str(got[1]["event_time"]) == "2026-01-01 08:00:00+00:00"
    assert got[3]["event_time"] is None and json.loads(got[3]["_rescued_data"])["event_time"] == "soon"
    (q,) = [json.loads(r["record"]) for r in read_table(storage, QUARANTINE_TABLE).to_pylist()]
    raw = "2,102,2026-01-02T10:00:00Z,DELIVERED,hub 2,surplus"
    assert q == {"file": "file://" + str(path), "line": 3, "raw": raw}


def test_parquet_files_land_the_same_way(storage: Storage) -> None:
    """Parquet: the values typed by the contract (a time that does not parse is rescued), a new
    column added with its inferred type, an unreadable file quarantined without failing the run."""
    assert EVENTS.landing is not None
    parquet = replace(EVENTS, landing=replace(EVENTS.landing, format=LandingFormat.PARQUET))
    drop_parquet(storage)
    land(storage, parquet)
    got = rows(storage)
    assert sorted(got) == [1, 2] and str(got[1]["event_time"]) == "2026-01-01 08:00:00+00:00"
    assert got[1]["weight_kg"] == 1.5 and got[2]["weight_kg"] is None  # inferred: double precision
    assert json.loads(got[2]["_rescued_data"])["event_time"] == "later"
    (q,) = [json.loads(r["record"]) for r in read_table(storage, QUARANTINE_TABLE).to_pylist()]
    assert q["file"].endswith("broken.parquet") and q["line"] is None and "Parquet" in q["raw"]


def with_landing(contract: Contract = EVENTS, primary_key: tuple[str, ...] | None = None, **landing: object
                 ) -> Contract:
    """``contract`` with its landing entry (and primary key) changed."""
    assert contract.landing is not None
    changed = replace(contract, landing=replace(contract.landing, **landing))  # type: ignore[arg-type]
    return changed if primary_key is None else replace(changed, primary_key=primary_key)


def stored_schemas(storage: Storage) -> list[dict]:
    folder = Path(storage.root, "_schemas", EVENTS.bronze_table)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_new_fields_are_typed_by_hint_or_inference_and_the_schema_is_stored(storage: Storage) -> None:
    """infer_column_types: a new field's type comes from the first file that has it; a schema hint
    overrides inference; the schema is stored under _schemas/bz_<name>, one version per change;
    the type never changes: a later value that does not parse is rescued."""
    hinted = with_landing(schema_hints=(("pieces", "numeric(10,2)"),))
    drop(storage, "a.jsonl", [event(1)], age=300)
    land(storage, hinted)
    (first,) = stored_schemas(storage)
    assert first["version"] == 0 and [c["name"] for c in first["columns"]] == EVENTS.column_names
    drop(storage, "b.jsonl", [event(2, weight=1.5, count=3, fragile=True, note="n", dims={"h": 1}, pieces=2),
                              event(3, weight=2, count=4, pieces="7.25")], age=200)
    land(storage, hinted)
    schema = pa.schema(DeltaTable(storage.uri(EVENTS.bronze_table)).schema().to_arrow())
    types = {f.name: str(f.type) for f in schema}
    assert types["weight"] == "double" and types["count"] == "int64" and types["fragile"] == "bool"
    assert types["note"] == "string" and types["dims"] == "string" and types["pieces"] == "decimal128(10, 2)"
    got = rows(storage)
    assert got[2]["weight"] == 1.5 and got[3]["weight"] == 2.0 and got[2]["count"] == 3
    assert json.loads(got[2]["dims"]) == {"h": 1} and str(got[3]["pieces"]) == "7.25"
    assert got[1]["weight"] is None and got[2]["_rescued_data"] is None
    versions = stored_schemas(storage)
    assert [v["version"] for v in versions] == [0, 1]
    added = {c["name"]: (c["type"], c["origin"]) for c in versions[1]["columns"][len(EVENTS.columns):]}
    assert added == {"count": ("bigint", "inferred"), "dims": ("jsonb", "inferred"),
                     "fragile": ("boolean", "inferred"), "note": ("text", "inferred"),
                     "pieces": ("numeric(10,2)", "hint"), "weight": ("double precision", "inferred")}
    drop(storage, "c.jsonl", [event(4, count="many", weight=3)], age=100)  # the type stays bigint
    land(storage, hinted)
    got = rows(storage)[4]
    assert got["count"] is None and json.loads(got["_rescued_data"])["count"] == "many"
    assert got["data_quality_score"] < 100 and len(stored_schemas(storage)) == 2


def test_without_inference_every_new_field_is_text(storage: Storage) -> None:
    drop(storage, "a.jsonl", [event(1, weight=1.5, count=3, fragile=True)])
    land(storage, with_landing(infer_column_types=False, schema_hints=(("count", "bigint"),)))
    got = rows(storage)[1]
    assert got["weight"] == "1.5" and got["fragile"] == "true" and got["count"] == 3  # the hint still types
    origins = {c["name"]: c["origin"] for c in stored_schemas(storage)[-1]["columns"]}
    assert origins["weight"] == "text" and origins["count"] == "hint"


def test_csv_new_fields_are_inferred_from_their_text(storage: Storage) -> None:
    csv = with_landing(format=LandingFormat.CSV)
    drop(storage, "a.csv", ["event_id,shipment_id,event_time,status,location,weight,pieces,seen",
                            "1,101,2026-01-01T10:00:00Z,IN_TRANSIT,hub 1,1.5,3,2026-01-01 10:00:00+00",
                            "2,102,2026-01-01T11:00:00Z,IN_TRANSIT,hub 2,2,4,"])
    land(storage, csv)
    got = rows(storage)
    assert got[1]["weight"] == 1.5 and got[2]["pieces"] == 4
    assert str(got[1]["seen"]).startswith("2026-01-01 10:00")


def test_a_contract_without_a_primary_key_appends_every_record_once(storage: Storage) -> None:
    """No primary key: records are appended (the same record in two files lands twice), each
    identified by <file URI>#<line>; a re-run or a rewritten file with allow_overwrites never
    lands a line twice."""
    keyless = with_landing(primary_key=())
    a = drop(storage, "a.jsonl", [event(1), event(1), "oops", event(2)], age=120)
    drop(storage, "b.jsonl", [event(1)], age=60)
    land(storage, keyless)
    table = DeltaTable(storage.uri(EVENTS.bronze_table)).to_pyarrow_table()
    assert sorted(table.column("event_id").to_pylist()) == [1, 1, 1, 2]
    assert sorted(table.column("record_key").to_pylist()) == sorted(
        [f"file://{a}#1", f"file://{a}#2", f"file://{a}#4", f"file://{a.parent / 'b.jsonl'}#1"])
    assert land(storage, keyless)["landing_files"] == 0
    drop(storage, "a.jsonl", [event(1), event(1, status="DELIVERED"), "oops", event(2), event(3)], age=30)
    land(storage, with_landing(primary_key=(), allow_overwrites=True))
    table = DeltaTable(storage.uri(EVENTS.bronze_table)).to_pyarrow_table().to_pylist()
    assert sorted(r["event_id"] for r in table) == [1, 1, 1, 2, 3]  # line 2 replaced, line 5 new
    assert [r["status"] for r in table if r["record_key"] == f"file://{a}#2"] == ["DELIVERED"]


@pytest.mark.parametrize("primary_key", [None, ()], ids=["key", "keyless"])
def test_records_staged_before_a_later_file_adds_a_column_are_hashed_with_it(
        tmp_path: Path, primary_key: tuple[str, ...] | None) -> None:
    """In one run, the records of a file read before a later file adds a column (staged again
    with it) get it NULL, their own record_key and the record_hash and score they get when the
    column is known first (the other file older)."""
    contract = with_landing(primary_key=primary_key)
    landed = []
    for first in ("a", "b"):
        root = tmp_path / first
        settings = Settings(data_dir=root, bronze_root=str(root / "bronze"),
                            landing_root=str(root / "landing"), stage_dir=root / "stage")
        storage = Storage(settings.bronze_root, settings=settings)
        a = drop(storage, "a.jsonl", [event(1), "oops", event(2)], age=120 if first == "a" else 30)
        drop(storage, "b.jsonl", [event(3, carrier_code="DHL"), event(1)], age=60)
        land(storage, contract)
        table = DeltaTable(storage.uri(EVENTS.bronze_table)).to_pyarrow_table().to_pylist()
        assert [r["carrier_code"] for r in table if r["event_id"] == 2] == [None]
        if primary_key == ():
            assert [r["record_key"] for r in table if r["event_id"] == 2] == [f"file://{a}#3"]
        landed.append(sorted((r["event_id"], r["record_hash"], r["data_quality_score"]) for r in table))
    assert len(landed[0]) == (3 if primary_key is None else 4)
    assert landed[0] == landed[1]


def test_every_kind_of_bad_input_lands_what_it_can_and_never_fails_the_run(storage: Storage) -> None:
    """A 0-byte file, a file of blank lines, an empty and a 0-byte .gz, a truncated .gz, CRLF line
    ends and bytes that are not UTF-8: the run succeeds, every file is ledgered once, what cannot
    be read is quarantined with its file and line."""
    folder = Path(storage.settings.landing_root, EVENTS.name)
    drop(storage, "zero.jsonl", [])
    drop(storage, "blank.jsonl", ["", "   ", ""])
    drop(storage, "empty.json.gz", [], gz=True)
    (folder / "zero.json.gz").write_bytes(b"")
    whole = gzip.compress((json.dumps(event(7)) + "\n" + json.dumps(event(8)) + "\n").encode())
    (folder / "cut.json.gz").write_bytes(whole[: len(whole) - 12])
    (folder / "crlf.jsonl").write_bytes(f"{json.dumps(event(1))}\r\n{json.dumps(event(2))}\r\n".encode())
    (folder / "latin1.jsonl").write_bytes(b'{"event_id": 3, "shipment_id": 1, "status": "IN_TRANSIT", '
                                          b'"event_time": "2026-01-01T00:00:00Z", "location": "K\xf6ln"}\n')
    for f in folder.iterdir():
        os.utime(f, (time.time() - 60,) * 2)
    meta = land(storage)
    assert meta["landing_files"] == 7
    got = rows(storage)
    assert {1, 2, 3} <= set(got) and got[3]["location"] == "K\ufffdln"
    assert {Path(r["path"]).name for r in ledger(storage)} == {
        "zero.jsonl", "blank.jsonl", "empty.json.gz", "zero.json.gz", "cut.json.gz", "crlf.jsonl",
        "latin1.jsonl"}
    q = [json.loads(r["record"]) for r in read_table(storage, QUARANTINE_TABLE).to_pylist()]
    (cut,) = [r for r in q if r["line"] is None]
    assert cut["file"].endswith("cut.json.gz") and "gzip" in cut["raw"]
    assert land(storage)["landing_files"] == 0


def test_landing_on_object_storage(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On S3 and ADLS (the landing folder and bronze both in the store): new files land once with
    their ledger, a new field is added and the schema stored, bad lines are quarantined, a file
    just written waits for the next run, a rewritten file is named as changed."""
    from bronze_assets.lib.load import landing_source
    from bronze_assets.lib.load.landing_schema import read_schema

    landing = store.root.removesuffix("/bronze") + "/landing"
    settings = Settings(data_dir=tmp_path, bronze_root=store.root, landing_root=landing, stage_dir=tmp_path)
    storage = Storage(store.root, settings=settings)
    folder = Storage(landing)

    def put(name: str, lines: list[str | dict], gz: bool = False) -> None:
        text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines).encode()
        folder.write_file(f"{EVENTS.name}/{name}", gzip.compress(text) if gz else text)

    put("2026/a.jsonl", [event(1), event(2, "PICKED_UP"), "{cut"])
    put("2026/b.json.gz", [event(2, "DELIVERED"), event(3, carrier_code="DHL")], gz=True)
    assert land(storage)["landing_files_waiting"] == 2  # just written: the next run takes them
    monkeypatch.setattr(landing_source, "SETTLE", landing_source.SETTLE * 0)
    assert land(storage)["landing_files"] == 2
    got = rows(storage)
    assert sorted(got) == [1, 2, 3] and got[2]["status"] == "DELIVERED" and got[3]["carrier_code"] == "DHL"
    assert got[1]["_source_file"] == f"{landing}/{EVENTS.name}/2026/a.jsonl"
    files = {r["path"]: r for r in DeltaTable(storage.uri(LEDGER_TABLE)).to_pyarrow_table().to_pylist()}
    assert set(files) == {f"{landing}/{EVENTS.name}/2026/a.jsonl", f"{landing}/{EVENTS.name}/2026/b.json.gz"}
    (q,) = [json.loads(r["record"]) for r in read_table(storage, QUARANTINE_TABLE).to_pylist()]
    assert q["line"] == 3 and q["file"].endswith("a.jsonl")
    stored = read_schema(storage, EVENTS)
    assert stored is not None and stored.version == 1 and stored.columns[-1].name == "carrier_code"
    assert land(storage)["landing_files"] == 0
    put("2026/a.jsonl", [event(1, "DELIVERED")])
    meta = land(storage)
    assert meta["landing_files"] == 0 and meta["landing_files_changed"] == 1
    assert len(DeltaTable(storage.uri(LEDGER_TABLE)).to_pyarrow_table()) == 2


def test_bronze_status_has_a_row_for_the_landing_table(storage: Storage) -> None:
    """Like every table: never loaded, then fresh with its rows; plus the files its ledger holds and
    the files waiting; a file that waits longer than the freshness window makes it stale."""
    from datetime import UTC, datetime, timedelta

    from bronze_assets.lib.monitoring.status import FRESH, NEVER, STALE, bronze_status, render

    drop(storage, "a.jsonl", [event(1), event(2)])
    (row,) = [s for s in bronze_status(storage) if s.table == EVENTS.bronze_table]
    assert row.freshness == NEVER and row.landing is not None and row.landing["files_waiting"] == 1
    assert row.load_command == row.refresh_command and row.snapshot_loaded is None
    land(storage)
    (row,) = [s for s in bronze_status(storage) if s.table == EVENTS.bronze_table]
    assert row.freshness == FRESH and row.healthy and row.rows == row.active == 2 and row.delta_version == 0
    folder = str(Path(storage.settings.landing_root, EVENTS.name))
    assert row.landing == {"folder": folder, "files_ingested": 1, "files_waiting": 0, "files_changed": 0,
                           "oldest_waiting": None}
    assert f"{EVENTS.bronze_table}: 1 file(s) landed from" in render([row])
    drop(storage, "late.jsonl", [event(3)], age=30 * 3600)  # a day and more, and nothing landed it
    (row,) = [s for s in bronze_status(storage, now=datetime.now(UTC) + timedelta(minutes=1))
              if s.table == EVENTS.bronze_table]
    assert row.freshness == STALE and row.landing is not None and row.landing["files_waiting"] == 1
    assert "1 file(s) wait in" in render([row])


def test_a_file_uri_landing_root_is_decoded_as_delta_rs_decodes_it(tmp_path: Path) -> None:
    """``BRONZE_LANDING_ROOT=file:///…/my%20landing`` is the folder ``my landing``: its files land,
    recorded under their local path."""
    folder = tmp_path / "my landing"
    settings = Settings(data_dir=tmp_path, bronze_root=str(tmp_path / "bronze"),
                        landing_root=folder.as_uri(), stage_dir=tmp_path / "stage")
    storage = Storage(settings.bronze_root, settings=settings)
    assert "%20" in settings.landing_root
    path = folder / EVENTS.name / "a.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(event(1)) + "\n")
    os.utime(path, (time.time() - 60,) * 2)
    assert land(storage)["landing_files"] == 1
    assert rows(storage)[1]["_source_file"] == "file://" + str(path)
