"""Reconciliation of tables not keyed by one integer column (ARCHITECTURE §2.8): a composite key
(text, timestamptz, integer) and a uuid key, bisected over their rows' hash positions, keys named
by their PostgreSQL text. Each planted fault is found and ``--repair`` fixes it; a non-ACTIVE
bronze row whose stored hash is not the source's is still found by its key. Real PostgreSQL,
real Delta tables; small buckets so the bisection drills down."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.control import RECONCILIATION, read_table
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.lib.reconcile import bisect, reconcile, source_side
from bronze_assets.lib.reconcile.command import reconcile_and_repair
from bronze_assets.lib.source.ddl import quote_ident
from bronze_assets.lib.source.introspect import discover_contract
from bronze_assets.lib.source.pushdown import hash_sql
from bronze_assets_tests.conftest import query

# region: quotes, a tab, the unit separator and non-ASCII text in a key; placed_at: fractional seconds
LINES = ("CREATE TABLE tests.order_lines (region text, placed_at timestamptz, line integer, sku text, "
         "qty integer, price numeric(10,2), updated_at timestamptz, PRIMARY KEY (region, placed_at, line))",
         "INSERT INTO tests.order_lines SELECT (ARRAY['north', 'O''Brien', 'quo\"te', E'tab\\there', "
         "E'unit\\x1fsep', 'ünïcødé'])[1 + i % 6], TIMESTAMPTZ '2024-03-01 00:00:00.123456+00' + i * "
         "INTERVAL '61 minutes 0.5 seconds', i % 7, 'SKU-' || i, i % 13, i * 1.25, "
         "TIMESTAMPTZ '2024-03-01 00:00:00+00' FROM generate_series(1, 300) AS i")
DEVICES = ("CREATE TABLE tests.devices (device_id uuid PRIMARY KEY, label text, firmware numeric(6,2), "
           "seen date, updated_at timestamptz)",
           "INSERT INTO tests.devices SELECT md5(i::text)::uuid, 'device ' || i, i / 7.0, "
           "DATE '2024-01-01' + i, TIMESTAMPTZ '2024-03-01 00:00:00+00' FROM generate_series(1, 300) AS i")


@pytest.fixture
def small_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Buckets of ≈16 rows, leaves of ≤ 8: 300 rows drill down two levels; the first level's pass
    over the table in parts of one heap block each (on both connections)."""
    monkeypatch.setattr(bisect, "BUCKET_ROWS", 16)
    monkeypatch.setattr(bisect, "LEAF_ROWS", 8)
    monkeypatch.setattr(source_side, "PART_BLOCKS", 1)


def _table(dsn: str, ddl: tuple[str, str], name: str) -> Contract:
    for sql in ("CREATE SCHEMA IF NOT EXISTS tests", *ddl):
        query(dsn, sql)
    return discover_contract(dsn, name, "tests")


def _load(contract: Contract, dsn: str, root: Path) -> None:
    staged = extract_and_stage(contract, dsn, root)
    try:
        BronzeMerger(contract, root).merge(staged)
    finally:
        staged.cleanup()


def _key_name(texts: tuple[str, ...]) -> str:
    return texts[0] if len(texts) == 1 else json.dumps(list(texts), ensure_ascii=False)


def _source(dsn: str, contract: Contract, where: str = "TRUE") -> dict[str, str]:
    """{key name: §2.2 hash} of the source rows, keys named as reconcile names them (their text)."""
    texts = ", ".join(f"{quote_ident(k)}::text" for k in contract.primary_key)
    rows = query(dsn, f"SELECT {texts}, {hash_sql(contract)} FROM tests.{contract.source_name} WHERE {where}")
    return {_key_name(tuple(r[:-1])): r[-1] for r in rows}


