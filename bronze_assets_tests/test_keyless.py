"""A table without a primary key loads as a full snapshot (issue 22, README "Your own database").

Its rows are identified by content: ``record_key`` = ``<record_hash>#<n>``, n numbering the
identical rows of the snapshot, is the MERGE key. The §2.3 guarantees hold for it: every source
row is in bronze once (duplicates included), a changed row is one soft delete plus one insert, a
removed copy one soft delete, a copy that comes back is reactivated, untouched rows are not
rewritten and a re-run changes nothing; both engines give the same table.

The table has a column of every type family of :mod:`test_pg_types` (its nasty values, NULLs)
and repeated rows; it goes ``bronze init`` → the tables file → the Dagster asset → Delta. The Spark
parity test also loads a composite-key table on both engines (keyed by its columns).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from click.testing import CliRunner
from deltalake import DeltaTable

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS, ROW_KEY, Contract
from bronze_assets.contracts.tablefile import read_file
from bronze_assets.defs.bronze_tables import BronzeTables
from bronze_assets.defs.resources import BronzeStorage, PostgresSource, build_resources
from bronze_assets.lib.delta.merge_result import MergeResult
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.governance.reader import read_table
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.lib.reconcile.model import ALTERED, EXTRA, MISSING, PENDING, TableReconciliation
from bronze_assets.lib.reconcile.repair import repair_table
from bronze_assets.lib.reconcile.run import reconcile_table
from bronze_assets.lib.reconcile.source_side import SourceSnapshot
from bronze_assets.lib.source.ddl import quote_ident
from bronze_assets.lib.source.introspect import NO_KEY, discover_contract
from bronze_assets.settings import Settings
from bronze_assets_tests.bronze_helpers import bronze_frame, env_storage
from bronze_assets_tests.conftest import query
from bronze_assets_tests.test_pg_types import COLUMNS, NASTY, create_table, fill, postgres_says
from bronze_assets_tests.test_tables_file import _source_tables, bronze_init, defs_package

pytestmark = pytest.mark.integration

TABLE = "events_log"
ONE_OF_THREE = "sm = -32768"  # NASTY[1], loaded three times
# every column of the every-type table; k a plain integer (no identity, no key)
KEYLESS_COLUMNS = [(c, "integer" if c == "k" else t) for c, t, _ in COLUMNS]
WRITABLE = [c for c, t, _ in COLUMNS if "GENERATED ALWAYS" not in t]
ROWS = [*NASTY, NASTY[1], NASTY[1], {}, {"k": "1", "t": "the row that changes", "updated_at": "2024-05-01"}]


def create_keyless(dsn: str, drop: tuple[str, ...] = ()) -> None:
    """``tests.events_log``: the every-type columns (less ``drop``), no primary key, ``ROWS``."""
    create_table(dsn, "all_types")  # the enum and domains the columns use
    cols = ", ".join(f"{quote_ident(c)} {t}" for c, t in KEYLESS_COLUMNS)
    query(dsn, f"CREATE TABLE tests.{TABLE} ({cols})")
    fill(dsn, TABLE, ROWS)
    for column in drop:
        query(dsn, f"ALTER TABLE tests.{TABLE} DROP COLUMN {quote_ident(column)}")


def change_source(dsn: str) -> None:
    """One row changed, one of three identical rows deleted, one row inserted."""
    query(dsn, f"UPDATE tests.{TABLE} SET t = 'changed', updated_at = now() WHERE k = 1")
    query(dsn, f"DELETE FROM tests.{TABLE} WHERE ctid = (SELECT ctid FROM tests.{TABLE} "
               f"WHERE {ONE_OF_THREE} LIMIT 1)")
    query(dsn, f"INSERT INTO tests.{TABLE} (k, t, updated_at) VALUES (2, 'new', now())")


def source_hashes(dsn: str, contract: Contract) -> Counter:
    """The §2.2 record_hash of every source row (a multiset: identical rows hash alike), written
    from the definition, evaluated by PostgreSQL in a pinned session."""
    fields = ", ".join(f"coalesce(length({quote_ident(c)}::text) || ':' || {quote_ident(c)}::text, '\\N')"
                       for c in contract.column_names)
    return Counter(h for (h,) in postgres_says(dsn, f"SELECT md5(concat_ws(E'\\x1f', {fields})) "
                                                    f"FROM tests.{TABLE}"))


def bronze(root: Path) -> pl.DataFrame:
    return bronze_frame(root / f"bz_{TABLE}")


def assert_exact(root: Path, dsn: str, contract: Contract) -> pl.DataFrame:
    """Bronze holds every source row once: the ACTIVE rows' hashes are the source's multiset, each
    row's record_key is its hash and its number among identical rows, no key twice."""
    rows = bronze(root)
    assert rows.get_column(ROW_KEY).n_unique() == rows.height
    active = rows.filter(pl.col("record_status") == "ACTIVE")
    assert Counter(active.get_column("record_hash").to_list()) == source_hashes(dsn, contract)
    numbers = Counter()
    for key, hashed in active.select(ROW_KEY, "record_hash").sort(ROW_KEY).iter_rows():
        numbers[hashed] += 1
        assert key.split("#")[0] == hashed
    for hashed, count in numbers.items():
        assert {k for k in active.filter(pl.col("record_hash") == hashed).get_column(ROW_KEY)} == \
            {f"{hashed}#{n}" for n in range(1, count + 1)}
    return rows


