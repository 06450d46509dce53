"""PII end to end: loads encrypt customers' name/email, role reads, GDPR erasure across versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.delta.control import AUDIT_LOG, read_table
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.delta.protection import UnprotectedWriteError
from bronze_assets.lib.delta.timetravel import history, restore
from bronze_assets.lib.governance.erasure import forget_subject
from bronze_assets.lib.governance.pii import decrypt_table, pii_protection
from bronze_assets.lib.governance.reader import read_table as read_as
from bronze_assets.lib.load import extract_and_stage
from bronze_assets_tests.bronze_helpers import Bronze, active_hashes, source_hashes
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

pytestmark = pytest.mark.integration
CUSTOMERS = CONTRACTS["customers"]


@pytest.fixture
def bronze(seed_db: SeedDb, tmp_path: Path) -> Bronze:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    return Bronze(fresh_dsn, tmp_path / "bronze")


def _plaintext(dsn: str, limit: int = 50) -> list[str]:
    rows = query(dsn, "SELECT customer_name, email FROM tests.customers WHERE customer_name IS NOT NULL "
                      "AND email IS NOT NULL AND length(customer_name) > 6 "
                      f"ORDER BY customer_id LIMIT {limit}")
    return [v for row in rows for v in row]


def test_loads_store_no_plaintext_pii_and_admins_read_it_back(bronze: Bronze) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([bronze.assets["bz_customers"]], resources=bronze.resources, instance=instance)
    assert result.success
    logs = "\n".join(str(e.message or "") + str(e.dagster_event) for e in instance.all_logs(result.run_id))
    query(bronze.dsn, "UPDATE tests.customers SET email = 'moved.' || email, updated_at = now() "
                      "WHERE customer_id % 4 = 0")
    assert bronze.materialize("customers")["rows_updated"] > 0
    secrets = _plaintext(bronze.dsn)
    data = [p.read_bytes() for p in Path(bronze.root).rglob("*") if p.is_file()]
    assert data, "the load wrote files"
    for value in secrets:
        assert all(value.encode() not in blob for blob in data), f"plaintext {value!r} in a bronze file"
        assert value not in logs, f"plaintext {value!r} in the run's logs"

    frame = bronze.read("customers")
    assert frame["email"].str.starts_with("enc:v1:").all()
    assert active_hashes(frame, "customer_id") == source_hashes(bronze.dsn, "customers"), \
        "record_hash is computed on plaintext"
    admin = pl.from_arrow(read_as("customers", "admin", storage=bronze.storage()))
    source = dict(query(bronze.dsn, "SELECT customer_id, email FROM tests.customers"))
    assert isinstance(admin, pl.DataFrame)
    assert dict(zip(admin["customer_id"], admin["email"], strict=True)) == source
    analyst = pl.from_arrow(read_as("customers", "analyst", storage=bronze.storage()))
    assert isinstance(analyst, pl.DataFrame)
    masked = analyst.join(admin.select("customer_id", pl.col("email").alias("clear")), on="customer_id")
    assert masked["email"].drop_nulls().str.contains("***", literal=True).all()
    assert masked.filter(pl.col("email") == pl.col("clear")).height == 0
    audit = read_table(str(bronze.root), AUDIT_LOG).to_pylist()
    reads = [a for a in audit if a["operation_type"] == "PII_READ"]
    assert len(reads) == 2


def test_forget_makes_the_customer_unrecoverable_in_every_version_and_reloads_keep_it(bronze: Bronze) -> None:
    bronze.materialize("customers")
    query(bronze.dsn, "UPDATE tests.customers SET customer_name = customer_name || ' Jr', updated_at = now() "
                      "WHERE customer_id IN (7, 8)")
    bronze.materialize("customers")
    uri, root = bronze.uri("customers"), bronze.storage()
    versions = range(bronze.version("customers") + 1)
    result = forget_subject("customers", 7, storage=root)
    assert result.rows_forgotten == 1
    latest = history(root, "bz_customers", 1)[0]
    assert (latest["operation"], latest["rows_updated"]) == ("ERASURE", 1), "bronze history names it"

    for version in versions:  # time travel to every retained version
        old = DeltaTable(uri, version=version).to_pyarrow_table()
        clear = pl.from_arrow(decrypt_table(old, CUSTOMERS, root))
        assert isinstance(clear, pl.DataFrame)
        row7 = clear.filter(pl.col("customer_id") == 7)
        assert row7["customer_name"].to_list() == [None] and row7["email"].to_list() == [None]
        row8 = clear.filter(pl.col("customer_id") == 8)
        assert row8["customer_name"][0] is not None, "other customers still decrypt"

    query(bronze.dsn, "UPDATE tests.customers SET email = 'new@example.com', updated_at = now() "
                      "WHERE customer_id = 7")
    meta = bronze.materialize("customers")
    assert meta["rows_forgotten_skipped"] == 1
    row = bronze.read("customers").filter(pl.col("customer_id") == 7).to_dicts()[0]
    assert row["record_status"] == "FORGOTTEN" and row["email"] is None and row["customer_name"] is None
    audit = [a for a in read_table(root, AUDIT_LOG).to_pylist() if a["operation_type"] == "ERASURE"]
    assert len(audit) == 1 and audit[0]["records_affected"] == 1


def test_pii_is_never_written_without_its_hook(bronze: Bronze) -> None:
    staged = extract_and_stage(CUSTOMERS, bronze.dsn, bronze.storage())
    try:
        assert staged.pii is not None
        staged.pii = None
        with pytest.raises(UnprotectedWriteError, match="bz_customers"):
            BronzeMerger(CUSTOMERS, bronze.storage()).merge(staged)
    finally:
        staged.cleanup()
    assert not Path(bronze.uri("customers")).exists()


def test_restore_to_before_an_erasure_keeps_the_customer_forgotten(bronze: Bronze) -> None:
    bronze.materialize("customers")
    forget_subject("customers", 5, storage=bronze.storage())
    version = bronze.version("customers")
    with pytest.raises(UnprotectedWriteError, match="bz_customers"):  # lib/delta needs the PII hook
        restore(bronze.storage(), CUSTOMERS, version=0)
    assert bronze.version("customers") == version, "nothing was restored without the hook"
    restore(bronze.storage(), CUSTOMERS, version=0,
            pii=pii_protection(CUSTOMERS, bronze.storage()))
    row = bronze.read("customers").filter(pl.col("customer_id") == 5).to_dicts()[0]
    assert row["record_status"] == "FORGOTTEN" and row["email"] is None
    audits = read_table(str(bronze.root), AUDIT_LOG).to_pylist()
    (audit,) = [a for a in audits if a["operation_type"] == "RESTORE"]
    assert json.loads(audit["details"])["erasures_reapplied"] == 1


def test_cli_history_and_restore(bronze: Bronze, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_ROOT", str(bronze.root))
    bronze.load_direct("warehouses")
    query(bronze.dsn, "UPDATE tests.warehouses SET capacity = capacity + 1, updated_at = now()")
    bronze.load_direct("warehouses")
    runner = CliRunner()
    shown = runner.invoke(main, ["history", "bz_warehouses"])
    assert shown.exit_code == 0 and shown.output.count("MERGE") == 1 and "WRITE" in shown.output
    dry = runner.invoke(main, ["restore", "bz_warehouses", "--version", "0", "--dry-run"])
    assert dry.exit_code == 0 and "dry run" in dry.output and bronze.version("warehouses") == 1
    assert "rows changed" in dry.output
    done = runner.invoke(main, ["restore", "bz_warehouses", "--version", "0"])
    assert done.exit_code == 0 and bronze.version("warehouses") == 2
    bad = runner.invoke(main, ["restore", "bz_nope", "--version", "0"])
    assert bad.exit_code == 1 and "unknown table" in bad.output


PLANTED = "Pl4nted-S3cret-7fq9"


def test_a_planted_secret_never_reaches_logs_metadata_or_control_tables(
    seed_db: SeedDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    monkeypatch.setenv("KConnectionString", fresh_dsn)  # the source comes from the secret chain
    monkeypatch.setenv("KPassword", PLANTED)  # the embedded server trusts local users: any password works
    from bronze_assets.defs.resources import BronzeStorage, PostgresSource, build_resources
    from bronze_assets.lib.secrets import clear_cache, install_log_redaction

    clear_cache()
    install_log_redaction([caplog.handler])
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    resources = build_resources(PostgresSource(), BronzeStorage(root=str(bronze.root)))
    instance = dg.DagsterInstance.ephemeral()
    ok = dg.materialize([bronze.assets["bz_products"]], resources=resources, instance=instance)
    assert ok.success
    monkeypatch.setenv("KConnectionString", fresh_dsn.replace("/t_", "/missing_"))
    clear_cache()
    failed = dg.materialize([bronze.assets["bz_products"]], resources=resources, instance=instance,
                            raise_on_error=False)
    assert not failed.success
    texts = [caplog.text]
    for run in (ok, failed):
        for event in instance.all_logs(run.run_id):
            texts.append(f"{event.user_message} {event.dagster_event}")
    audit = read_table(str(bronze.root), AUDIT_LOG).to_pylist()
    texts.append(json.dumps(audit, default=str))
    assert any(a["status"] == "FAILED" and "missing_" in a["error_message"] for a in audit)
    blobs = [p.read_bytes() for p in Path(bronze.root).rglob("*") if p.is_file()]
    assert all(PLANTED not in text for text in texts)
    assert all(PLANTED.encode() not in blob for blob in blobs)


def test_quarantined_customers_hold_no_plaintext_pii(bronze: Bronze) -> None:
    secrets = _plaintext(bronze.dsn)
    query(bronze.dsn, "ALTER TABLE tests.customers ALTER COLUMN updated_at TYPE text")
    result = dg.materialize([bronze.assets["bz_customers"]], resources=bronze.resources, raise_on_error=False)
    assert not result.success
    quarantine = DeltaTable(str(bronze.root / "bz_quarantine")).to_pyarrow_table()
    (customers,) = query(bronze.dsn, "SELECT count(*) FROM tests.customers")[0]
    assert quarantine.num_rows == customers
    records = [json.loads(r) for r in quarantine["record"].to_pylist()]
    assert all(r["email"] is None or r["email"].startswith("enc:v1:") for r in records)
    blobs = [p.read_bytes() for p in Path(bronze.root).rglob("*.parquet")]
    for value in secrets:
        assert all(value.encode() not in blob for blob in blobs), f"plaintext {value!r} quarantined"


# --------------------------------------------------------------------------- bronze read (issue #22)
BRONZE_CLI = Path(sys.executable).with_name("bronze")


def _read_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``bronze read`` in its own interpreter: the crash of #22 came at interpreter exit, after the
    rows were printed, so only a real process exit shows it (a hang fails by the timeout)."""
    return subprocess.run([str(BRONZE_CLI), "read", *args], env=dict(os.environ), capture_output=True,
                          text=True, timeout=120)


