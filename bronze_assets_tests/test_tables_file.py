"""Tables declared, not coded (ARCHITECTURE §2.10): the ``BronzeTables`` component and its file.

* the shipped example (``defs/inventory/defs.yaml``) yields exactly today's ten contracts, assets,
  checks and schedules, and is what ``bronze init --refresh`` writes for the seeded ``tests`` schema;
* ``bronze init`` on another schema (mixed-case name, composite key, no key; varchar, boolean, uuid,
  jsonb) → the file → definitions loaded by Dagster from the YAML → a load → bronze rows whose
  record_hash is the §2.2 SQL of the source.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner
from dagster.components.core.component_tree import ComponentTree
from deltalake import DeltaTable

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS, Contract
from bronze_assets.contracts.tablefile import read_file, render
from bronze_assets.contracts.tables import EXAMPLE_FILE
from bronze_assets.defs.assets import build_bronze_asset
from bronze_assets.defs.bronze_tables import BronzeTables
from bronze_assets.defs.resources import BronzeStorage, PostgresSource, build_resources
from bronze_assets.demo.seed import SeedOptions, seed_source
from bronze_assets.lib.source.ddl import qualified, quote_ident
from bronze_assets.lib.source.introspect import COMPOSITE_KEY, NO_KEY, introspect
from bronze_assets_tests import reference_contracts
from bronze_assets_tests.conftest import query

ROOT = Path(__file__).resolve().parents[1]


def _example_component() -> BronzeTables:
    """The shipped example as Dagster loads it in the project (`dg check defs`, the UI)."""
    return ComponentTree.for_project(ROOT).load_component(EXAMPLE_FILE.parent, BronzeTables)


def defs_package(parent: Path) -> tuple[Path, ComponentTree]:
    """A new, importable defs package under ``parent`` and its component tree (the autoloading of
    ``load_from_defs_folder``, which `dg check defs` runs, on a project of its own)."""
    package = parent / f"defs_{uuid.uuid4().hex[:8]}"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(parent))
    try:
        module = importlib.import_module(package.name)
    finally:
        sys.path.remove(str(parent))
    return package, ComponentTree.from_module(defs_module=module, project_root=parent)


def bronze_init(target: Path, dsn: str, schema: str, *options: str) -> str:
    """`bronze init` writes ``target`` from ``schema`` at ``dsn`` (exit 0); its output."""
    result = CliRunner().invoke(main, ["init", str(target), "--dsn", dsn, "--schema", schema, *options])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_shipped_example_is_todays_contracts_field_by_field() -> None:
    reference = {c.name: c for c in reference_contracts.ALL}
    from_yaml = {c.name: c for c in _example_component().contracts()}
    assert list(from_yaml) == list(reference) == list(CONTRACTS)
    for name, want in reference.items():
        got = from_yaml[name]
        for f in dataclasses.fields(Contract):
            if f.name == "columns":
                continue
            assert getattr(got, f.name) == getattr(want, f.name), (name, f.name)
        # the Python contracts never recorded nullability (the default, True); the file records the
        # catalog's: the primary key columns are NOT NULL, every other column nullable
        assert [(c.name, c.type) for c in got.columns] == [(c.name, c.type) for c in want.columns]
        assert [c.nullable for c in got.columns] == [c.name not in want.primary_key for c in want.columns]
        assert CONTRACTS[name] == got  # the registry every module imports is the file


def _asset_view(assets: dg.AssetsDefinition) -> dict:
    spec, *more = sorted(assets.specs, key=lambda s: s.key.to_user_string())  # bz_<name>, its history
    return {
        "history": [(s.key.to_user_string(), sorted(d.asset_key.to_user_string() for d in s.deps))
                    for s in more],
        "key": spec.key.to_user_string(), "group": spec.group_name, "description": spec.description,
        "tags": dict(spec.tags), "kinds": set(spec.kinds), "owners": list(spec.owners),
        "partitions": repr(spec.partitions_def), "freshness": repr(spec.freshness_policy),
        "code_version": spec.code_version,
        "metadata": {k: repr(v) for k, v in spec.metadata.items()},
        "checks": sorted((c.name, c.blocking) for c in assets.check_specs),
        "op": assets.op.name, "pool": assets.op.pool, "retry": repr(assets.op.retry_policy),
    }


def test_the_example_component_builds_todays_assets_checks_and_schedules() -> None:
    defs = dg.build_defs_for_component(_example_component())
    built = {min(k.to_user_string() for k in a.keys): a for a in defs.assets or []}  # type: ignore[union-attr]
    assert set(built) == {f"bz_{c.name}" for c in reference_contracts.ALL}
    for contract in reference_contracts.ALL:
        view = _asset_view(built[contract.bronze_table])
        assert view == _asset_view(build_bronze_asset(contract))
        assert view["group"] == "bronze" and view["key"] == f"bz_{contract.name}"
        # the history table is an asset of the same step, downstream of the table
        assert view["history"] == ([(f"bz_{contract.name}_history", [f"bz_{contract.name}"])]
                                   if contract.name in ("products", "suppliers", "warehouses", "customers")
                                   else [])
        assert view["description"].startswith(f"Bronze copy of tests.{contract.name}: ")
    schedules = {s.name: (s.cron_schedule, s.job.name) for s in defs.schedules or []}  # type: ignore[union-attr]
    assert set(schedules) == {
        "bronze_hourly_by_day_schedule", "bronze_hourly_by_month_schedule",
        "bronze_daily_by_day_closed_window_schedule", "bronze_daily_by_month_closed_window_schedule",
        "bronze_daily_full_schedule", "bronze_weekly_full_schedule", "bronze_monthly_full_schedule",
        "bronze_reconciliation_schedule"}
    assert not defs.resources  # the example reads the shared `source` resource ($BRONZE_SOURCE_DSN)


def test_the_example_is_what_bronze_init_refresh_writes_for_the_tests_schema(fresh_dsn: str) -> None:
    seed_source(fresh_dsn, SeedOptions(scale=0), progress=False)  # bronze seed --scale 0: the DDL only
    example = read_file(EXAMPLE_FILE)
    result = introspect(fresh_dsn, example.source, existing=example)
    assert result.refreshed == list(CONTRACTS) and result.added == [] and result.missing == []
    assert render(result.file, result.notes) == EXAMPLE_FILE.read_text()


def _source_tables(dsn: str) -> None:
    for sql in [
        'CREATE SCHEMA sales',
        'CREATE TABLE sales."Customer" (id integer PRIMARY KEY, name varchar(100) NOT NULL, '
        'active boolean, ref uuid, prefs jsonb, "Nick Name" text, '
        'updated_at timestamptz NOT NULL DEFAULT now())',
        'CREATE TABLE sales.order_lines (order_id bigint, line_no smallint, customer_id integer '
        'REFERENCES sales."Customer"(id), qty integer, note varchar(20), updated_at timestamptz, '
        'PRIMARY KEY (order_id, line_no))',
        'CREATE TABLE sales.audit_events (event text, updated_at timestamptz)',
        'CREATE TABLE sales.notes (id integer PRIMARY KEY, body text)',
        'CREATE TABLE public.elsewhere (id integer PRIMARY KEY, updated_at timestamptz)',
        "INSERT INTO sales.\"Customer\" VALUES "
        "(1, 'Ada', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"b\": [1, 2], \"a\": null}', "
        " 'ada', '2026-01-01 10:00+00'), "
        "(2, 'Bob \x1f Tab', false, NULL, NULL, NULL, '2026-01-02 10:00+00'), "
        "(3, 'Émile', NULL, 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '[]', 'm', '2026-01-03 10:00+00')",
        "INSERT INTO sales.order_lines VALUES (10, 1, 1, 2, 'x', '2026-01-01 10:00+00'), "
        "(10, 2, 2, 1, NULL, '2026-01-01 11:00+00'), (11, 1, 3, 5, 'z', '2026-01-02 10:00+00')",
    ]:
        query(dsn, sql)


def _hashes_sql(schema: str, table: str, columns: list[str], key: list[str]) -> str:
    """§2.2 record_hash written from the catalog's column list (independent of the pipeline)."""
    rendered = ", ".join(f"coalesce(length({quote_ident(c)}::text) || ':' || {quote_ident(c)}::text, '\\N')"
                         for c in columns)
    keys = " || '|' || ".join(f"{quote_ident(k)}::text" for k in key)
    return f"SELECT {keys}, md5(concat_ws(E'\\x1f', {rendered})) FROM {qualified(schema, table)}"


