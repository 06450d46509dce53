"""Incremental reconciliation (reconcile/memo.py) against a real PostgreSQL and real Delta tables:
with the state warm (a run verified every bucket equal), a run hashes no bucket when nothing
changed, exactly the changed bucket after one UPDATE, and still finds every planted fault; what
changes the text of unchanged tuples (an enum label renamed) or moves them (VACUUM FULL) sends the
table to a full pass, never to a false fault."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable, write_deltalake

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS, Contract
from bronze_assets.lib.delta.storage import as_storage
from bronze_assets.lib.reconcile import bisect, reconcile, source_side
from bronze_assets.lib.reconcile.command import reconcile_and_repair
from bronze_assets.lib.reconcile.memo import state_path
from bronze_assets.lib.reconcile.model import TableReconciliation
from bronze_assets.lib.source.introspect import discover_contract
from bronze_assets.settings import ENV_SOURCE_DSN
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import query
from bronze_assets_tests.test_reconcile_keys import _load, _table

ORDERS = CONTRACTS["orders"]


@pytest.fixture
def bronze(seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bronze:
    monkeypatch.setenv(ENV_SOURCE_DSN, seeded)
    monkeypatch.setattr(bisect, "BUCKET_ROWS", 16)  # many small buckets: a change touches one of them
    monkeypatch.setattr(bisect, "LEAF_ROWS", 8)
    monkeypatch.setattr(source_side, "PART_BLOCKS", 1)  # the full pass in parts, on both connections
    return Bronze(seeded, tmp_path / "bronze")


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["reconcile", *args])
    return result.exit_code, result.output


def _loaded(dsn: str, ddl: tuple[str, ...], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> tuple[Contract, Path]:
    """Table ``name`` made by ``ddl`` (its contract discovered) and loaded once into a new root, in
    buckets of 16 rows."""
    monkeypatch.setattr(bisect, "BUCKET_ROWS", 16)
    contract = _table(dsn, ddl, name)
    root = tmp_path / "bronze"
    _load(contract, dsn, root)
    return contract, root


def _run(contract: Contract, dsn: str, root: Path, deep: bool = False) -> TableReconciliation:
    (table,) = reconcile([contract], dsn, root, deep=deep).tables
    return table


def _warm(contract: Contract, dsn: str, root: Path) -> TableReconciliation:
    """Reconcile until the state proves every bucket equal: the run hashes nothing."""
    _run(contract, dsn, root)
    table = _run(contract, dsn, root)
    assert table.healthy and not table.mismatches, table.as_json()
    assert table.buckets_hashed == 0 and table.buckets_from_state > 10
    return table


def _repaired(contract: Contract, dsn: str, root: Path, deep: bool = False) -> None:
    (table,) = reconcile_and_repair([contract], dsn, root, deep=deep, repair=True).tables
    assert table.healthy, table.as_json()


def test_a_warm_run_hashes_no_bucket_and_exactly_the_one_changed(bronze: Bronze) -> None:
    bronze.load_direct("orders")
    cold = _run(ORDERS, bronze.dsn, bronze.root)
    assert cold.healthy and cold.buckets_from_state == 0 and cold.buckets_hashed >= cold.buckets - 1 > 10
    state = json.loads(as_storage(bronze.root).read_file(state_path("bz_orders")) or b"{}")
    assert len(state["buckets"]) == cold.buckets_hashed  # every bucket verified equal, kept
    warm = _warm(ORDERS, bronze.dsn, bronze.root)
    assert warm.source_rows == cold.source_rows and warm.bronze_active_rows == cold.bronze_active_rows
    assert warm.buckets_from_state == cold.buckets_hashed

    # an UPDATE that keeps the row's text (a new row version all the same): only its bucket is hashed
    query(bronze.dsn, "UPDATE tests.orders SET status = status WHERE order_id = 40")
    same = _run(ORDERS, bronze.dsn, bronze.root)
    assert same.healthy and not same.mismatches
    assert (same.buckets_hashed, same.buckets_from_state) == (1, cold.buckets_hashed - 1)
    assert _run(ORDERS, bronze.dsn, bronze.root).buckets_hashed == 0  # … and verified equal again
    code, out = _cli("orders")
    header, row = out.splitlines()[:2]
    assert code == 0 and "hashed" in header.split()
    assert dict(zip(header.split(), row.split(), strict=True))["hashed"] == "0"


def test_every_planted_fault_is_found_with_the_state_warm(bronze: Bronze) -> None:
    bronze.load_direct("orders")
    dsn, root = bronze.dsn, bronze.root
    _warm(ORDERS, dsn, root)

    DeltaTable(bronze.uri("orders")).delete("order_id = 11")  # a row deleted in bronze
    found = _run(ORDERS, dsn, root)
    assert found.samples() == {"missing": [11]} and found.buckets_hashed == 1
    _repaired(ORDERS, dsn, root)
    _warm(ORDERS, dsn, root)

    # changed in the source without touching updated_at
    query(dsn, "UPDATE tests.orders SET status = 'quietly' WHERE order_id = 40")
    found = _run(ORDERS, dsn, root)
    assert found.samples() == {"differs": [40]} and found.buckets_hashed == 1
    _repaired(ORDERS, dsn, root)
    _warm(ORDERS, dsn, root)

    # a bronze column altered by hand (record_hash kept): --deep
    DeltaTable(bronze.uri("orders")).update(updates={"status": "'TAMPERED'"}, predicate="order_id = 50")
    assert _run(ORDERS, dsn, root, deep=True).samples() == {"altered": [50]}
    _repaired(ORDERS, dsn, root, deep=True)
    _warm(ORDERS, dsn, root)

    # an ACTIVE key the source never had (past the state's last bucket)
    orders = DeltaTable(bronze.uri("orders"))
    row = orders.to_pyarrow_table(filters=[("order_id", "=", 12)])
    at = row.schema.get_field_index("order_id")
    extra = row.set_column(at, "order_id", pa.array([999_999], pa.int64()))
    write_deltalake(bronze.uri("orders"), extra.cast(row.schema), mode="append")
    found = _run(ORDERS, dsn, root)
    assert found.samples() == {"extra": [999_999]} and found.buckets_hashed == 1
    _repaired(ORDERS, dsn, root)
    _warm(ORDERS, dsn, root)

    query(dsn, "DELETE FROM tests.orders WHERE order_id = 60")  # a row deleted in the source
    found = _run(ORDERS, dsn, root)
    assert found.samples() == {"extra": [60]} and found.buckets_hashed == 1
    _repaired(ORDERS, dsn, root)
    _warm(ORDERS, dsn, root)


def test_vacuum_full_moves_rows_and_costs_only_a_full_pass(bronze: Bronze) -> None:
    bronze.load_direct("orders")
    warm = _warm(ORDERS, bronze.dsn, bronze.root)
    query(bronze.dsn, "DELETE FROM tests.orders WHERE order_id = 3")  # a hole VACUUM FULL closes …
    query(bronze.dsn, "VACUUM FULL tests.orders")  # … moving the rows behind it (same xmin)
    found = _run(ORDERS, bronze.dsn, bronze.root)
    assert found.samples() == {"extra": [3]}  # the one real difference, and no other
    assert found.buckets_from_state == 0  # a new relfilenode: a full pass
    assert found.buckets_hashed >= warm.buckets_from_state
    _repaired(ORDERS, bronze.dsn, bronze.root)
    _warm(ORDERS, bronze.dsn, bronze.root)
    query(bronze.dsn, "CLUSTER tests.orders USING orders_pkey")
    after = _run(ORDERS, bronze.dsn, bronze.root)
    assert after.healthy and not after.mismatches and after.buckets_from_state == 0


MOODS = ("CREATE TYPE tests.mood AS ENUM ('sad', 'ok', 'happy')",
         "CREATE TABLE tests.feelings (feeling_id integer PRIMARY KEY, mood tests.mood, note text, "
         "updated_at timestamptz)",
         "INSERT INTO tests.feelings SELECT i, (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::tests.mood, "
         "'note ' || i, TIMESTAMPTZ '2024-03-01 00:00:00+00' FROM generate_series(1, 300) AS i")


def test_an_enum_label_renamed_changes_the_text_of_unchanged_tuples(
        fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contract, root = _loaded(fresh_dsn, MOODS, "feelings", tmp_path, monkeypatch)
    _warm(contract, fresh_dsn, root)
    query(fresh_dsn, "ALTER TYPE tests.mood RENAME VALUE 'ok' TO 'fine'")  # no tuple changes
    found = _run(contract, fresh_dsn, root)
    assert found.buckets_from_state == 0  # the catalog token changed: a full pass
    assert found.samples(limit=1000) == {"differs": list(range(1, 301, 3))}


def test_an_unreadable_state_or_a_key_below_its_buckets_is_a_full_pass(bronze: Bronze) -> None:
    bronze.load_direct("orders")
    warm = _warm(ORDERS, bronze.dsn, bronze.root)
    storage = as_storage(bronze.root)
    storage.write_file(state_path("bz_orders"), b"{not json")
    found = _run(ORDERS, bronze.dsn, bronze.root)
    assert found.healthy and found.buckets_from_state == 0 and found.buckets_hashed >= warm.buckets_from_state
    _warm(ORDERS, bronze.dsn, bronze.root)  # written again
    # a key below the state's first bucket, dated long before the last load: missing, by a full pass
    query(bronze.dsn, "INSERT INTO tests.orders SELECT -5, customer_id, order_date, status, total_amount, "
                      "TIMESTAMPTZ '2001-01-01 00:00:00+00' FROM tests.orders WHERE order_id = 12")
    found = _run(ORDERS, bronze.dsn, bronze.root)
    assert found.samples() == {"missing": [-5]} and found.buckets_from_state == 0


TWINS = ("CREATE TABLE tests.twins (twin_id integer PRIMARY KEY, note text, updated_at timestamptz)",)


def test_a_state_written_against_another_server_is_not_trusted(tmp_path: Path) -> None:
    """Two servers set up alike (a clone, a restore, a second environment) give unchanged tuples the
    same oid, relfilenode, ctid and xmin: the state of one proves nothing about the other."""
    from bronze_assets.lib.source.embedded import EmbeddedPostgres

    servers = [EmbeddedPostgres(tmp_path / f"pg{i}" / "pgdata") for i in (0, 1)]
    try:
        dsns = [server.start() for server in servers]
        for dsn, text in zip(dsns, ("ours", "theirs"), strict=True):
            _table(dsn, TWINS, "twins")
            query(dsn, f"INSERT INTO tests.twins SELECT i, '{text} ' || i, "
                        f"TIMESTAMPTZ '2024-03-01 00:00:00+00' FROM generate_series(1, 50) AS i")
        versions = "SELECT 'tests.twins'::regclass::oid::text, ctid::text, xmin::text FROM tests.twins"
        assert query(dsns[0], versions) == query(dsns[1], versions)  # the same row versions …
        contract = discover_contract(dsns[0], "twins", "tests")
        root = tmp_path / "bronze"
        _load(contract, dsns[0], root)
        _run(contract, dsns[0], root)
        assert _run(contract, dsns[0], root).buckets_from_state == 1
        other = _run(contract, dsns[1], root)  # … holding other values: every row differs
        assert other.buckets_from_state == 0
        assert other.samples(limit=100) == {"differs": list(range(1, 51))}
    finally:
        for server in servers:
            server.stop()


NOTES = ("CREATE TABLE tests.notes (note_id integer PRIMARY KEY, updated_at timestamptz, note text)",
         "INSERT INTO tests.notes SELECT i, TIMESTAMPTZ '2024-03-01 00:00:00+00', 'note ' || i "
         "FROM generate_series(1, 300) AS i")


def test_a_column_dropped_and_added_again_changes_unchanged_tuples(
        fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A column added back without a rewrite (its value from the catalog: NULL or a default) changes
    the text of every tuple and writes none."""
    contract, root = _loaded(fresh_dsn, NOTES, "notes", tmp_path, monkeypatch)
    _warm(contract, fresh_dsn, root)
    query(fresh_dsn, "ALTER TABLE tests.notes DROP COLUMN note")
    query(fresh_dsn, "ALTER TABLE tests.notes ADD COLUMN note text DEFAULT 'gone'")
    found = _run(contract, fresh_dsn, root)
    assert found.buckets_from_state == 0
    assert found.samples(limit=1000) == {"differs": list(range(1, 301))}