def _keys(dsn: str, table: str, key: str, where: str = "TRUE", limit: int | None = None) -> list[int]:
    sql = f"SELECT {key} FROM tests.{table} WHERE {where} ORDER BY {key}"
    return [r[0] for r in query(dsn, sql + (f" LIMIT {limit}" if limit else ""))]


def test_cli_read_of_partitioned_tables_exits_0_with_rows_in_key_order(bronze: Bronze) -> None:
    bronze.load_direct("orders")
    bronze.load_direct("shipments")
    files = len(bronze.table("orders").file_uris())
    assert files > 10, f"bz_orders must span many files (one per month) to show the bug, has {files}"
    for limit in (1, 2, 7, 20):
        done = _read_cli("orders", "--role", "analyst", "--limit", str(limit), "--format", "json")
        assert done.returncode == 0, (limit, done.returncode, done.stderr[-2000:])
        got = [json.loads(line)["order_id"] for line in done.stdout.splitlines()]
        assert got == _keys(bronze.dsn, "orders", "order_id", limit=limit), f"--limit {limit}"
    everything = _read_cli("shipments", "--role", "analyst", "--limit", "0", "--format", "csv",
                           "--columns", "shipment_id")
    assert everything.returncode == 0, everything.stderr[-2000:]
    shipment_ids = [int(v) for v in everything.stdout.splitlines()[1:]]
    assert shipment_ids == _keys(bronze.dsn, "shipments", "shipment_id")

    where = "status = 'DELIVERED' AND order_id > 100"
    filtered = _read_cli("orders", "--role", "analyst", "--where", where, "--limit", "5",
                         "--columns", "order_id,status,total_amount")
    assert filtered.returncode == 0, filtered.stderr[-2000:]
    lines = filtered.stdout.splitlines()
    assert [int(line.split()[0]) for line in lines[1:]] == _keys(bronze.dsn, "orders", "order_id", where, 5)
    assert all(line == line.rstrip() for line in lines), "no trailing blanks"
    assert lines[0].split() == ["order_id", "status", "total_amount"] and "(5 rows)" in filtered.stderr
    one = _read_cli("orders", "--role", "analyst", "--where", "order_id = 7", "--columns", "order_id")
    assert one.returncode == 0 and one.stdout.split() == ["order_id", "7"] and "(1 row)" in one.stderr


