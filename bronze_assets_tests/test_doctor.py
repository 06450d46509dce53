"""``bronze doctor`` against the embedded PostgreSQL: what a loader role lacks, with SQL that, run by
the owner exactly as printed, makes the source ready."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS
from bronze_assets.lib.source.dsn import dsn_parts
from bronze_assets_tests.conftest import query
from bronze_assets_tests.test_failures import PASSWORD, WRONG, password_role  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

CDC_TABLES = [c.source_ref for c in CONTRACTS.values() if c.cdc]


def _doctor(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["doctor", "--dsn", dsn, *args])


def _as(dsn: str, role: str, password: str = "") -> str:
    user = dsn_parts(dsn)["user"]
    assert dsn.startswith(f"postgresql://{user}:")
    return dsn.replace(f"postgresql://{user}:", f"postgresql://{role}:{password}", 1)


def _printed_sql(output: str, block: str) -> list[str]:
    """The statements of the output's ``-- required`` / ``-- recommended`` block, as printed."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"-- {block}:"))
    statements = []
    for line in lines[start + 1:]:
        if not line:
            break
        if not line.startswith("--"):
            assert line.endswith(";"), line
            statements.append(line)
    return statements


def _rows(output: str) -> list[list[str]]:
    """The table's rows: table, check, status, fix (columns are two spaces or more apart)."""
    return [re.split(r"\s{2,}", line, maxsplit=3) for line in output.splitlines()[1:] if line
            and not line.startswith("--") and not line.endswith(";") and " — " not in line]


@pytest.fixture
def role(seeded: str) -> Iterator[str]:
    """A login role with no grant and no REPLICATION (CONNECT comes from PUBLIC)."""
    name = f"loader_{uuid.uuid4().hex[:8]}"
    query(seeded, f"CREATE ROLE {name} LOGIN")
    yield name
    query(seeded, f"DROP OWNED BY {name}")
    query(seeded, f"DROP ROLE {name}")


def test_a_loader_without_grants_gets_the_exact_sql_and_is_ready_once_the_owner_runs_it(
        seeded: str, role: str) -> None:
    loader = _as(seeded, role)
    first = _doctor(loader)
    assert first.exit_code == 1, first.output
    required = _printed_sql(first.output, "required")
    assert f'GRANT USAGE ON SCHEMA "tests" TO "{role}";' in required
    for table in CONTRACTS.values():
        assert f'GRANT SELECT ON "tests"."{table.source_name}" TO "{role}";' in required
    assert f'ALTER ROLE "{role}" WITH REPLICATION;' in required
    for table in CDC_TABLES:  # a non-owner without CREATE on the database: the owner creates them
        name = table.split(".")[1]
        assert f"CREATE PUBLICATION bronze_{name} FOR TABLE {table};" in required
    assert ["tests.orders", "SELECT on table", "missing", f'GRANT SELECT ON "tests"."orders" TO "{role}"'] \
        in _rows(first.output)
    assert "Traceback" not in first.output and "NOT ready" in first.output.splitlines()[-1]

    for statement in required:  # exactly as printed, as the owner (here the superuser)
        query(seeded, statement.removesuffix(";"))
    ready = _doctor(loader)
    assert ready.exit_code == 0, ready.output
    assert "-- required" not in ready.output and ": ready — " in ready.output.splitlines()[-1]
    recommended = _printed_sql(ready.output, "recommended")
    assert f'GRANT pg_read_all_stats TO "{role}";' in recommended
    assert not [s for s in recommended if "INDEX" in s]  # `bronze seed` built them

    query(seeded, f'GRANT pg_read_all_stats TO "{role}"')
    report = json.loads(_doctor(loader, "--json").output)
    assert report["ok"] and report["missing"] == 0 and report["error"] is None
    assert [c["check"] for c in report["checks"] if c["status"] != "ok"] == ["max_slot_wal_keep_size (CDC)"]


def test_a_cdc_table_without_a_publication_names_the_owners_create_publication(
        seeded: str, role: str) -> None:
    """Grants and REPLICATION given, the publication missing and the loader not the owner: the row
    says what the load would say (the fallback reason) and the owner's CREATE PUBLICATION."""
    query(seeded, f"ALTER ROLE {role} WITH REPLICATION")
    query(seeded, f"GRANT USAGE ON SCHEMA tests TO {role}")
    query(seeded, f"GRANT SELECT ON ALL TABLES IN SCHEMA tests TO {role}")
    result = _doctor(_as(seeded, role), "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    missing = [(c["table"], c["check"], c["fix"]) for c in report["checks"] if c["status"] == "missing"]
    assert missing == [(t, "publication (CDC)", f"CREATE PUBLICATION bronze_{t.split('.')[1]} FOR TABLE {t}")
                       for t in CDC_TABLES]
    (orders,) = [c["detail"] for c in report["checks"]
                 if c["table"] == "tests.orders" and c["check"] == "publication (CDC)"]
    assert "does not own tests.orders" in orders and "CREATE privilege on database" in orders
    assert report["sql_required"] == [fix for _, _, fix in missing]

    query(seeded, "CREATE PUBLICATION bronze_orders FOR TABLE tests.orders")  # one of the three
    still = json.loads(_doctor(_as(seeded, role), "--json").output)
    assert [c["table"] for c in still["checks"] if c["status"] == "missing"] == [
        t for t in CDC_TABLES if t != "tests.orders"]


def test_a_table_without_an_updated_at_index_is_a_warning_with_the_create_index(seeded: str) -> None:
    query(seeded, "DROP INDEX tests.orders_updated_at")  # `bronze seed` built it
    query(seeded, "CREATE INDEX orders_other ON tests.orders (order_id, updated_at)")  # not first: no use
    result = _doctor(seeded)
    assert result.exit_code == 0, result.output
    warned = [row for row in _rows(result.output) if row[2] == "warn"]
    assert [row for row in warned if row[1] == "index on updated_at"] == [  # only the table without one
        ["tests.orders", "index on updated_at", "warn",
         'CREATE INDEX CONCURRENTLY IF NOT EXISTS "orders_updated_at" ON "tests"."orders" (updated_at)']]
    assert 'CREATE INDEX CONCURRENTLY IF NOT EXISTS "orders_updated_at" ON "tests"."orders" (updated_at);' \
        in _printed_sql(result.output, "recommended")


def test_a_wrong_password_is_one_line_naming_the_server_and_exit_1(
        fresh_dsn: str, password_role: str) -> None:  # noqa: F811 - the fixture imported above
    result = _doctor(_as(fresh_dsn, password_role, f"{WRONG}@"))
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    parts = dsn_parts(fresh_dsn)
    assert line.startswith("error: cannot connect to the PostgreSQL source (host=")
    assert f"db={parts['db']}" in line and f"user={password_role}" in line
    assert f'password authentication failed for user "{password_role}"' in line
    assert WRONG not in line and PASSWORD not in line and "Traceback" not in line