def test_bronze_init_on_another_schema_then_definitions_then_a_load(fresh_dsn: str, tmp_path: Path) -> None:
    _source_tables(fresh_dsn)
    package, tree = defs_package(tmp_path / "project")
    target = package / "sales" / "defs.yaml"
    output = bronze_init(target, fresh_dsn, "sales")
    assert "+ customer" in output and "NOT LOADED: no updated_at column" in output
    assert "audit_events" in output and "full snapshot: no primary key" in output
    assert "3 table(s) to load, 1 not loaded" in output
    assert "sales.Customer.ref: uuid is stored as string" in output  # the type mapping, named
    assert "sales.Customer.prefs: jsonb is stored as string" in output
    text = target.read_text()
    assert "postgresql://" not in text  # the DSN never lands in the file; its variable does
    document = yaml.safe_load(text)
    assert document["type"] == "bronze_assets.BronzeTables"
    attrs = document["attributes"]
    assert attrs["source"] == {"dsn_env": "BRONZE_SOURCE_DSN", "schemas": ["sales"], "tables": ["*"]}
    assert attrs["name"] == "sales"
    tables = attrs["tables"]
    assert set(tables) == {"customer", "order_lines", "audit_events", "notes"}  # not public.elsewhere
    customer = tables["customer"]
    assert customer["table"] == "Customer" and customer["primary_key"] == ["id"]
    assert customer["columns"] == {"id": "integer not null", "name": "character varying(100) not null",
                                   "active": "boolean", "ref": "uuid", "prefs": "jsonb", "Nick Name": "text",
                                   "updated_at": "timestamp with time zone not null"}
    assert (customer["load_pattern"], customer["cadence"], customer["partitioning"]) == \
        ("full", "daily", "none")
    lines = tables["order_lines"]
    assert lines["primary_key"] == ["order_id", "line_no"] and "cdc" not in lines
    assert lines["foreign_keys"] == ["customer_id -> customer.id"]
    assert COMPOSITE_KEY.format(key="order_id, line_no").splitlines()[0][:60] in text.replace("\n    # ", " ")
    assert "skip" not in tables["audit_events"] and tables["audit_events"]["primary_key"] == []
    assert NO_KEY.split(".")[0] in text  # why it loads as a full snapshot: a comment above it
    assert tables["notes"]["skip"].startswith("no updated_at column")

    # Dagster autoloads the defs folder (its YAML loader and the component's schema): no database
    component = tree.load_component(target.parent, BronzeTables)
    defs = tree.build_defs()
    dg.Definitions.validate_loadable(dg.Definitions.merge(defs, dg.Definitions(resources=build_resources())))
    keys = {a.key.to_user_string() for a in defs.assets or []}  # type: ignore[union-attr]
    assert keys == {"bz_customer", "bz_order_lines", "bz_audit_events"}  # the skipped table builds nothing
    assert {s.name for s in defs.schedules or []} == {  # type: ignore[union-attr]
        "bronze_sales_daily_full_schedule", "bronze_sales_reconciliation_schedule"}
    contracts = {c.name: c for c in component.contracts()}
    assert contracts["customer"].source_ref == "sales.Customer" and contracts["audit_events"].keyless
    with pytest.raises(ValueError, match=r"log-based CDC needs a single integer primary key \(it takes .*; "
                                         r"this table's is \(order_id bigint, line_no smallint\): "
                                         r"set cdc: false"):
        dataclasses.replace(contracts["order_lines"], cdc=True)

    # a load of each: every source row in bronze with the §2.2 hash of the source
    root = tmp_path / "bronze"
    resources = build_resources(PostgresSource(dsn=fresh_dsn), BronzeStorage(root=str(root)))
    assets = {a.key.to_user_string(): a for a in defs.assets or []}  # type: ignore[union-attr]
    for name, key in (("customer", ["id"]), ("order_lines", ["order_id", "line_no"])):
        contract = contracts[name]
        run = dg.materialize([assets[f"bz_{name}"]], resources=resources)
        assert run.success
        checks = {e.check_name: e.passed for e in run.get_asset_check_evaluations()}
        assert checks["schema_contract"] and checks["key_uniqueness"], checks
        frame = DeltaTable(str(root / f"bz_{name}")).to_pyarrow_table().to_pylist()
        got = {"|".join(str(r[k]) for k in key): r["record_hash"] for r in frame}
        want = dict(query(fresh_dsn, _hashes_sql("sales", contract.source_name, contract.column_names, key)))
        assert got == want and len(got) == 3
        assert {r["record_status"] for r in frame} == {"ACTIVE"}


