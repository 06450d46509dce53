"""GX suites from the contracts: counts agree with the score and the seed; checks in Dagster."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from bronze_assets.contracts import CONTRACTS, QualityRules, RegexRule, TypeChangePolicy, ValueSetRule
from bronze_assets.defs.assets import build_bronze_asset
from bronze_assets.defs.checks import (
    KEY_UNIQUENESS,
    QUALITY_SCORE,
    REFERENTIAL_INTEGRITY,
    key_uniqueness_result,
    referential_integrity_result,
)
from bronze_assets.demo.generator import InventoryGenerator, SeedOptions
from bronze_assets.demo.seed import seed_source
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.enrich.score import score_expr
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.lib.quality.rules import rules
from bronze_assets.lib.quality.validate import SuiteRunner, suite_runner
from bronze_assets.settings import Settings
from bronze_assets_tests.bronze_helpers import Bronze, spec_hash_sql
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

pytestmark = pytest.mark.integration


def test_suite_has_one_expectation_per_rule_and_the_key() -> None:
    contract = CONTRACTS["orders"]
    suite = SuiteRunner(contract, AS_OF.date()).suite  # GX needs its (ephemeral) context first
    rules = sorted(e.meta["rule"] for e in suite.expectations)
    assert rules == sorted(["null:customer_id", "null:order_date", "format:status", "range:total_amount",
                            "range:order_date", "unique:order_id"])


def test_two_rules_on_one_column_are_both_scored_and_validated() -> None:
    """One rule model for the score and the suite: a second rule of one kind on one column gets
    its own id, counts in the score and has its own expectation (before, one replaced the other)."""
    suppliers = CONTRACTS["suppliers"]
    contract = replace(suppliers, quality=QualityRules(formats=(
        RegexRule("email", r"^[^@\s]+@[^@\s]+$"), ValueSetRule("email", ("a@b.com", "c@d.com")))))
    assert [r.id for r in rules(contract, AS_OF.date())] == ["format:email", "format:email#2"]
    frame = pl.DataFrame({"supplier_id": [1, 2, 3, 4], "email": ["a@b.com", "x@y.com", "bad", None]})
    scores = frame.select(score_expr(contract, AS_OF.date())).to_series().to_list()
    assert scores == [100, 95, 90, 100]
    report = SuiteRunner(contract, AS_OF.date()).validate(frame.to_arrow())
    assert report.gx_counts == {"format:email": 1, "format:email#2": 2, "unique:supplier_id": 0}
    assert report.agree and report.vector_counts == {"format:email": 1, "format:email#2": 2}


def test_gx_counts_equal_vectorised_counts_and_injected_defects(fresh_dsn: str, tmp_path: Path) -> None:
    report = seed_source(fresh_dsn, SeedOptions(scale=0.1, defect_rate=0.01, as_of=AS_OF))
    for name, contract in CONTRACTS.items():
        staged = extract_and_stage(contract, fresh_dsn, tmp_path)
        try:
            # the seed's future dates lie after AS_OF; validate as of the seed's day
            quality = SuiteRunner(contract, AS_OF.date()).validate_batches(staged.batches())
        finally:
            staged.cleanup()
        assert quality.rows == report.rows[name]
        assert quality.agree, f"{name}: GX {quality.gx_counts} vs score {quality.vector_counts}"
        for kind, injected in report.defects[name].items():
            if kind.startswith("orphan:"):
                continue  # referential, not a per-record rule
            assert quality.gx_counts[kind] == injected, f"{name} {kind}"
        unique = [k for k in quality.gx_counts if k.startswith("unique:")]
        assert unique and quality.gx_counts[unique[0]] == 0


def test_checks_run_with_every_materialization_and_warn_below_the_kpi(seed_db: SeedDb, tmp_path: Path
                                                                     ) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.2, defect_rate=0.0, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    ok = dg.materialize([bronze.assets["bz_warehouses"]], resources=bronze.resources)
    evaluations = {e.check_name: e for e in ok.get_asset_check_evaluations()}
    assert set(evaluations) == {"schema_contract", QUALITY_SCORE, KEY_UNIQUENESS}
    assert evaluations[QUALITY_SCORE].passed and evaluations[KEY_UNIQUENESS].passed
    assert evaluations[QUALITY_SCORE].metadata["avg_score"].value == 100.0

    query(fresh_dsn, "UPDATE tests.warehouses SET location = NULL, capacity = -1, updated_at = now()")
    meh = dg.materialize([bronze.assets["bz_warehouses"]], resources=bronze.resources)
    quality = next(e for e in meh.get_asset_check_evaluations() if e.check_name == QUALITY_SCORE)
    meta = {k: v.value for k, v in quality.metadata.items()}
    assert quality.passed and meta["avg_score"] == 88.0  # 100 - 10 (null) - 2 (range)
    assert meta["violations null:location"] == 10 and meta["violations range:capacity"] == 10
    assert meta["gx_counts_match_score"] is True

    query(fresh_dsn, "UPDATE tests.products SET product_name = NULL, category = NULL, unit_price = NULL")
    bad = dg.materialize([bronze.assets["bz_products"]], resources=bronze.resources)
    assert bad.success, "a quality warning does not fail the load"
    quality = next(e for e in bad.get_asset_check_evaluations() if e.check_name == QUALITY_SCORE)
    assert not quality.passed and quality.severity is dg.AssetCheckSeverity.WARN
    meta = {k: v.value for k, v in quality.metadata.items()}
    assert meta["avg_score"] == 70.0 and meta["share_below_80"] == 1.0 and meta["p50_score"] == 70.0
    assert meta["violations null:category"] == 2000
    assert len(meta["failing_keys_sample"]["null:category"]) == 5


def test_key_uniqueness_fails_on_a_duplicated_key(seed_db: SeedDb, tmp_path: Path) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    bronze.materialize("customers")
    uri = bronze.uri("customers")
    one = bronze.table("customers").to_pyarrow_dataset().to_table().slice(0, 1)
    write_deltalake(uri, one.cast(pa.schema(one.schema)), mode="append")
    result = key_uniqueness_result(CONTRACTS["customers"], Storage(str(bronze.root)))
    assert not result.passed and result.severity is dg.AssetCheckSeverity.ERROR
    assert result.metadata["duplicate_rows"].value == 2


def test_the_key_check_of_a_table_its_load_created_reads_no_key_and_still_counts_a_planted_duplicate(
        tmp_path: Path) -> None:
    """A load that created the table from keys it found distinct hands the check a UniqueWrite:
    at that table and version, with the log counting its rows, the check passes without reading a
    file (here: a data file made unreadable); any other commit is another version and is counted."""
    from bronze_assets.lib.delta.merge_result import UniqueWrite
    from bronze_assets.lib.quality.checks import key_uniqueness

    uri = tmp_path / "bz_stock_levels"
    write_deltalake(str(uri), pa.table({"stock_level_id": [7, 8], "record_status": ["ACTIVE"] * 2}))
    dt, storage, stock = DeltaTable(str(uri)), Storage(str(tmp_path)), CONTRACTS["stock_levels"]
    proof = UniqueWrite(dt.metadata().id, dt.version(), 2)
    (data,) = uri.glob("*.parquet")
    intact = data.read_bytes()
    data.write_bytes(b"not parquet")
    outcome = key_uniqueness(stock, storage, written=proof)
    assert outcome.passed
    assert outcome.metadata == {"rows": 2, "duplicate_rows": 0, "duplicate_keys_sample": []}
    assert key_uniqueness(stock, storage).passed  # kept at that version, as a computed outcome is
    storage.delete_file("_bronze_checks/bz_stock_levels.key_uniqueness.json")
    with pytest.raises(Exception, match=r"(?i)parquet"):  # without the proof (nor a kept outcome): read
        key_uniqueness(stock, storage, written=UniqueWrite(proof.table_id, proof.version, 3))
    data.write_bytes(intact)

    write_deltalake(str(uri), pa.table({"stock_level_id": [7], "record_status": ["ACTIVE"]}), mode="append")
    planted = key_uniqueness(stock, storage, written=proof)
    assert not planted.passed and planted.metadata["duplicate_rows"] == 2
    assert planted.metadata["duplicate_keys_sample"] == [{"stock_level_id": 7}]
    # the proof of the right version but another row count: counted, not trusted
    assert not key_uniqueness(stock, storage, written=UniqueWrite(proof.table_id, 1, 4)).passed


def test_a_created_table_passes_its_key_check_from_the_load_and_a_merge_counts_again(
        seed_db: SeedDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The load's create hands its UniqueWrite to the check (no key read); a later MERGE's
    version is counted."""
    from bronze_assets.lib.quality import checks

    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    counted = checks._key_uniqueness
    calls: list[str] = []

    def spy(contract, dt):  # type: ignore[no-untyped-def]
        calls.append(contract.bronze_table)
        return counted(contract, dt)

    monkeypatch.setattr(checks, "_key_uniqueness", spy)
    created = dg.materialize([bronze.assets["bz_warehouses"]], resources=bronze.resources)
    first = _check(created, KEY_UNIQUENESS)
    rows = bronze.table("warehouses").to_pyarrow_dataset().count_rows()
    assert first.passed and first.metadata["rows"].value == rows and calls == []
    query(fresh_dsn, "UPDATE tests.warehouses SET capacity = capacity + 1, updated_at = now() "
                     "WHERE warehouse_id = (SELECT min(warehouse_id) FROM tests.warehouses)")
    merged = dg.materialize([bronze.assets["bz_warehouses"]], resources=bronze.resources)
    assert _check(merged, KEY_UNIQUENESS).passed and calls == ["bz_warehouses"]