def test_a_role_that_may_not_read_the_control_file_keeps_full_passes(
        fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contract, root = _loaded(fresh_dsn, NOTES, "notes", tmp_path, monkeypatch)
    name = f"plain_{uuid.uuid4().hex[:8]}"
    query(fresh_dsn, f"CREATE ROLE {name} LOGIN")
    query(fresh_dsn, f"GRANT USAGE ON SCHEMA tests TO {name}")
    query(fresh_dsn, f"GRANT SELECT ON tests.notes TO {name}")
    plain = re.sub(r"//[^@/]*@", f"//{name}@", fresh_dsn) if "@" in fresh_dsn.split("?")[0] \
        else fresh_dsn.replace("//", f"//{name}@", 1)
    assert _run(contract, plain, root).healthy
    query(fresh_dsn, "REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    try:
        for _ in range(2):
            table = _run(contract, plain, root)
            assert table.healthy and table.buckets_from_state == 0 and table.buckets_hashed > 10
    finally:
        query(fresh_dsn, "GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")
    _warm(contract, plain, root)  # allowed again: the state proves every bucket


PLACES = ("CREATE TABLE tests.place_a (a integer)",
          "CREATE TABLE tests.places (place_id integer PRIMARY KEY, at regclass, updated_at timestamptz)",
          "INSERT INTO tests.places SELECT i, 'tests.place_a'::regclass, "
          "TIMESTAMPTZ '2024-03-01 00:00:00+00' FROM generate_series(1, 300) AS i")


def test_a_column_naming_a_catalog_object_is_hashed_every_run(
        fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reg* value's text is the name of the object it points at: renaming the object changes
    every tuple's text and writes none, so no state proves such a table's buckets."""
    contract, root = _loaded(fresh_dsn, PLACES, "places", tmp_path, monkeypatch)
    assert _run(contract, fresh_dsn, root).healthy
    assert _run(contract, fresh_dsn, root).buckets_from_state == 0  # never proven by a state
    query(fresh_dsn, "ALTER TABLE tests.place_a RENAME TO place_b")
    found = _run(contract, fresh_dsn, root)
    assert found.samples(limit=1000) == {"differs": list(range(1, 301))}