def test_refresh_keeps_the_overlay_and_follows_the_catalog(fresh_dsn: str, tmp_path: Path) -> None:
    _source_tables(fresh_dsn)
    target = tmp_path / "sales" / "defs.yaml"
    runner = CliRunner()
    assert runner.invoke(main, ["init", str(target), "--dsn", fresh_dsn, "--schema", "sales",
                                "--tables", "Customer,audit_*"]).exit_code == 0
    assert set(yaml.safe_load(target.read_text())["attributes"]["tables"]) == {"customer", "audit_events"}
    again = runner.invoke(main, ["init", str(target), "--dsn", fresh_dsn, "--schema", "sales"])
    assert again.exit_code == 1 and "bronze init --refresh" in again.output
    nothing = runner.invoke(main, ["init", str(tmp_path / "x" / "defs.yaml"), "--dsn", fresh_dsn,
                                   "--schema", "nope"])
    assert nothing.exit_code == 1 and "no table of schema nope matches *" in nothing.output
    assert not (tmp_path / "x").exists()
    # the user's overlay: a PII column, a rule, another cadence, and a key for the keyless table
    overlay = "      cadence: hourly\n      pii_columns: [name]\n      quality:\n        required: [name]\n"
    edited = target.read_text().replace("      cadence: daily\n", overlay, 1)
    edited = edited.replace("primary_key: []", "primary_key: [event]")
    target.write_text(edited)
    query(fresh_dsn, 'ALTER TABLE sales."Customer" ALTER COLUMN name TYPE varchar(200), '
                     'ADD COLUMN score real')
    refreshed = runner.invoke(main, ["init", "--refresh", str(target), "--dsn", fresh_dsn])
    assert refreshed.exit_code == 0, refreshed.output
    tables = yaml.safe_load(target.read_text())["attributes"]["tables"]
    customer = tables["customer"]
    assert (customer["cadence"], customer["pii_columns"], customer["quality"]) == \
        ("hourly", ["name"], {"required": ["name"]})
    assert customer["columns"]["name"] == "character varying(200) not null"
    assert list(customer["columns"].items())[-1] == ("score", "real")
    # the keyless table is loaded once it has a key; the file's source tables still apply
    assert "skip" not in tables["audit_events"] and tables["audit_events"]["primary_key"] == ["event"]
    assert set(tables) == {"customer", "audit_events"}