def test_read_where_errors_name_the_table_and_the_problem(bronze: Bronze) -> None:
    bronze.load_direct("orders")
    runner = CliRunner()
    cases = {
        "order_id >": "does not parse: Expected: an expression, found: the end of the condition",
        "order_id = 1; DROP TABLE x":
            "does not parse: Expected: the end of the condition, found: ; at column 13",
        "nope = 1": "names no column of the table: nope; its columns are order_id, customer_id",
        "order_id = 'x'": "cannot be applied: Arrow error: Cast error: Cannot cast string 'x'",
        "  ": "the condition is empty",
    }
    for where, problem in cases.items():
        result = runner.invoke(main, ["read", "orders", "--role", "admin", "--where", where])
        assert result.exit_code == 1, (where, result.output)
        assert f"error: --where: bz_orders: {'' if not where.strip() else 'the condition '}" in result.output
        assert problem in result.output, (where, result.output)
    # the Python API: ``where`` in the query, ``filters`` on what it returns, then the limit; key order
    got = read_as("orders", "analyst", storage=bronze.storage(), columns=["order_id"],
                  where="order_id % 2 = 0", filters=[("status", "=", "DELIVERED")], limit=4)
    assert got["order_id"].to_pylist() == _keys(bronze.dsn, "orders", "order_id",
                                                 "order_id % 2 = 0 AND status = 'DELIVERED'", 4)
    assert got.schema.field("order_id").type == pa.int64()


