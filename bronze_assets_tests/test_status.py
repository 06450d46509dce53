"""``bronze status``: freshness against each cadence's window, failed loads, exit codes, ``--json``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from bronze_assets.cli import main
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.monitoring.status import FRESH, MATERIALIZE, NEVER, NO_SNAPSHOT, STALE, bronze_status
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def test_status_reports_fresh_stale_failed_and_never_loaded(seed_db: SeedDb, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))
    b = Bronze(fresh_dsn, tmp_path / "bronze")
    instance = dg.DagsterInstance.ephemeral()
    for table in ("products", "warehouses", "customers"):
        assert dg.materialize([b.assets[f"bz_{table}"]], resources=b.resources, instance=instance).success
    query(fresh_dsn, "ALTER TABLE tests.customers RENAME COLUMN email TO email_address")
    failed = dg.materialize([b.assets["bz_customers"]], resources=b.resources, instance=instance,
                            raise_on_error=False)
    assert not failed.success

    now = datetime.now(UTC)
    rows = {s.table: s for s in bronze_status(b.storage(), now=now, instance=instance)}
    assert rows["bz_products"].freshness == FRESH and rows["bz_products"].healthy
    assert rows["bz_products"].rows == rows["bz_products"].active == 100
    assert rows["bz_products"].delta_version == 0 and rows["bz_products"].files >= 1
    assert rows["bz_products"].checks["quality_score"] == "passed"
    assert rows["bz_customers"].last_load_failed and "email" in (rows["bz_customers"].last_error or "")
    assert rows["bz_customers"].checks["schema_contract"] == "failed"
    assert "schema_contract" in (rows["bz_customers"].failing_check or "")
    assert rows["bz_orders"].freshness == NEVER and not rows["bz_orders"].healthy
    assert rows["bz_warehouses"].checks == {"schema_contract": "passed", "quality_score": "passed",
                                            "key_uniqueness": "passed"}
    later = {s.table: s for s in bronze_status(b.storage(), now=now + timedelta(hours=27))}
    assert later["bz_products"].freshness == STALE, "a daily table is stale after 26 h"
    assert later["bz_warehouses"].freshness == FRESH, "a monthly table is not"
    assert next(iter(later)) != "bz_warehouses", "problems are listed first"

    monkeypatch.setenv("BRONZE_ROOT", str(b.root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance"))
    (tmp_path / "no_instance").mkdir()
    result = CliRunner().invoke(main, ["status", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["healthy"] is False
    assert {t["table"] for t in report["tables"] if t["healthy"]} == {"bz_products", "bz_warehouses"}
    text = CliRunner().invoke(main, ["status"])
    assert text.exit_code == 1 and "bz_customers: last load failed" in text.output
    assert "bz_orders: never loaded" in text.output


def _hinted(output: str, table: str) -> list[str]:
    """The command ``bronze status`` tells the user to run for ``table`` (between backticks)."""
    (line,) = [line for line in output.splitlines() if line.startswith(f"{table}: ")]
    command = re.search(r"`(dagster asset materialize [^`]+)`", line)
    assert command, line
    return command.group(1).split()


def _run_hint(words: list[str], env: dict[str, str]) -> None:
    """Run a hinted ``dagster …`` command exactly as printed, in a shell-like subprocess."""
    assert words[:3] == ["dagster", "asset", "materialize"]
    done = subprocess.run([sys.executable, "-m", "dagster", *words[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_status_hints_the_partitioned_command_and_flags_a_missing_snapshot(
        seed_db: SeedDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    today = datetime.now(UTC).date()
    start = today - timedelta(days=2)
    monkeypatch.setenv("BRONZE_START_DATE", start.isoformat())
    monkeypatch.setenv("BRONZE_PARTITIONS_START", "2026-01-01")  # fewer months for the ranged run
    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))
    query(fresh_dsn, "UPDATE tests.returns SET updated_at = now() WHERE return_id % 5 = 0")
    b = Bronze(fresh_dsn, tmp_path / "bronze")
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = dict(os.environ) | {"BRONZE_SOURCE_DSN": fresh_dsn, "BRONZE_ROOT": str(b.root),
                              "DAGSTER_HOME": str(home)}
    instance = dg.DagsterInstance.ephemeral()
    # the trial's trap: only today's partition of a daily table, which reads today's changes only
    b.materialize("returns", partition=today.isoformat(), instance=instance)
    assert 0 < b.read("returns").height < query(fresh_dsn, "SELECT count(*) FROM tests.returns")[0][0]

    rows = {s.table: s for s in bronze_status(b.storage(), instance=instance)}
    returns = rows["bz_returns"]
    assert (returns.freshness, returns.state, returns.healthy) == (FRESH, NO_SNAPSHOT, False)
    assert (returns.snapshot_partition, returns.snapshot_loaded) == (start.isoformat(), False)
    assert returns.action == f"{MATERIALIZE} bz_returns --partition {start.isoformat()}"
    month = today.replace(day=1).isoformat()
    assert rows["bz_orders"].action == f"{MATERIALIZE} bz_orders --partition-range 2026-01-01...{month}"
    assert rows["bz_stock_levels"].action == \
        f"{MATERIALIZE} bz_stock_levels --partition-range {start.isoformat()}...{today.isoformat()}"
    assert rows["bz_products"].action == f"{MATERIALIZE} bz_products"
    assert rows["bz_products"].snapshot_loaded is None and rows["bz_orders"].snapshot_loaded is None

    monkeypatch.setenv("BRONZE_ROOT", str(b.root))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    text = CliRunner().invoke(main, ["status"])
    assert text.exit_code == 1, text.output
    assert re.search(r"^bz_returns +NO SNAPSHOT ", text.output, re.M), text.output
    assert f"bz_returns: its snapshot partition {start.isoformat()} (BRONZE_START_DATE" in text.output
    report = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)
    (entry,) = [t for t in report["tables"] if t["table"] == "bz_returns"]
    assert entry["freshness"] == FRESH and entry["state"] == NO_SNAPSHOT and entry["healthy"] is False
    assert entry["snapshot_loaded"] is False and entry["action"] == returns.action

    # the hints work as printed: the snapshot partition, and every month of a monthly table in one run
    _run_hint(_hinted(text.output, "bz_returns"), env)
    _run_hint(_hinted(text.output, "bz_orders"), env)
    after = CliRunner().invoke(main, ["status", "--json"])
    tables = {t["table"]: t for t in json.loads(after.output)["tables"]}
    assert tables["bz_returns"]["state"] == FRESH and tables["bz_returns"]["healthy"] is True
    assert tables["bz_returns"]["snapshot_loaded"] is True and tables["bz_returns"]["action"] is None
    assert tables["bz_returns"]["active"] == query(fresh_dsn, "SELECT count(*) FROM tests.returns")[0][0]
    assert tables["bz_orders"]["healthy"] is True
    assert tables["bz_orders"]["active"] == query(fresh_dsn, "SELECT count(*) FROM tests.orders")[0][0]


def test_a_snapshot_counts_as_loaded_by_old_rows_or_by_dagster(seed_db: SeedDb, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    today = datetime.now(UTC).date()
    start = today - timedelta(days=1)
    monkeypatch.setenv("BRONZE_START_DATE", start.isoformat())
    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))
    # every stock level changed today: the snapshot partition finds nothing and commits nothing
    query(fresh_dsn, "UPDATE tests.stock_levels SET updated_at = now()")
    b = Bronze(fresh_dsn, tmp_path / "bronze")
    instance = dg.DagsterInstance.ephemeral()
    # a CDC table's first run reads the whole table in its slot's snapshot, whatever its partition
    b.materialize("inventory", partition=today.isoformat(), instance=instance)
    assert b.read("inventory").height == query(fresh_dsn, "SELECT count(*) FROM tests.inventory")[0][0]
    b.materialize("stock_levels", partition=start.isoformat(), instance=instance)
    b.materialize("stock_levels", partition=today.isoformat(), instance=instance)
    assert b.table("stock_levels").get_add_actions(flatten=True).num_rows >= 1

    plain = {s.table: s for s in bronze_status(b.storage())}
    assert plain["bz_inventory"].snapshot_loaded is True and plain["bz_inventory"].state == FRESH, \
        "all history is in today's files: rows updated before the snapshot day ended"
    assert plain["bz_stock_levels"].state == NO_SNAPSHOT, "nothing in the Delta log shows the snapshot"
    known = {s.table: s for s in bronze_status(b.storage(), instance=instance)}
    assert known["bz_stock_levels"].snapshot_loaded is True and known["bz_stock_levels"].healthy, \
        "Dagster recorded the (empty) snapshot partition as materialized"


def test_a_shared_scope_opens_each_table_once_for_its_readers(tmp_path: Path) -> None:
    """Within shared_tables() a table is opened once for its readers (or handed over by its load);
    outside, every reader opens it afresh and nothing is kept."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from bronze_assets.lib.delta.storage import Storage, shared_tables

    storage = Storage(str(tmp_path))
    write_deltalake(storage.uri("bz_products"), pa.table({"product_id": [1, 2]}))
    assert storage.open_shared("bz_products") is not storage.open_shared("bz_products")
    assert storage.open_shared("bz_missing") is None
    handed = DeltaTable(storage.uri("bz_products"))
    storage.share("bz_products", handed)  # outside a scope: not kept
    assert storage.open_shared("bz_products") is not handed
    with shared_tables():
        first = storage.open_shared("bz_products")
        assert storage.open_shared("bz_products") is first
        storage.share("bz_products", handed)
        assert storage.open_shared("bz_products") is handed
        assert storage.open_shared("bz_missing") is None
    assert storage.open_shared("bz_products") is not handed