def test_a_keyless_table_loads_as_a_full_snapshot(fresh_dsn: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    create_keyless(fresh_dsn)
    package, tree = defs_package(tmp_path / "project")
    target = package / "tests" / "defs.yaml"
    output = bronze_init(target, fresh_dsn, "tests", "--tables", TABLE)
    assert f"+ {TABLE}" in output and "full snapshot: no primary key" in output
    assert "1 table(s) to load." in output and "not loaded" not in output
    text = target.read_text()
    assert NO_KEY.split(".")[0] in text  # the reason, in a comment above the table
    spec = yaml.safe_load(text)["attributes"]["tables"][TABLE]
    assert "skip" not in spec and spec["primary_key"] == []
    assert (spec["load_pattern"], spec["partitioning"]) == ("full", "none")

    contract = tree.load_component(target.parent, BronzeTables).contracts()[0]
    assert contract.keyless and contract.merge_key == (ROW_KEY,)
    (asset,) = tree.build_defs().assets or []  # type: ignore[misc]
    root = tmp_path / "bronze"
    resources = build_resources(PostgresSource(dsn=fresh_dsn), BronzeStorage(root=str(root)))

    def load() -> dict:
        run = dg.materialize([asset], resources=resources)  # type: ignore[list-item]
        assert run.success
        checks = {e.check_name: e.passed for e in run.get_asset_check_evaluations()}
        assert checks["schema_contract"] and checks["key_uniqueness"], checks
        (event,) = run.get_asset_materialization_events()
        return {k: v.value for k, v in event.materialization.metadata.items()}

    first = load()
    assert (first["rows_inserted"], first["rows_soft_deleted"]) == (len(ROWS), 0)
    rows = assert_exact(root, fresh_dsn, contract)
    assert rows.height == len(ROWS) and rows.get_column("record_hash").n_unique() == len(ROWS) - 3
    nasty = rows.filter(pl.col("sm") == -32768)
    assert nasty.height == 3 and nasty.get_column(ROW_KEY).str.slice(33).sort().to_list() == ["1", "2", "3"]

    change_source(fresh_dsn)
    second = load()
    assert (second["rows_inserted"], second["rows_updated"], second["rows_soft_deleted"],
            second["rows_unchanged"]) == (2, 0, 2, len(ROWS) - 2)
    after = assert_exact(root, fresh_dsn, contract)
    assert after.height == len(ROWS) + 2
    deleted = after.filter(pl.col("record_status") == "DELETED")
    assert sorted(deleted.get_column("t").to_list(), key=str) == [NASTY[1]["t"], "the row that changes"]
    assert deleted.filter(pl.col("sm") == -32768).get_column(ROW_KEY).str.ends_with("#3").all()
    first_batch = rows.get_column("batch_id")[0]
    touched = after.filter(pl.col("batch_id") != first_batch)  # two inserted, two soft-deleted
    assert sorted(touched.get_column("t").to_list()) == sorted(["changed", "new", NASTY[1]["t"],
                                                                "the row that changes"])
    untouched = after.filter(pl.col("batch_id") == first_batch)
    assert untouched.height == len(ROWS) - 2  # the unchanged rows are not rewritten

    monkeypatch.setitem(CONTRACTS, TABLE, contract)  # as a tables file under bronze_assets/defs makes it
    read = read_table(TABLE, "analyst", str(root), columns=["t", ROW_KEY], limit=4)  # bronze read: key order
    assert read.column(ROW_KEY).to_pylist() == sorted(after.get_column(ROW_KEY).to_list())[:4]

    version = DeltaTable(str(root / f"bz_{TABLE}")).version()
    again = load()  # idempotent: nothing changed, nothing committed
    assert (again["rows_inserted"], again["rows_soft_deleted"], again["rows_updated"]) == (0, 0, 0)
    assert DeltaTable(str(root / f"bz_{TABLE}")).version() == version

    # the deleted copy comes back: its identity (hash#3) is ACTIVE again, no new row
    writable = ", ".join(quote_ident(c) for c in WRITABLE)
    query(fresh_dsn, f"INSERT INTO tests.{TABLE} ({writable}) SELECT {writable} FROM tests.{TABLE} "
                     f"WHERE {ONE_OF_THREE} LIMIT 1")
    back = load()
    assert (back["rows_inserted"], back["rows_updated"], back["rows_soft_deleted"]) == (0, 1, 0)
    final = assert_exact(root, fresh_dsn, contract)
    assert final.height == len(ROWS) + 2
    copy = final.filter(pl.col(ROW_KEY).str.ends_with("#3") & (pl.col("sm") == -32768))
    assert copy.get_column("record_status").to_list() == ["ACTIVE"]
    assert copy.get_column("load_timestamp").to_list() == \
        nasty.filter(pl.col(ROW_KEY).str.ends_with("#3")).get_column("load_timestamp").to_list()

    # bronze reconcile: the source's hashes numbered as a load numbers them, identity by identity
    def reconcile() -> TableReconciliation:
        with SourceSnapshot(fresh_dsn) as snapshot:
            return reconcile_table(contract, snapshot, root)

    exact = reconcile()
    assert exact.healthy and not exact.mismatches and exact.source_rows == len(ROWS) + 1
    victim = final.filter((pl.col("record_status") == "ACTIVE") & (pl.col("MixedCase") == "")) \
        .get_column(ROW_KEY)
    DeltaTable(str(root / f"bz_{TABLE}")).delete(f"{ROW_KEY} = '{victim[0]}'")  # a row lost in bronze
    query(fresh_dsn, f"DELETE FROM tests.{TABLE} WHERE ctid = (SELECT ctid FROM tests.{TABLE} "
                     f"WHERE {ONE_OF_THREE} LIMIT 1)")  # a copy gone from the source, not loaded yet
    query(fresh_dsn, f"INSERT INTO tests.{TABLE} (k, t, updated_at) VALUES (3, 'later', now())")
    found = reconcile()
    later = source_hashes(fresh_dsn, contract) - Counter(final.filter(pl.col("record_status") == "ACTIVE")
                                                         .get_column("record_hash").to_list())
    assert sorted((m.key, m.kind, m.pending_kind) for m in found.mismatches) == sorted([
        (victim[0], MISSING, None), (f"{copy.get_column('record_hash')[0]}#3", EXTRA, None),
        (f"{next(iter(later))}#1", PENDING, MISSING)])
    repair_table(contract, found, fresh_dsn, root)  # a keyless table's repair is a full load
    assert reconcile().healthy
    assert_exact(root, fresh_dsn, contract)


def test_a_keyless_table_overlay_and_refresh(fresh_dsn: str, tmp_path: Path) -> None:
    """The user may still declare a primary key; a file bronze init wrote before keyless tables
    loaded (skip: no primary key …) loads as a full snapshot once refreshed."""
    from bronze_assets.lib.source.introspect import _NO_KEY_SKIP

    create_keyless(fresh_dsn)
    target = tmp_path / "tests" / "defs.yaml"
    runner = CliRunner()
    assert runner.invoke(main, ["init", str(target), "--dsn", fresh_dsn, "--schema", "tests",
                                "--tables", TABLE, "--incremental-rows", "2"]).exit_code == 0
    spec = read_file(target).tables[TABLE]
    assert (spec.load_pattern, spec.partitioning, spec.skip) == ("full", "none", None)  # however many rows
    old = target.read_text().replace("      primary_key: []\n", f"      skip: {json.dumps(_NO_KEY_SKIP)}\n"
                                     "      primary_key: []\n").replace("load_pattern: full",
                                                                         "load_pattern: incremental")
    target.write_text(old.replace("partitioning: none", "partitioning: daily"))
    assert read_file(target).tables[TABLE].skip == _NO_KEY_SKIP
    assert runner.invoke(main, ["init", "--refresh", str(target), "--dsn", fresh_dsn]).exit_code == 0
    spec = read_file(target).tables[TABLE]
    assert (spec.load_pattern, spec.partitioning, spec.skip) == ("full", "none", None)
    # a primary key the user names: merged by key again, refresh keeps it
    target.write_text(target.read_text().replace("primary_key: []", "primary_key: [k]"))
    assert runner.invoke(main, ["init", "--refresh", str(target), "--dsn", fresh_dsn]).exit_code == 0
    assert read_file(target).tables[TABLE].primary_key == ["k"]
    # what a keyless table cannot be, said in one line naming the table and the fix
    from bronze_assets.contracts.tablefile import contracts_of

    file = read_file(target)
    for update, words in ((({"load_pattern": "incremental"}), "loads as a full snapshot"),
                          ({"cdc": True}, "log-based CDC needs a single integer primary key"),
                          ({"pii_columns": ["t"], "encrypted_columns": ["t"], "data_subject": "k"},
                           "encrypted_columns need a primary key")):
        keyless = file.tables[TABLE].model_copy(update={"primary_key": [], **update})
        with pytest.raises(ValueError, match=f"table {TABLE}: .*{words}.*primary_key"):
            contracts_of(file.model_copy(update={"tables": {TABLE: keyless}}))


def _local_load(contract: Contract, dsn: str, root: Path, at: datetime) -> MergeResult:
    staged = extract_and_stage(contract, dsn, root, batch_time=at)
    try:
        return BronzeMerger(contract, root).merge(staged)
    finally:
        staged.cleanup()


@pytest.mark.xdist_group("spark")
def test_both_engines_load_a_keyless_and_a_composite_key_table_alike(fresh_dsn: str, tmp_path: Path) -> None:
    from bronze_assets.lib.spark.load import SparkLoader
    from bronze_assets.lib.spark.session import spark_session

    spark = spark_session(Settings.from_env(), "bronze_assets_tests")
    create_keyless(fresh_dsn, drop=("with space",))  # delta-spark refuses a space in a column name
    contract = discover_contract(fresh_dsn, TABLE, "tests")
    assert contract.keyless
    local, on_spark = tmp_path / "local", tmp_path / "spark"
    t1, t2 = datetime(2026, 11, 27, 10, tzinfo=UTC), datetime(2026, 11, 27, 11, tzinfo=UTC)

    def same() -> None:
        view = ["record_key", "record_hash", "record_status", "data_quality_score", "load_timestamp",
                "update_timestamp"]
        a, b = bronze(local).select(view).sort(ROW_KEY), bronze(on_spark).select(view).sort(ROW_KEY)
        assert a.equals(b)

    _local_load(contract, fresh_dsn, local, t1)
    first = SparkLoader(spark, env_storage(on_spark)).load(contract, fresh_dsn, batch_time=t1)
    assert first.merge.inserted == len(ROWS)
    same()
    assert_exact(on_spark, fresh_dsn, contract)
    change_source(fresh_dsn)
    local_result = _local_load(contract, fresh_dsn, local, t2)
    second = SparkLoader(spark, env_storage(on_spark)).load(contract, fresh_dsn, batch_time=t2).merge
    for result in (local_result, second):
        assert (result.inserted, result.updated, result.soft_deleted) == (2, 0, 2)
    same()
    assert_exact(on_spark, fresh_dsn, contract)
    # each engine reads the other's table
    assert spark.read.format("delta").load(str(local / f"bz_{TABLE}")).count() == bronze(local).height
    assert_exact(local, fresh_dsn, contract)

    # a composite primary key: keyed by its columns on both engines (the JDBC read split on the first)
    _source_tables(fresh_dsn)
    lines = discover_contract(fresh_dsn, "order_lines", "sales")
    assert lines.merge_key == ("order_id", "line_no")
    for at, expected in ((t1, (3, 0, 0)), (t2, (0, 1, 1))):
        if at == t2:
            query(fresh_dsn, "UPDATE sales.order_lines SET qty = 9 WHERE order_id = 10 AND line_no = 2")
            query(fresh_dsn, "DELETE FROM sales.order_lines WHERE order_id = 11")
        mine = _local_load(lines, fresh_dsn, local, at)
        theirs = SparkLoader(spark, env_storage(on_spark)).load(lines, fresh_dsn, batch_time=at).merge
        assert (mine.inserted, mine.updated, mine.soft_deleted) == \
            (theirs.inserted, theirs.updated, theirs.soft_deleted) == expected
        view = ["order_id", "line_no", "qty", "record_hash", "record_status", "update_timestamp"]
        a = bronze_frame(local / "bz_order_lines").select(view)
        b = bronze_frame(on_spark / "bz_order_lines").select(view)
        assert a.sort("order_id", "line_no").equals(b.sort("order_id", "line_no"))


def test_reconcile_deep_finds_a_keyless_row_altered_in_bronze(fresh_dsn: str, tmp_path: Path) -> None:
    """``--deep`` recomputes each ACTIVE row's hash from its bronze columns and names an altered row
    by its record_key; the repair (a full load) rewrites it."""
    query(fresh_dsn, "CREATE SCHEMA tests")
    query(fresh_dsn, "CREATE TABLE tests.plain (a integer, t text, updated_at timestamptz)")
    query(fresh_dsn, "INSERT INTO tests.plain VALUES (1, 'x', '2024-01-01'), (1, 'x', '2024-01-01'), "
                     "(NULL, NULL, NULL)")
    contract = discover_contract(fresh_dsn, "plain", "tests")
    root = tmp_path / "bronze"
    _local_load(contract, fresh_dsn, root, datetime(2026, 11, 27, 10, tzinfo=UTC))

    def reconcile() -> TableReconciliation:
        with SourceSnapshot(fresh_dsn) as snapshot:
            return reconcile_table(contract, snapshot, root, deep=True)

    clean = reconcile()
    assert clean.healthy and clean.deep_rows == 3 and clean.deep_note is None
    dt = DeltaTable(str(root / "bz_plain"))
    key = sorted(dt.to_pyarrow_table().column(ROW_KEY).to_pylist())[0]
    dt.update(updates={"t": "'tampered'"}, predicate=f"{ROW_KEY} = '{key}'")
    found = reconcile()
    assert [(m.key, m.kind) for m in found.mismatches] == [(key, ALTERED)]
    repair_table(contract, found, fresh_dsn, root)
    assert reconcile().healthy