@pytest.mark.parametrize(("text", "spelling", "nullable", "kind", "base"), [
    ("integer", "integer", True, "base", None),
    ("character varying(200) not null", "character varying(200)", False, "base", None),
    ("timestamp(3) with time zone", "timestamp(3) with time zone", True, "base", None),
    ("mood not null (enum)", "mood", False, "enum", None),
    ('"My Money" (domain over numeric(12,2))', '"My Money"', True, "domain", "numeric(12,2)"),
    ("int4range (range)", "int4range", True, "range", None),
])
def test_a_column_is_one_line_of_text_both_ways(text: str, spelling: str, nullable: bool, kind: str,
                                                 base: str | None) -> None:
    from bronze_assets.contracts.tablefile import ColumnSpec, column_type

    column = ColumnSpec.parse("c", text)
    assert (column.type, column.nullable, column.kind, column.base) == (spelling, nullable, kind, base)
    assert column.text == text
    if kind == "domain":
        assert column_type(column).base == "numeric(12,2)" and column_type(column).precision == 12
    if kind == "enum":
        assert column_type(column).family.value == "enum"


def test_dg_scaffold_writes_the_file_from_the_source(fresh_dsn: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`dg scaffold defs bronze_assets.BronzeTables sales --schemas sales` (its scaffolder): with the
    DSN variable set it introspects as bronze init does; without, it writes the source only."""
    from bronze_assets.defs.bronze_tables import BronzeTablesScaffolder, BronzeTablesScaffoldParams

    _source_tables(fresh_dsn)
    for folder, dsn in (("with_dsn", fresh_dsn), ("without", None)):
        if dsn:
            monkeypatch.setenv("BRONZE_SOURCE_DSN", dsn)
        else:
            monkeypatch.delenv("BRONZE_SOURCE_DSN", raising=False)
        target = tmp_path / folder
        target.mkdir()
        BronzeTablesScaffolder().scaffold(dg.ScaffoldRequest(
            type_name="bronze_assets.BronzeTables", target_path=target, scaffold_format="yaml",
            project_root=tmp_path, params=BronzeTablesScaffoldParams(schemas="sales", tables="Customer")))
        attrs = read_file(target / "defs.yaml")
        assert attrs.source.schemas == ["sales"] and attrs.source.tables == ["Customer"]
        assert list(attrs.tables) == (["customer"] if dsn else [])


def test_the_readme_example_file_is_a_valid_tables_file() -> None:
    from bronze_assets.contracts.tablefile import contracts_of, parse_document

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Your own database"):readme.index("## The `bronze` command")]
    block = section[section.index("```yaml\n") + len("```yaml\n"):]
    document = yaml.safe_load(block[: block.index("```")])
    contracts = {c.name: c for c in contracts_of(parse_document(document, "README"))}
    assert contracts["order_lines"].primary_key == ("order_id", "line_no")
    assert contracts["order_lines"].column("status").type.family.value == "enum"
    assert contracts["customer"].source_ref == "sales.Customer"


def test_a_composite_key_table_loads_by_watermark(fresh_dsn: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """bronze init makes a table with updated_at and more rows than --incremental-rows incremental
    (daily partitions, watermark): the snapshot partition, then a change picked up by the open one."""
    from datetime import UTC, datetime, timedelta

    _source_tables(fresh_dsn)
    package, tree = defs_package(tmp_path / "project")
    target = package / "sales" / "defs.yaml"
    bronze_init(target, fresh_dsn, "sales", "--tables", "order_lines", "--incremental-rows", "2")
    spec = read_file(target).tables["order_lines"]
    assert (spec.load_pattern, spec.cadence, spec.partitioning) == ("incremental", "hourly", "daily")
    today = datetime.now(UTC).date()
    start = today - timedelta(days=2)
    monkeypatch.setenv("BRONZE_START_DATE", start.isoformat())
    (assets,) = tree.build_defs().assets or []  # type: ignore[misc]
    assert isinstance(assets, dg.AssetsDefinition)
    root = tmp_path / "bronze"
    resources = build_resources(PostgresSource(dsn=fresh_dsn), BronzeStorage(root=str(root)))
    contract = tree.load_component(target.parent, BronzeTables).contracts()[0]
    sql = _hashes_sql("sales", "order_lines", contract.column_names, ["order_id", "line_no"])

    def bronze(status: str = "ACTIVE") -> dict[str, str]:
        rows = DeltaTable(str(root / "bz_order_lines")).to_pyarrow_table().to_pylist()
        keys = [f"{r['order_id']}|{r['line_no']}" for r in rows]
        assert len(keys) == len(set(keys))  # one row per composite key
        return {k: r["record_hash"] for k, r in zip(keys, rows, strict=True) if r["record_status"] == status}

    assert dg.materialize([assets], resources=resources, partition_key=start.isoformat()).success
    assert bronze() == dict(query(fresh_dsn, sql)) and len(bronze()) == 3
    query(fresh_dsn, "UPDATE sales.order_lines SET qty = 7, updated_at = now() "
                     "WHERE order_id = 10 AND line_no = 2")
    query(fresh_dsn, "INSERT INTO sales.order_lines VALUES (12, 1, 1, 1, 'new', now())")
    query(fresh_dsn, "DELETE FROM sales.order_lines WHERE order_id = 11 AND line_no = 1")
    assert dg.materialize([assets], resources=resources, partition_key=today.isoformat()).success
    assert bronze() == dict(query(fresh_dsn, sql)) and len(bronze()) == 3
    assert list(bronze("DELETED")) == ["11|1"]  # the key sweep finds a vanished composite key


def test_a_file_naming_another_dsn_variable_reads_that_source(fresh_dsn: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _source_tables(fresh_dsn)
    package, tree = defs_package(tmp_path / "project")
    target = package / "sales" / "defs.yaml"
    bronze_init(target, fresh_dsn, "sales", "--tables", "Customer", "--dsn-env", "SALES_DSN")
    assert "postgresql://" not in target.read_text()
    defs = tree.build_defs()
    assert set(defs.resources or {}) == {"source_sales_dsn"}  # read from $SALES_DSN when a run starts
    monkeypatch.setenv("SALES_DSN", fresh_dsn)
    root = tmp_path / "bronze"
    # the shared `source` points nowhere: a load reading it instead would fail
    resources = {**build_resources(PostgresSource(dsn="postgresql://nobody@127.0.0.1:9/none"),
                                   BronzeStorage(root=str(root))), **(defs.resources or {})}
    (assets,) = defs.assets or []  # type: ignore[misc]
    assert dg.materialize([assets], resources=resources).success  # type: ignore[list-item]
    rows = DeltaTable(str(root / "bz_customer")).to_pyarrow_table().to_pylist()
    assert sorted(r["id"] for r in rows) == [1, 2, 3]


def test_several_files_one_registry_and_the_example_stays_the_seeded_ten(tmp_path: Path) -> None:
    from bronze_assets.contracts import in_dependency_order
    from bronze_assets.contracts.tablefile import load_contracts, table_files
    from bronze_assets.contracts.tables import EXAMPLE

    other = tmp_path / "defs" / "sales" / "defs.yaml"
    other.parent.mkdir(parents=True)
    other.write_text(EXAMPLE_FILE.read_text().replace("    products:\n", "    products_copy:\n", 1))
    (tmp_path / "defs" / "notes.yaml").write_text("type: something.Else\n")
    assert table_files(tmp_path / "defs") == [other]
    with pytest.raises(ValueError, match=r"table suppliers is declared in .* and "):
        load_contracts([EXAMPLE_FILE, other])
    with pytest.raises(ValueError, match=r"table suppliers: foreign key product_id -> products\.product_id "
                                         "names no table of any tables file"):
        load_contracts([other])  # products is products_copy there
    other.write_text(other.read_text().replace("-> products.", "-> products_copy."))
    mixed = {c.name: c for c in load_contracts([other])}
    assert mixed["products_copy"].source_ref == "tests.products_copy"
    # log-based CDC follows the table wherever it lives (its publication names schema.table)
    other.write_text(other.read_text().replace("schemas: [tests]", "schemas: [sales]"))
    moved = {c.name: c for c in load_contracts([other])}
    assert moved["inventory"].cdc and moved["inventory"].source_ref == "sales.inventory"
    # bronze seed / bronze ddl / bronze demo create the shipped example's tables only
    assert [c.name for c in EXAMPLE] == [c.name for c in reference_contracts.ALL]
    assert sorted(c.name for c in in_dependency_order()) == sorted(c.name for c in EXAMPLE)
    assert next(c.name for c in in_dependency_order(mixed.values())) == "products_copy"


def test_a_skipped_table_of_the_example_file_loads_nothing_and_breaks_nothing(tmp_path: Path) -> None:
    """A ``skip:`` entry in the shipped example (a leaf table: no other table's foreign key names
    it) leaves that table out of the registry and of the example, not a KeyError at import."""
    from bronze_assets.contracts.tables import registry

    example = tmp_path / "defs" / "inventory" / "defs.yaml"
    example.parent.mkdir(parents=True)
    example.write_text(EXAMPLE_FILE.read_text().replace(
        "    returns:\n", "    returns:\n      skip: not loaded while the team reviews it\n", 1))
    everything, shipped = registry(tmp_path / "defs", example)
    names = [c.name for c in reference_contracts.ALL if c.name != "returns"]
    assert [c.name for c in shipped] == names and [c.name for c in everything] == names