def test_read_where_on_personal_data_keeps_the_matrix(bronze: Bronze) -> None:
    bronze.materialize("customers")
    bronze.load_direct("suppliers")
    runner = CliRunner()
    encrypted = runner.invoke(main, ["read", "customers", "--role", "admin", "--where", "email LIKE 'a%'"])
    assert encrypted.exit_code == 1
    assert "bz_customers: the condition \"email LIKE 'a%'\" names email, stored encrypted" in encrypted.output
    assert "filter on customer_id instead" in encrypted.output
    masked = runner.invoke(main, ["read", "suppliers", "--role", "analyst", "--where",
                                  "CONTACT_NUMBER LIKE '5%'"])
    assert masked.exit_code == 1 and "names contact_number, which role analyst reads masked" in masked.output
    subquery = runner.invoke(main, ["read", "suppliers", "--role", "analyst", "--where",
                                    "supplier_id IN (SELECT supplier_id FROM bronze)"])
    assert subquery.exit_code == 1 and "holds a subquery" in subquery.output
    (supplier, phone), *_ = query(bronze.dsn, "SELECT supplier_id, contact_number FROM tests.suppliers WHERE "
                                              "contact_number NOT LIKE '%''%' ORDER BY supplier_id")
    seen = runner.invoke(main, ["read", "suppliers", "--role", "engineer", "--format", "json",
                                "--where", f"contact_number = '{phone}'", "--columns", "supplier_id"])
    assert seen.exit_code == 0, seen.output
    assert supplier in [json.loads(line)["supplier_id"] for line in seen.stdout.splitlines()]
    ids = runner.invoke(main, ["read", "customers", "--role", "analyst", "--format", "json",
                               "--where", "customer_id IN (9, 4)"])
    assert ids.exit_code == 0, ids.output
    rows = [json.loads(line) for line in ids.stdout.splitlines()]
    assert [r["customer_id"] for r in rows] == [4, 9]
    assert all(r["email"] is None or "***" in r["email"] for r in rows), "masked as ever"
    audit = [a for a in read_table(str(bronze.root), AUDIT_LOG).to_pylist()
             if a["operation_type"] == "PII_READ"]
    refused = [a for a in audit if a["status"] == "FAILED"]
    assert len(refused) == 3 and all("ReadConditionError" in a["error_message"] for a in refused), \
        "refused reads of PII tables are audited as before"
    ok = [json.loads(a["details"]) for a in audit if a["status"] == "SUCCESS"]
    assert {d["where"] for d in ok} == {f"contact_number = '{phone}'", "customer_id IN (9, 4)"}
    assert [d["masked"] for d in ok if d["where"].startswith("customer_id")] == [["customer_name", "email"]]