def test_the_referential_check_of_a_created_child_reads_its_staged_rows_and_equals_the_tables(
        seed_db: SeedDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child its load created is checked from the staged rows (no scan of its files); the outcome
    equals the one computed from the table, orphans included."""
    from bronze_assets.lib.quality import checks

    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    query(fresh_dsn, "DELETE FROM tests.products WHERE product_id IN (SELECT product_id FROM "
                     "tests.suppliers ORDER BY product_id LIMIT 3)")  # their suppliers are orphans
    bronze.materialize("products")
    scanned: list[str] = []
    scan = checks.scan_columns

    def spy(dt, columns, where=None):  # type: ignore[no-untyped-def]
        scanned.append(dt.table_uri.rstrip("/").rsplit("/", 1)[-1])
        return scan(dt, columns, where)

    monkeypatch.setattr(checks, "scan_columns", spy)
    created = _check(dg.materialize([bronze.assets["bz_suppliers"]], resources=bronze.resources),
                     REFERENTIAL_INTEGRITY)
    assert "bz_suppliers" not in scanned
    Storage(str(bronze.root)).delete_file("_bronze_checks/bz_suppliers.referential_integrity.json")
    computed = referential_integrity_result(CONTRACTS["suppliers"], Storage(str(bronze.root)))
    assert "bz_suppliers" in scanned
    assert {k: v.value for k, v in created.metadata.items()} == \
        {k: v.value for k, v in computed.metadata.items()}
    assert created.passed == computed.passed is False


def _check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == name)


@pytest.mark.parametrize(
    ("ddl", "needle"),
    [
        ("ALTER TABLE tests.orders DROP COLUMN total_amount",
         "column total_amount is missing (expected numeric(12,2))"),
        ("ALTER TABLE tests.orders ALTER COLUMN total_amount TYPE text",
         "column total_amount has type text, expected numeric(12,2)"),
    ],
)
def test_schema_mismatch_fails_quarantines_and_merges_nothing(
    seed_db: SeedDb, tmp_path: Path, ddl: str, needle: str
) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    bronze.materialize("orders", "2025-03-01")
    version = bronze.version("orders")
    march = "order_date >= DATE '2025-03-01' AND order_date < DATE '2025-04-01'"
    (month_rows,) = query(fresh_dsn, f"SELECT count(*) FROM tests.orders WHERE {march}")[0]
    query(fresh_dsn, ddl)

    result = dg.materialize([bronze.assets["bz_orders"]], resources=bronze.resources,
                            partition_key="2025-03-01", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.event_specific_data.error)
    assert "bz_orders" in message and needle in message and "bz_quarantine" in message
    check = _check(result, "schema_contract")
    assert not check.passed and check.severity is dg.AssetCheckSeverity.ERROR
    assert check.metadata["quarantined_rows"].value == month_rows

    assert bronze.version("orders") == version, "nothing may be merged"
    quarantine = DeltaTable(str(tmp_path / "bronze" / "bz_quarantine")).to_pyarrow_dataset().to_table()
    assert quarantine.num_rows == month_rows
    assert set(quarantine["table_name"].to_pylist()) == {"orders"}
    assert needle in quarantine["reason"][0].as_py()
    record = json.loads(quarantine["record"][0].as_py())
    assert "order_id" in record and "2025-03" in record["order_date"]


def test_new_source_column_evolves_bronze_and_leaves_hashes_alone(seed_db: SeedDb, tmp_path: Path) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    bronze.materialize("customers")
    before = bronze.read("customers").select("customer_id", "record_hash")
    query(fresh_dsn, "ALTER TABLE tests.customers ADD COLUMN loyalty_tier text DEFAULT 'gold'")
    result = dg.materialize([bronze.assets["bz_customers"]], resources=bronze.resources)
    assert result.success
    check = _check(result, "schema_contract")
    assert check.passed and check.metadata["new_columns"].value == "loyalty_tier (text)"
    after = bronze.read("customers")
    assert after.select("customer_id", "record_hash").sort("customer_id").equals(before.sort("customer_id"))
    assert set(after["loyalty_tier"]) == {"gold"}, "existing rows get the new column's values"
    history = bronze.table("customers").history(1)[0]
    assert history["bronze.new_columns"] == "loyalty_tier"
    query(fresh_dsn, "UPDATE tests.customers SET loyalty_tier = 'silver', updated_at = now() "
                     "WHERE customer_id = 3")
    dg.materialize([bronze.assets["bz_customers"]], resources=bronze.resources)
    row = bronze.read("customers").filter(pl.col("customer_id") == 3).to_dicts()[0]
    assert row["loyalty_tier"] == "silver"
    again = dg.materialize([bronze.assets["bz_customers"]], resources=bronze.resources)
    meta = next(e for e in again.get_asset_materialization_events()).materialization.metadata
    assert meta["committed"].value is False, "once evolved, unchanged rows are not rewritten"


def test_orphan_counts_equal_the_injected_orphans(fresh_dsn: str, tmp_path: Path) -> None:
    report = seed_source(fresh_dsn, SeedOptions(scale=0.1, defect_rate=0.01, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    for name in ("products", "warehouses", "customers", "orders"):  # parents first
        bronze.load_direct(name)
    for child in ("inventory", "suppliers", "order_details", "stock_levels"):
        contract = CONTRACTS[child]
        bronze.load_direct(child)
        result = referential_integrity_result(contract, Storage(str(tmp_path / "bronze")))
        assert not result.passed and result.severity is dg.AssetCheckSeverity.WARN
        for fk in contract.foreign_keys:
            label = f"{fk.column} -> {fk.parent_table}.{fk.parent_column}"
            injected = report.defects[child][f"orphan:{fk.column}"]
            assert result.metadata[f"orphans {label}"].value == injected, f"{child} {label}"
            rate = result.metadata[f"orphan_rate {label}"].value
            non_null = report.rows[child] - report.defects[child][f"null:{fk.column}"]
            assert rate == pytest.approx(injected / non_null, abs=1e-6)


def test_referential_check_runs_in_dagster_and_passes_on_clean_data(seed_db: SeedDb, tmp_path: Path) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    bronze.materialize("products")
    result = dg.materialize([bronze.assets["bz_suppliers"]], resources=bronze.resources)
    check = _check(result, "referential_integrity")
    assert check.passed and check.metadata["orphans product_id -> products.product_id"].value == 0


def test_data_docs_rendered_and_linked(seed_db: SeedDb, tmp_path: Path) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    result = dg.materialize([bronze.assets["bz_products"]], resources=bronze.resources)
    url = _check(result, QUALITY_SCORE).metadata["data_docs"].value
    assert url.startswith("file://") and "gx_docs/bz_products" in url  # BRONZE_DATA_DIR is tmp_path/data
    page = Path(url.removeprefix("file://"))
    assert page.is_file() and str(tmp_path / "data") in str(page)
    html = page.read_text()
    assert "product_name" in html and "sku" in html
    assert (tmp_path / "data" / "gx_docs" / "bz_products" / "index.html").is_file()


def test_checks_can_be_left_out_of_a_run(seed_db: SeedDb, tmp_path: Path) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    asset = bronze.assets["bz_suppliers"]
    result = dg.materialize([asset], resources=bronze.resources,
                            selection=dg.AssetSelection.assets(asset).without_checks())
    assert result.success and result.get_asset_check_evaluations() == []
    assert not (tmp_path / "data" / "gx_docs" / "bz_suppliers").exists(), "GX did not run"
    assert bronze.read("suppliers").height == 10


def test_unreadable_records_score_the_schema_penalty_keep_their_raw_value_and_are_quarantined(
    seed_db: SeedDb, tmp_path: Path
) -> None:
    """Policy ``rescue``: a column turned into text (semi-structured input) is read per record."""
    fresh_dsn = seed_db(SeedOptions(scale=0.2, defect_rate=0.0, as_of=AS_OF))
    contract = replace(CONTRACTS["warehouses"], on_type_change=TypeChangePolicy.RESCUE)
    query(fresh_dsn, "ALTER TABLE tests.warehouses ALTER COLUMN capacity TYPE text")
    query(fresh_dsn, "UPDATE tests.warehouses SET capacity = 'about 500' WHERE warehouse_id = 3")
    query(fresh_dsn, "UPDATE tests.warehouses SET capacity = '12e99' WHERE warehouse_id = 4")
    query(fresh_dsn, "UPDATE tests.warehouses SET capacity = NULL WHERE warehouse_id = 5")
    asset = build_bronze_asset(contract)
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    result = dg.materialize([asset], resources=bronze.resources)
    assert result.success
    check = _check(result, "schema_contract")
    assert check.passed and check.metadata["quarantined_rows"].value == 2
    assert check.metadata["read_per_record"].value == "capacity: integer <- text"

    frame = bronze.read("warehouses").sort("warehouse_id")
    (rows,) = query(fresh_dsn, "SELECT count(*) FROM tests.warehouses")[0]
    assert frame.height == rows, "nothing is dropped"
    by_id = {r["warehouse_id"]: r for r in frame.to_dicts()}
    assert by_id[3]["capacity"] is None and by_id[3]["data_quality_score"] == 60, "−40 once, no null penalty"
    assert by_id[4]["capacity"] is None and by_id[4]["data_quality_score"] == 60
    assert by_id[5]["data_quality_score"] == 90, "a real NULL is a null violation only"
    assert by_id[6]["capacity"] is not None and by_id[6]["data_quality_score"] == 100
    hashes = dict(query(fresh_dsn, spec_hash_sql("warehouses")))
    assert {k: r["record_hash"] for k, r in by_id.items()} == hashes, "hash of the raw text, as specified"

    quarantine = DeltaTable(str(tmp_path / "bronze" / "bz_quarantine")).to_pyarrow_table().to_pylist()
    records = sorted((json.loads(q["record"]) for q in quarantine), key=lambda r: r["warehouse_id"])
    assert records == [{"warehouse_id": 3, "capacity": "about 500"}, {"warehouse_id": 4, "capacity": "12e99"}]
    assert "capacity has type text, expected integer" in quarantine[0]["reason"]


def test_type_change_fails_by_default() -> None:
    assert all(c.on_type_change is TypeChangePolicy.FAIL for c in CONTRACTS.values())


def _generated(name: str, rows: int) -> list[pa.RecordBatch]:
    contract = CONTRACTS[name]
    options = SeedOptions(scale=rows / contract.seed_rows, defect_rate=0.02, as_of=AS_OF)
    return InventoryGenerator(options).generate(contract).data.to_batches(max_chunksize=700)


def _linked_pages(index: Path) -> set[str]:
    return set(re.findall(r"validations/[^\"'?]+\.html", index.read_text()))


def test_runner_is_kept_per_table_and_reused_with_the_same_results(tmp_path: Path) -> None:
    """A tick checks several tables in one process: each runner (context, suite, checkpoint) is
    built once, and a reused runner reports exactly what a new one reports."""
    day = AS_OF.date()
    details, orders = CONTRACTS["order_details"], CONTRACTS["orders"]
    details_batches, orders_batches = _generated("order_details", 3000), _generated("orders", 2000)
    docs = tmp_path / "gx_docs"
    first = suite_runner(details, day, docs / "bz_order_details")
    one = first.validate_batches(details_batches)
    other = suite_runner(orders, day, docs / "bz_orders").validate_batches(orders_batches)
    again = suite_runner(details, day, docs / "bz_order_details")
    assert again is first, "same table, day and docs folder: the runner is reused"
    two = again.validate_batches(details_batches)
    fresh = SuiteRunner(details, day).validate_batches(details_batches)
    for report in (one, two):
        assert report.agree and sum(report.gx_counts.values()) > 0
        assert (report.rows, report.gx_counts, report.vector_counts, report.failing_keys) == (
            fresh.rows, fresh.gx_counts, fresh.vector_counts, fresh.failing_keys)
    assert other.agree and other.rows == 2000
    assert suite_runner(details, day, None) is not first, "another docs folder, another runner"

    for report, table in ((one, "bz_order_details"), (two, "bz_order_details"), (other, "bz_orders")):
        assert report.docs_url and f"gx_docs/{table}/" in report.docs_url
    assert one.docs_url != two.docs_url
    # as with a new runner per check: the docs keep (and the index links) the latest check only
    assert Path(two.docs_url.removeprefix("file://")).is_file()
    assert not Path(one.docs_url.removeprefix("file://")).exists()
    pages = _linked_pages(docs / "bz_order_details" / "index.html")
    assert pages and all(p in two.docs_url for p in pages)


def test_data_docs_are_rendered_once_per_validation_with_a_page_per_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunked validation renders its Data Docs once at its end (GX's docs action rendered the
    suite's page and the index again after every chunk), and the index links every chunk's page."""
    from bronze_assets.lib.quality import validate

    monkeypatch.setattr(validate, "CHUNK_ROWS", 1000)
    runner = SuiteRunner(CONTRACTS["orders"], AS_OF.date(), tmp_path / "bz_orders")
    builds: list[int] = []
    original = runner.context.build_data_docs

    def spy(*args: Any, **kwargs: Any) -> Any:
        builds.append(len(kwargs.get("resource_identifiers") or []))
        return original(*args, **kwargs)

    monkeypatch.setattr(runner.context, "build_data_docs", spy)
    report = runner.validate_batches(_generated("orders", 3000))
    assert builds == [3 + 1], "one build: the three chunks' results and the suite"
    pages = _linked_pages(tmp_path / "bz_orders" / "index.html")
    assert len(pages) == 3 and all((tmp_path / "bz_orders" / p).is_file() for p in pages)
    assert report.docs_url and report.docs_url.removeprefix("file://").endswith(tuple(pages))


def test_narrow_integers_reach_gx_as_int64_with_the_same_counts() -> None:
    """GX's range expectation compares int64 and float64 columns vectorised but any other integer
    dtype value by value (a NULL-free int32 column of 480k rows: 0.19 s against 0.08 s per
    chunk): int32 columns are handed over as int64, and GX counts the same violations."""
    contract, day = CONTRACTS["order_details"], AS_OF.date()
    table = pa.table({"order_detail_id": pa.array([1, 2, 3, 3], pa.int64()),
                      "order_id": pa.array([10, 11, 12, 13], pa.int64()),
                      "product_id": pa.array([5, 6, 7, 8], pa.int32()),
                      "quantity_ordered": pa.array([2, 0, -1, 4], pa.int32()),
                      "unit_price": pa.array([1, 2, 0, -3], pa.decimal128(10, 2))})
    runner = SuiteRunner(contract, day)
    dtypes: list[dict[str, str]] = []
    original = runner.checkpoint.run

    def spy(*args: Any, **kwargs: Any) -> Any:
        frame = kwargs["batch_parameters"]["dataframe"]
        dtypes.append({c: str(t) for c, t in frame.dtypes.items()})
        return original(*args, **kwargs)

    runner.checkpoint = SimpleNamespace(run=spy)
    report = runner.validate(table)
    assert dtypes[0]["quantity_ordered"] == "int64" and dtypes[0]["product_id"] == "int64"
    assert dtypes[0]["unit_price"] == "float64"
    assert report.gx_counts == {"null:order_id": 0, "null:product_id": 0, "null:quantity_ordered": 0,
                                "range:quantity_ordered": 2, "range:unit_price": 1,
                                "unique:order_detail_id": 2}
    assert report.agree


def test_data_docs_templates_are_compiled_once_per_process(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """GX builds new Jinja environments for every docs update; the cached views reuse the
    compiled templates, so a later check (even of another table) compiles none."""
    import jinja2

    day = AS_OF.date()
    suite_runner(CONTRACTS["warehouses"], day, tmp_path / "a").validate_batches(_generated("warehouses", 50))
    compiled: list[str | None] = []
    original = jinja2.Environment.compile

    def spy(self: jinja2.Environment, source: str, name: str | None = None, *args: object, **kwargs: object):
        compiled.append(name)
        return original(self, source, name, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", spy)
    runner = suite_runner(CONTRACTS["products"], day, tmp_path / "b")
    report = runner.validate_batches(_generated("products", 100))
    assert compiled == []
    assert report.docs_url is not None
    page = Path(report.docs_url.removeprefix("file://")).read_text()
    assert "product_name" in page and "sku" in page
    assert (tmp_path / "b" / "index.html").is_file()


def test_key_and_referential_checks_count_orphans_and_duplicates_of_the_current_versions(
        tmp_path: Path) -> None:
    """The key and referential checks query the tables' current versions (DataFusion, streamed):
    ACTIVE rows only, NULL is no orphan, a parent key counts when ACTIVE, an int32 foreign key
    joins an int64 key, and a new version is read again."""
    def write(table: str, mode: str = "overwrite", schema: dict | None = None, **columns: list) -> None:
        write_deltalake(str(tmp_path / table), pl.DataFrame(columns, schema_overrides=schema).to_arrow(),
                        mode=mode)

    active, deleted = "ACTIVE", "DELETED"
    write("bz_products", product_id=[1, 2, 3], record_status=[active, active, deleted])
    write("bz_warehouses", warehouse_id=[1, 2], record_status=[active, active])
    write("bz_inventory", schema={"product_id": pl.Int32}, inventory_id=[10, 11, 12, 13],
          product_id=[1, 3, None, 9], warehouse_id=[1, 2, 2, 5],
          record_status=[active, active, active, deleted])
    write("bz_stock_levels", stock_level_id=[7, 7], warehouse_id=[2, 3], product_id=[2, 2],
          record_status=[active, active])
    storage = Storage(str(tmp_path))
    inventory, stock = CONTRACTS["inventory"], CONTRACTS["stock_levels"]

    ku = key_uniqueness_result(inventory, storage)
    ri = referential_integrity_result(inventory, storage)
    assert ku.passed and ku.metadata["rows"].value == 4
    meta = {k: v.value for k, v in ri.metadata.items()}
    # product 3 is DELETED in the parent; the NULL is no orphan; row 13 is not ACTIVE
    assert meta["orphans product_id -> products.product_id"] == 1
    assert meta["orphan_rate product_id -> products.product_id"] == 0.5
    assert meta["orphan_values_sample product_id -> products.product_id"] == [3]
    assert meta["orphans warehouse_id -> warehouses.warehouse_id"] == 0
    assert not ri.passed

    ku = key_uniqueness_result(stock, storage)
    ri = referential_integrity_result(stock, storage)
    assert not ku.passed and ku.metadata["duplicate_rows"].value == 2
    assert ku.metadata["duplicate_keys_sample"].value == [{"stock_level_id": 7}]
    assert ri.metadata["orphans warehouse_id -> warehouses.warehouse_id"].value == 1

    write("bz_products", mode="append", product_id=[9], record_status=[active])
    write("bz_inventory", mode="append", schema={"product_id": pl.Int32}, inventory_id=[14], product_id=[4],
          warehouse_id=[1], record_status=[active])
    ri = referential_integrity_result(inventory, storage)
    assert ri.metadata["orphans product_id -> products.product_id"].value == 2  # 3 and 4
    assert ri.metadata["orphan_values_sample product_id -> products.product_id"].value == [3, 4]


def _staged_file(name: str, rows: int, tmp_path: Path) -> Path:
    from bronze_assets.lib.delta.staging import write_stream

    batches = _generated(name, rows)
    path, _ = write_stream(batches, batches[0].schema, f"bz_{name}", tmp_path)
    return path


_SERVICE_FOLDERS: list[Path] = []


@pytest.fixture(autouse=True, scope="module")
def _remove_service_folders() -> Iterator[None]:
    """The tests' own service folders (under the system's temporary folder) removed at the end."""
    yield
    for folder in _SERVICE_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def _service_folder() -> Path:
    """A service folder of the test's own, short (a socket path has ≤ 107 bytes), removed after
    the module's tests."""
    _SERVICE_FOLDERS.append(Path(tempfile.mkdtemp(prefix="gx-")))
    return _SERVICE_FOLDERS[-1] / "service"


def _service_settings(idle_seconds: int = 60) -> Settings:
    """Settings naming a service folder of the test's own, so the service it starts (and maybe
    kills) is not the one the other tests share."""
    folder = _service_folder()
    return Settings.from_env({"BRONZE_GX_SERVICE_DIR": str(folder),
                              "BRONZE_GX_SERVICE_IDLE_SECONDS": str(idle_seconds)})


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text():
            return True
        time.sleep(0.2)
    return False


def test_the_validation_service_reports_what_an_in_process_runner_reports(tmp_path: Path) -> None:
    """GX validates the staged file in the shared validation service (off the load's GIL): the
    same counts, failing keys and a Data Docs page as a runner in this process."""
    from bronze_assets.lib.quality import worker

    contract, day = CONTRACTS["orders"], AS_OF.date()
    settings = Settings.from_env()
    path = _staged_file("orders", 3000, tmp_path)
    try:
        worker.warm(settings, contract, day, tmp_path / "docs")
        remote = worker.report(worker.validate_staged(settings, contract, day, tmp_path / "docs", path),
                               "bz_orders")
        local = SuiteRunner(contract, day).validate_batches(_generated("orders", 3000))
    finally:
        path.unlink()
    assert remote.rows == local.rows == 3000
    assert remote.gx_counts == local.gx_counts and remote.agree
    assert sum(remote.gx_counts.values()) > 0, "the generated defects are found"
    assert remote.failing_keys == local.failing_keys
    assert remote.docs_url is not None and Path(remote.docs_url.removeprefix("file://")).is_file()
    assert worker.service_pid() not in (None, os.getpid())
    assert (worker.peak_rss_bytes() or 0) > 50 * 2**20, "GX and pandas are resident in the service"


def test_runs_share_one_service_in_a_private_folder_and_it_ends_when_unused(tmp_path: Path) -> None:
    """A second process (another run) is served by the service the first one started; the
    socket's folder is 0700 and the socket 0600; the service ends once unused for its idle time."""
    from bronze_assets.lib.quality import service, worker

    settings = _service_settings(idle_seconds=2)
    contract, day = CONTRACTS["warehouses"], AS_OF.date()
    worker.shutdown()
    try:
        worker.warm(settings, contract, day, None).result(timeout=120)
        pid = worker.service_pid()
        other = subprocess.run(
            [sys.executable, "-c",
             "from datetime import date; from bronze_assets.contracts import CONTRACTS; "
             "from bronze_assets.lib.quality import worker; from bronze_assets.settings import Settings; "
             f"worker.warm(Settings.from_env(), CONTRACTS['warehouses'], date({day.year}, {day.month}, "
             f"{day.day}), None).result(timeout=120); print(worker.service_pid())"],
            env=os.environ | {"BRONZE_GX_SERVICE_DIR": str(settings.gx_service_dir),
                              "BRONZE_GX_SERVICE_IDLE_SECONDS": "2"},
            capture_output=True, text=True, check=True)
        assert int(other.stdout.split()[-1]) == pid, "the second run used the running service"
        sock = service.socket_path(settings.gx_service_dir)
        assert stat.S_IMODE(settings.gx_service_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_ISSOCK(sock.stat().st_mode)
    finally:
        worker.shutdown()
    assert pid is not None and _gone(pid, 30), "the service ended once nobody used it"
    assert not sock.exists()


def test_a_service_folder_others_can_open_is_refused(tmp_path: Path) -> None:
    from bronze_assets.lib.quality import service

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(service.ServiceDirError, match=r"mode 0700.*BRONZE_GX_SERVICE_DIR"):
        service.socket_path(shared)


def test_the_service_is_named_by_the_code_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Code of another version (a deploy, an edited module) gets a service of its own."""
    from bronze_assets.lib.quality import service

    package = tmp_path / "bronze_assets"
    package.mkdir()
    module = package / "x.py"
    module.write_text("A = 1\n")
    monkeypatch.setattr(service, "PACKAGE_ROOT", tmp_path)
    before = service.fingerprint()
    assert service.fingerprint() == before
    module.write_text("A = 22\n")
    assert service.fingerprint() != before


def test_a_killed_service_fails_the_check_naming_the_table_and_the_next_one_recovers(tmp_path: Path) -> None:
    from bronze_assets.lib.quality import worker

    settings = _service_settings()
    contract, day = CONTRACTS["warehouses"], AS_OF.date()
    path = _staged_file("warehouses", 200, tmp_path)
    worker.shutdown()
    try:
        worker.warm(settings, contract, day, None).result(timeout=120)
        pid = worker.service_pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the request below cannot be answered before the kill
        pending = worker.validate_staged(settings, contract, day, None, path)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(worker.QualityWorkerError,
                           match=r"bz_warehouses: the GX validation service .* ended before it answered"):
            worker.report(pending, "bz_warehouses")
        again = worker.report(worker.validate_staged(settings, contract, day, None, path), "bz_warehouses")
        assert again.rows == 200 and worker.service_pid() not in (None, pid)
    finally:
        path.unlink()
        worker.stop_service(settings)


def test_a_failing_validation_raises_in_the_caller(tmp_path: Path) -> None:
    from bronze_assets.lib.quality import worker

    missing = tmp_path / "gone.arrow"
    with pytest.raises(FileNotFoundError):
        worker.report(worker.validate_staged(Settings.from_env(), CONTRACTS["warehouses"], AS_OF.date(), None,
                                             missing), "bz_warehouses")


def _in_service_setup(tmp_path: Path, code: str) -> Any:
    """Run ``code`` in a fresh interpreter after the validation service's import setup; returns
    the JSON it prints last."""
    setup = ("import json, sys\n"
             "from bronze_assets.lib.quality import service\n"
             "service.block_optional_backends(); service.defer_unused_modules()\n")
    out = subprocess.run([sys.executable, "-c", setup + code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    return json.loads(out.stdout.splitlines()[-1])


def test_the_service_imports_gx_without_collections_and_freezes_it(tmp_path: Path) -> None:
    """The service's GX import runs with the collector off (what it builds lives as long as the
    service; collections in between only walked it again: ≈6 % of the import's CPU), then the
    collector is on again and the import is frozen out of its sight."""
    result = _in_service_setup(tmp_path, (
        "import gc\n"
        "runs = []\n"
        "gc.callbacks.append(lambda phase, info: runs.append(phase) if phase == 'start' else None)\n"
        "service._warm_import()\n"
        "print(json.dumps({'collections': len(runs), "
        "'enabled': gc.isenabled(), 'frozen': gc.get_freeze_count(), "
        "'gx': 'great_expectations.checkpoint' in sys.modules}))\n"))
    assert result["gx"] and result["enabled"]
    assert result["collections"] == 1, "only the collection before the freeze (400 with the collector on)"
    assert result["frozen"] > 100_000


def test_failing_keys_are_each_rules_first_five_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule's sample of failing keys is the keys of its first five failing rows in batch order,
    whether one chunk holds them or several (later chunks look only for the rules whose sample is
    not full yet)."""
    from bronze_assets.lib.enrich.score import violations
    from bronze_assets.lib.quality import validate

    contract, day = CONTRACTS["orders"], AS_OF.date()
    options = SeedOptions(scale=3000 / contract.seed_rows, defect_rate=0.003, as_of=AS_OF)
    data = InventoryGenerator(options).generate(contract).data
    frame = pl.from_arrow(data).with_row_index("row")
    assert isinstance(frame, pl.DataFrame)
    first = {rule: frame.filter(expr).head(5) for rule, expr in violations(contract, day).items()}
    expected = {rule: rows.get_column("order_id").to_list() for rule, rows in first.items() if rows.height}
    assert any(rows.get_column("row").max() >= 1400 for rows in first.values() if rows.height), \
        "a sample spread over chunks (two 700-row batches make the first)"
    monkeypatch.setattr(validate, "CHUNK_ROWS", 1000)
    report = SuiteRunner(contract, day).validate_batches(data.to_batches(max_chunksize=700))
    assert report.failing_keys == expected


def test_the_service_defers_what_the_suites_do_not_use(tmp_path: Path) -> None:
    """In the service's import setup GX loads without ``scipy.stats`` and ``altair`` (its
    distribution expectations and charts), validates a suite to the same counts as a runner here,
    and the deferred modules still work when something reads them."""
    result = _in_service_setup(tmp_path, (
        "from datetime import date\n"
        "from bronze_assets.contracts import CONTRACTS\n"
        "from bronze_assets_tests.test_quality import _generated\n"
        "from bronze_assets.lib.quality.validate import SuiteRunner\n"
        f"report = SuiteRunner(CONTRACTS['customers'], date({AS_OF.year}, {AS_OF.month}, {AS_OF.day}))"
        ".validate_batches(_generated('customers', 2000))\n"
        "loaded = sorted(m for m in ('scipy.stats._stats_py', 'altair.vegalite') if m in sys.modules)\n"
        "import scipy.stats\n"
        "print(json.dumps({'loaded': loaded, 'counts': report.gx_counts,\n"
        "                  'entropy': float(scipy.stats.entropy([0.5, 0.5]))}))\n"))
    assert result["loaded"] == [], "GX imported without the deferred modules"
    here = SuiteRunner(CONTRACTS["customers"], AS_OF.date()).validate_batches(_generated("customers", 2000))
    assert result["counts"] == here.gx_counts and sum(here.gx_counts.values()) > 0
    assert abs(result["entropy"] - 0.693147) < 1e-5, "a deferred module loads when it is used"


def test_a_date_range_is_compared_in_one_loop_with_gx_own_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """A range rule on a column of dates (``date`` objects in pandas) is compared in one NumPy loop
    instead of GX's Python call per value, and GX reports what its own condition reports: success,
    counts and unexpected values of every expectation."""
    import pandas as pd
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations import registry

    contract, day = CONTRACTS["orders"], AS_OF.date()
    table = pa.Table.from_batches(_generated("orders", 3000))
    assert pa.types.is_date32(table.schema.field("order_date").type)
    mapped: list[str] = []
    series_map = pd.Series.map

    def counted(self: pd.Series, func: Any, *args: Any, **kwargs: Any) -> Any:
        mapped.append(getattr(func, "__name__", ""))
        return series_map(self, func, *args, **kwargs)

    monkeypatch.setattr(pd.Series, "map", counted)

    def results() -> list[tuple[Any, ...]]:
        runner = SuiteRunner(contract, day)
        found: list[tuple[Any, ...]] = []
        original = runner.checkpoint.run

        def spy(*args: Any, **kwargs: Any) -> Any:
            run = original(*args, **kwargs)
            for result in run.run_results.values():
                found.extend((r.expectation_config.meta["rule"], r.success, r.result.get("unexpected_count"),
                              r.result.get("partial_unexpected_list")) for r in result.results)
            return run

        runner.checkpoint = SimpleNamespace(run=spy)
        runner.validate(table)
        return found

    ours = results()
    assert "is_between" not in mapped, "no Python call per date"
    providers = registry._registered_metrics["column_values.between.condition"]["providers"]
    metric_class, condition = providers[PandasExecutionEngine.__name__]
    monkeypatch.setitem(providers, PandasExecutionEngine.__name__, (metric_class, condition.__wrapped__))
    gx_own = results()
    assert "is_between" in mapped, "GX's own condition maps each date"
    assert repr(ours) == repr(gx_own)  # as text: the not-null rule's unexpected values are NaN
    assert any(rule == "range:order_date" and count for rule, _ok, count, _values in ours)


def test_the_service_imports_nothing_of_the_load(tmp_path: Path) -> None:
    """The service's tasks read staged files with pyarrow alone: importing them loads neither
    DuckDB, delta-rs nor the source client (≈40 MB of the service's memory)."""
    loaded = _in_service_setup(tmp_path, (
        "from bronze_assets.lib.quality.worker import TASKS\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'duckdb', 'deltalake', 'adbc_driver_postgresql', 'dagster'})))\n"))
    assert loaded == []


def test_gx_keeps_no_chunk_after_validating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk by chunk, the counts add up to a single validation's, and GX's pandas engine holds
    no validated frame nor its metrics afterwards (memory holds one chunk at a time, and a
    table's runner keeps nothing of it until the table's next validation)."""
    from bronze_assets.lib.quality import validate

    contract, day = CONTRACTS["orders"], AS_OF.date()
    whole = SuiteRunner(contract, day).validate_batches(_generated("orders", 3000))
    monkeypatch.setattr(validate, "CHUNK_ROWS", 1000)
    runner = SuiteRunner(contract, day)
    chunked = runner.validate_batches(_generated("orders", 3000))
    assert (chunked.rows, chunked.vector_counts) == (whole.rows, whole.vector_counts)
    # uniqueness is per chunk in GX: the other rules' counts add up exactly
    assert {r: n for r, n in chunked.gx_counts.items() if not r.startswith("unique:")} == {
        r: n for r, n in whole.gx_counts.items() if not r.startswith("unique:")}
    engine = runner.context.data_sources.get(validate.BATCHES_SOURCE).get_execution_engine()
    assert not engine.batch_manager.batch_data_cache and not engine.batch_manager.batch_cache
    # nor the metrics it computed on the last chunk (row masks, column values)
    assert not engine._metric_cache


def test_the_service_keeps_nothing_of_a_validation_with_data_docs(tmp_path: Path) -> None:
    """GX's checkpoint run with Data Docs leaves reference cycles holding its last chunk; the
    service collects them once the validation is answered, so no frame of it is left (with the
    automatic collector off, as it may not run before the next, larger, validation)."""
    import gc
    import io
    import pickle

    import pandas as pd

    from bronze_assets.lib.delta.staging import write_stream
    from bronze_assets.lib.quality import service
    from bronze_assets.lib.quality.worker import TASKS

    contract, day = CONTRACTS["orders"], AS_OF.date()
    batches = _generated("orders", 3000)
    path, _ = write_stream(batches, batches[0].schema, "bz_orders", tmp_path)
    args = (contract, day, tmp_path / "gx_docs" / "bz_orders")
    server = service.Service(tmp_path / "gx.sock", 60, TASKS)

    def ask(task: str, *task_args: Any) -> Any:
        answers = io.BytesIO()
        server.answer(io.BytesIO(pickle.dumps((0, task, task_args))), answers)
        _, ok, value = pickle.loads(answers.getvalue())
        assert ok, value
        return value

    ask("build", *args)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        report = ask("validate", *args, path)
        left = [o for o in gc.get_objects() if isinstance(o, (pd.DataFrame, pd.Series))]
    finally:
        if enabled:
            gc.enable()
    assert report.rows == 3000 and report.docs_url
    assert not left, f"{len(left)} pandas objects of the validation are left"


def _planted_order_details(rows: int) -> pa.Table:
    """Generated order details with NULLs in every column (so each rule drops other rows first),
    non-positive quantities and prices, and duplicated keys."""
    table = pa.Table.from_batches(_generated("order_details", rows))
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    for i in range(0, rows, 37):
        columns["order_id"][i] = None
    for i in range(5, rows, 41):
        columns["quantity_ordered"][i] = None
    for i in range(9, rows, 43):
        columns["unit_price"][i] = None
    for i in range(13, rows, 29):
        columns["quantity_ordered"][i] = -i
    for i in range(17, rows, 31):
        columns["order_detail_id"][i] = columns["order_detail_id"][i - 1]
    return pa.table({name: pa.array(values, table.schema.field(name).type)
                     for name, values in columns.items()})


def _gx_results(runner: SuiteRunner, table: pa.Table) -> str:
    """Every expectation's GX result (success, counts, partial unexpected list) of one validation,
    as JSON (NaN spelled as such)."""
    results: list[Any] = []
    original = runner.checkpoint.run

    def keep(*args: Any, **kwargs: Any) -> Any:
        run = original(*args, **kwargs)
        for result in run.run_results.values():
            results.extend((r.expectation_config.meta["rule"], r.success, r.result) for r in result.results)
        return run

    runner.checkpoint = SimpleNamespace(run=keep)
    runner.validate(table)
    return json.dumps(results, default=str)


def test_gx_tests_a_column_on_that_column_alone_with_gx_own_results(tmp_path: Path) -> None:
    """A column's expectations get a one-column frame from GX's pandas engine, and its unexpected
    values are taken from the column alone (GX dropped NULL rows from the whole frame for each
    rule, twice): GX's results, partial unexpected lists included, equal those of GX unchanged."""
    from great_expectations.core.metric_domain_types import MetricDomainTypes
    from great_expectations.execution_engine import PandasExecutionEngine

    contract, day = CONTRACTS["order_details"], AS_OF.date()
    runner = SuiteRunner(contract, day)
    widths: list[int] = []
    narrowed = PandasExecutionEngine.get_compute_domain

    def spy(self: Any, domain_kwargs: dict, domain_type: Any, accessor_keys: Any = None) -> Any:
        data, compute, accessor = narrowed(self, domain_kwargs, domain_type, accessor_keys)
        if MetricDomainTypes(domain_type) is MetricDomainTypes.COLUMN:
            widths.append(data.shape[1])
        return data, compute, accessor

    table = _planted_order_details(3000)
    try:
        PandasExecutionEngine.get_compute_domain = spy  # type: ignore[method-assign]
        here = _gx_results(runner, table)
    finally:
        PandasExecutionEngine.get_compute_domain = narrowed  # type: ignore[method-assign]
    assert widths and set(widths) == {1}, "every column rule is computed on its column alone"
    gx_own = _in_service_setup(tmp_path, (
        "from datetime import date\n"
        "from bronze_assets.contracts import CONTRACTS\n"
        "from bronze_assets.lib.quality import validate\n"
        "from bronze_assets_tests.test_quality import _gx_results, _planted_order_details\n"
        "validate._narrow_column_domains = lambda: None\n"
        f"day = date({day.year}, {day.month}, {day.day})\n"
        "runner = validate.SuiteRunner(CONTRACTS['order_details'], day)\n"
        "print(json.dumps(_gx_results(runner, _planted_order_details(3000))))\n"))
    assert here == gx_own
    failed = {rule: result["partial_unexpected_list"] for rule, success, result in json.loads(here)
              if not success}
    assert {"null:order_id", "null:quantity_ordered", "range:quantity_ordered",
            "unique:order_detail_id"} <= set(failed), "the planted defects are found"
    quantities = [q for q in table.column("quantity_ordered").to_pylist() if q is not None and q <= 0]
    assert failed["range:quantity_ordered"] == quantities[:5], "the first unexpected values, in row order"


def test_a_gx_without_the_copied_internals_validates_with_its_own_engine(tmp_path: Path) -> None:
    """The narrowed column rules copy GX internals (its unexpected values, its helpers); a GX
    whose internals differ (another version: here one helper missing) keeps its own engine, with
    GX's own results, where every check failed to start (ImportError)."""
    day = AS_OF.date()
    code = ("from datetime import date\n"
            "from bronze_assets.contracts import CONTRACTS\n"
            "from bronze_assets.lib.quality import validate\n"
            "from bronze_assets_tests.test_quality import _gx_results, _planted_order_details\n"
            "{setup}"
            f"day = date({day.year}, {day.month}, {day.day})\n"
            "runner = validate.SuiteRunner(CONTRACTS['order_details'], day)\n"
            "print(json.dumps(_gx_results(runner, _planted_order_details(3000))))\n")
    other_gx = _in_service_setup(tmp_path, code.format(setup=(
        "from great_expectations.expectations.metrics.map_metric_provider import (\n"
        "    column_map_condition_auxilliary_methods)\n"  # GX's own has its copy: works as before
        "from great_expectations.expectations.metrics import util\n"
        "del util.get_dbms_compatible_metric_domain_kwargs\n")))
    gx_own = _in_service_setup(tmp_path, code.format(setup="validate._narrow_column_domains = lambda: None\n"
                                                           ))
    assert other_gx == gx_own and "exception" not in other_gx.lower()


def test_data_docs_copy_gx_static_assets_only_when_a_site_lacks_them(tmp_path: Path) -> None:
    """A site gets GX's static assets (fonts, images, styles: 4 MB) byte for byte on its first
    validation; later validations write none of them again, but restore one removed or changed."""
    from bronze_assets.lib.quality import docs

    site = tmp_path / "bz_warehouses"
    runner = suite_runner(CONTRACTS["warehouses"], AS_OF.date(), site)
    runner.validate_batches(_generated("warehouses", 50))
    sources = {p.relative_to(docs.STATIC_SOURCE): p for p in docs.STATIC_SOURCE.rglob("*")
               if p.is_file() and p.name != ".DS_Store"}
    assert sources
    assert all((site / "static" / rel).read_bytes() == p.read_bytes() for rel, p in sources.items())
    styles = next(rel for rel in sources if rel.name == "data_docs_default_styles.css")
    removed = next(rel for rel in sources if rel.suffix == ".otf")
    (site / "static" / removed).unlink()
    (site / "static" / styles).write_text("/* edited */")
    kept = {rel: (site / "static" / rel).stat().st_mtime_ns for rel in sources
            if rel not in (styles, removed)}
    report = runner.validate_batches(_generated("warehouses", 50))
    assert report.docs_url and Path(report.docs_url.removeprefix("file://")).is_file()
    assert {rel: (site / "static" / rel).stat().st_mtime_ns for rel in kept} == kept, "none written again"
    for rel in (styles, removed):
        assert (site / "static" / rel).read_bytes() == sources[rel].read_bytes(), f"{rel} restored"


def test_the_service_starts_in_the_background_for_the_local_engine_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``start_in_background`` hands the start to a thread of its own and returns while it runs
    (GX's import then runs beside the caller's own imports); with another engine nothing starts.
    Unpatched, the local engine's service comes up."""
    import threading

    from bronze_assets.lib.quality import worker

    worker.shutdown()
    spark, local = replace(_service_settings(), engine="spark"), _service_settings()
    calls: list[tuple[Path, str]] = []
    release = threading.Event()

    def blocking_start(settings: Settings) -> None:  # returns once the test has seen the caller return
        calls.append((settings.gx_service_dir, threading.current_thread().name))
        release.wait(20)

    with monkeypatch.context() as patch:
        patch.setattr(worker, "start", blocking_start)
        worker.start_in_background(spark)
        worker.start_in_background(local)
        release.set()
        for thread in threading.enumerate():
            if thread.name == "gx-service-start":
                thread.join(30)
    assert calls == [(local.gx_service_dir, "gx-service-start")], \
        "the local engine's start, on a thread of its own (the caller did not wait for it); none for spark"
    worker.start_in_background(local)
    try:
        deadline = time.monotonic() + 60
        while worker.service_pid(local) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = worker.service_pid(local)
        assert pid is not None and pid != os.getpid(), "the service of the local engine started"
        assert worker.service_pid(spark) is None, "no service for another engine"
    finally:
        worker.stop_service(local)
    assert _gone(pid, 30)


def test_a_service_started_by_a_process_that_ignores_sigterm_still_stops(tmp_path: Path) -> None:
    """A process that ignores SIGTERM (Dagster maps it to SIGINT's handler, which a shell sets to
    "ignore" for a background command) hands that on to the service it starts; the service
    restores SIGTERM's default, so ``stop_service`` still ends it."""
    from bronze_assets.lib.quality import worker

    folder = _service_folder()
    settings = Settings.from_env({"BRONZE_GX_SERVICE_DIR": str(folder)})
    code = ("import json, signal\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "from bronze_assets.lib.quality import worker\n"
            "from bronze_assets.settings import Settings\n"
            f"settings = Settings.from_env({{'BRONZE_GX_SERVICE_DIR': {str(folder)!r}}})\n"
            "worker.start(settings)\n"
            "print(json.dumps(worker.service_pid(settings)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    pid = json.loads(out.stdout.splitlines()[-1])
    assert pid is not None and worker.stop_service(settings)
    assert _gone(pid, 30), "the service ended on SIGTERM"


def test_a_caller_loading_every_table_has_the_service_build_their_suites_as_their_loads_ask(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``start_in_background(every_table=True)`` (``bronze demo``, about to load every table) asks
    the service to build every table's suite for a load today, with the Data Docs folder its checks
    use: the runners each load's own request asks for (``LocalEngine.warm_quality``), built beside
    the caller's start-up. Without it, nothing is built."""
    import threading
    from datetime import UTC, datetime

    from bronze_assets.contracts import LANDING_CONTRACTS
    from bronze_assets.lib.load.engine import LocalEngine
    from bronze_assets.lib.quality import worker
    from bronze_assets.lib.quality.validate import docs_dir

    settings = _service_settings()
    asked: list[tuple[Any, ...]] = []
    monkeypatch.setattr(worker, "start", lambda _settings: None)
    monkeypatch.setattr(worker, "_submit", lambda _settings, *request: asked.append(request))

    def started(every_table: bool) -> list[tuple[Any, ...]]:
        asked.clear()
        worker.start_in_background(settings, every_table=every_table)
        for thread in threading.enumerate():
            if thread.name == "gx-service-start":
                thread.join(30)
        return list(asked)

    today = datetime.now(UTC).date()
    assert started(every_table=False) == []
    assert started(every_table=True) == [
        ("build", c, today, docs_dir(c, settings.data_dir))
        for c in (*CONTRACTS.values(), *LANDING_CONTRACTS.values())]
    asked.clear()
    LocalEngine(SimpleNamespace(settings=settings)).warm_quality(CONTRACTS["orders"])  # type: ignore[arg-type]
    assert asked == [("build", CONTRACTS["orders"], today, docs_dir(CONTRACTS["orders"], settings.data_dir))]


def test_gx_checks_a_runners_stored_checkpoint_once_not_before_every_chunk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """GX compared the checkpoint and its validation definition with their stored copies before
    every chunk's run (≈7 % of a validation); a runner's, built and never changed, are compared
    once when it is built, and its chunks report what they report with GX's comparisons."""
    from bronze_assets.lib.quality import validate

    monkeypatch.setattr(validate, "CHUNK_ROWS", 1000)
    runner = SuiteRunner(CONTRACTS["orders"], AS_OF.date())
    reads: list[str] = []
    for name in ("checkpoint_store", "validation_definition_store"):
        store = getattr(runner.context, name)
        original = store.get
        monkeypatch.setattr(store, "get", lambda *a, name=name, original=original, **k: (
            reads.append(name), original(*a, **k))[1])
    batches = _generated("orders", 3000)
    once = runner.validate_batches(batches)
    assert reads == [], "no stored copy read for the three chunks"
    monkeypatch.setattr(validate, "_fresh", {})  # GX's comparisons before every run again
    every = runner.validate_batches(batches)
    assert {"checkpoint_store", "validation_definition_store"} <= set(reads)
    assert (once.rows, once.gx_counts, once.vector_counts, once.failing_keys) == (
        every.rows, every.gx_counts, every.vector_counts, every.failing_keys)
    assert sum(once.gx_counts.values()) > 0