def _bronze(root: Path, contract: Contract) -> pl.DataFrame:
    frame = pl.from_arrow(DeltaTable(str(root / contract.bronze_table)).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


def _equal(dsn: str, root: Path, contract: Contract) -> None:
    """bronze's ACTIVE rows are the source's rows (their §2.2 hashes cover every column)."""
    active = _bronze(root, contract).filter(pl.col("record_status") == "ACTIVE")
    assert Counter(active.get_column("record_hash").to_list()) == Counter(_source(dsn, contract).values())


CASES = {  # table: (DDL, a column naming each row (prefix), the first key column, a key the source lacks)
    "order_lines": (LINES, "sku", "SKU-", "region", "'nowhere'"),
    "devices": (DEVICES, "label", "device ", "device_id", "'00000000-0000-0000-0000-000000000001'"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_planted_faults_are_found_by_text_keys_and_repaired(name: str, fresh_dsn: str, tmp_path: Path,
                                                            small_buckets: None) -> None:
    ddl, column, prefix, first_key, new_key = CASES[name]
    contract = _table(fresh_dsn, ddl, name)
    assert contract.primary_key[0] == first_key
    root = tmp_path / "bronze"
    _load(contract, fresh_dsn, root)
    clean = reconcile([contract], fresh_dsn, root)
    assert clean.healthy and not clean.tables[0].mismatches and clean.tables[0].source_rows == 300
    assert clean.tables[0].buckets == 19 and clean.tables[0].rows_compared == 0

    changed, deleted, altered, copied = (f"{column} = '{prefix}{n}'" for n in (10, 20, 30, 40))
    named = {kind: next(iter(_source(fresh_dsn, contract, w)))
             for kind, w in zip(("differs", "missing", "altered"), (changed, deleted, altered), strict=True)}
    blank = quote_ident(contract.column_names[-2])
    query(fresh_dsn, f"UPDATE tests.{name} SET {blank} = NULL WHERE {changed}")
    uri = str(root / contract.bronze_table)
    DeltaTable(uri).delete(deleted)
    DeltaTable(uri).update(updates={quote_ident(contract.column_names[-3]): "NULL"}, predicate=altered)
    # an ACTIVE key the source never had: a copy of another row under a new first key column
    whole = DeltaTable(uri).to_pyarrow_table()
    row = whole.filter(pc.equal(whole.column(column).cast(pa.string()), f"{prefix}40"))
    assert row.num_rows == 1
    fresh_key = query(fresh_dsn, f"SELECT {new_key}::{contract.column(first_key).type.value}::text")[0][0]
    index = row.schema.get_field_index(first_key)
    field = row.schema.field(index)
    write_deltalake(uri, row.set_column(index, field, pa.array([fresh_key], pa.string()).cast(field.type)),
                    mode="append")
    copy = query(fresh_dsn, f"SELECT {', '.join(f'{quote_ident(k)}::text' for k in contract.primary_key)} "
                            f"FROM tests.{name} WHERE {copied}")[0]
    extra = _key_name((fresh_key, *copy[1:]))

    run = reconcile([contract], fresh_dsn, root, deep=True)
    (table,) = run.tables
    assert table.samples() == {"differs": [named["differs"]], "missing": [named["missing"]],
                               "extra": [extra],  # the copy's columns do not hash to its hash either
                               "altered": sorted([named["altered"], extra])}
    assert table.buckets_differing <= 4 and table.rows_compared < 100  # drilled into a few buckets only

    repaired = reconcile_and_repair([contract], fresh_dsn, root, deep=True, repair=True)
    assert repaired.healthy, repaired.as_json()
    (after,) = repaired.tables
    assert after.repair is not None and after.repair["soft_deleted"] == 1
    assert after.repair["inserted"] + after.repair["updated"] == 3  # missing, differs, altered
    _equal(fresh_dsn, root, contract)
    gone = _bronze(root, contract).filter(pl.col("record_status") == "DELETED")
    assert gone.height == 1 and gone.get_column(first_key).cast(pl.Utf8).to_list() == [fresh_key]
    ledger = pl.from_arrow(read_table(root, RECONCILIATION))
    assert isinstance(ledger, pl.DataFrame)
    fixed = ledger.filter(pl.col("repaired_at").is_not_null())
    assert sorted(zip(fixed["key"], fixed["kind"], strict=True)) == sorted(
        [(named["differs"], "differs"), (named["missing"], "missing"), (named["altered"], "altered"),
         (extra, "extra"), (extra, "altered")])


def test_a_row_not_active_in_bronze_is_found_by_its_key(fresh_dsn: str, tmp_path: Path,
                                                        small_buckets: None) -> None:
    """A FORGOTTEN row keeps its old hash (another position than the source's changed row): the
    source row's bucket differs, and bronze's row of that key is looked up by key, so the key is
    skipped as FORGOTTEN rather than called missing; a DELETED one is missing."""
    contract = _table(fresh_dsn, DEVICES, "devices")
    root = tmp_path / "bronze"
    _load(contract, fresh_dsn, root)
    uri = str(root / contract.bronze_table)
    DeltaTable(uri).update(updates={"record_status": "'FORGOTTEN'"}, predicate="label = 'device 7'")
    DeltaTable(uri).update(updates={"record_status": "'DELETED'"}, predicate="label = 'device 8'")
    query(fresh_dsn, "UPDATE tests.devices SET firmware = 99 WHERE label IN ('device 7', 'device 8')")
    (table,) = reconcile([contract], fresh_dsn, root).tables
    assert table.forgotten_skipped == 1
    assert table.samples() == {"missing": list(_source(fresh_dsn, contract, "label = 'device 8'"))}
