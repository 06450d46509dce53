"""Bronze on S3 (ARCHITECTURE §2.9, issue #23 deliverables 1 and 5), local engine: the same loads,
commands and maintenance as on a local folder, on a real S3 protocol server (moto, fixture in
``s3.py``) configured only through ``BRONZE_ROOT=s3://…`` and the standard AWS variables — exact
after each step, and one-line errors when the store refuses or cannot be reached."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.assets import build_bronze_asset
from bronze_assets.defs.resources import BronzeStorage, PostgresSource, build_resources
from bronze_assets.lib.cdc import STREAM, cdc_load
from bronze_assets.lib.delta.maintenance import maintain_table
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.failures import Cause, classify
from bronze_assets_tests.bronze_helpers import active_hashes, source_hashes
from bronze_assets_tests.conftest import query
from bronze_assets_tests.s3 import S3, free_port, start_moto, stop

pytestmark = pytest.mark.integration

TODAY = datetime.now(UTC).date()


class OnS3:
    """A bronze root on the test's bucket wired to one source DSN."""

    def __init__(self, dsn: str, s3: S3) -> None:
        self.dsn, self.s3 = dsn, s3
        self.storage = Storage(s3.root)
        self.resources = build_resources(PostgresSource(dsn=dsn), BronzeStorage(root=s3.root))
        self.assets = {c.bronze_table: build_bronze_asset(c) for c in CONTRACTS.values()}

    def materialize(self, table: str, partition: str | None = None, **kwargs: object) -> None:
        result = dg.materialize([self.assets[f"bz_{table}"]], resources=self.resources,
                                partition_key=partition, **kwargs)
        assert result.success

    def read(self, table: str) -> pl.DataFrame:
        frame = pl.from_arrow(DeltaTable(self.storage.uri(f"bz_{table}")).to_pyarrow_table())
        assert isinstance(frame, pl.DataFrame)
        return frame

    def assert_exact(self, table: str) -> pl.DataFrame:
        """bz_<table> equals the source (§2.2 hashes), never a duplicate key."""
        pk = CONTRACTS[table].primary_key[0]
        frame = self.read(table)
        assert active_hashes(frame, pk) == source_hashes(self.dsn, table)
        assert frame[pk].n_unique() == frame.height
        return frame


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_initial_load_and_hourly_tick_on_s3_then_status_history_restore_and_maintenance(
        seeded: str, s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start = TODAY - timedelta(days=1)
    monkeypatch.setenv("BRONZE_START_DATE", start.isoformat())
    b = OnS3(seeded, s3)
    b.materialize("inventory", start.isoformat())
    b.materialize("order_details", start.isoformat())
    b.assert_exact("inventory")
    b.assert_exact("order_details")

    query(seeded, "UPDATE tests.inventory SET quantity_available = 77, updated_at = now() "
                  "WHERE inventory_id = 3")
    query(seeded, "DELETE FROM tests.inventory WHERE inventory_id = 4")
    query(seeded, "INSERT INTO tests.inventory VALUES (990001, 1, 1, 5, now())")
    b.materialize("inventory", TODAY.isoformat())  # the hourly tick of the open day
    frame = b.assert_exact("inventory")
    assert frame.filter(pl.col("inventory_id") == 4)["record_status"].to_list() == ["DELETED"]

    keys = s3.keys("bronze/")
    assert any(k.startswith("bronze/bz_inventory/_delta_log/") for k in keys)
    assert any(k.startswith("bronze/bz_audit_log/_delta_log/") for k in keys), "control tables on S3 too"
    assert not (tmp_path / "bronze").exists() and not (tmp_path / "data" / "bronze").exists(), \
        "nothing written to a local folder"

    status = CliRunner().invoke(main, ["status", "--json"])
    assert '"bz_inventory"' in status.output and '"bz_order_details"' in status.output, status.output
    version = DeltaTable(b.storage.uri("bz_inventory")).version()
    assert f"{version}" in _cli("history", "inventory")
    dry = _cli("restore", "inventory", "--version", "0", "--dry-run")
    assert dry.startswith("dry run")
    assert DeltaTable(b.storage.uri("bz_inventory")).version() == version, "a dry run commits nothing"

    # no file can be aged on S3 (os.utime): the table's own retention goes to 0 instead
    DeltaTable(b.storage.uri("bz_inventory")).alter.set_table_properties(
        {"delta.deletedFileRetentionDuration": "interval 0 hours"})
    report = maintain_table(b.storage, "bz_inventory", CONTRACTS["inventory"], retention_hours=0)
    assert report.version_after is not None and report.version_after > version + 1
    assert report.files_removed_by_vacuum > 0, "the files the tick's MERGE replaced are gone"
    b.assert_exact("inventory")
    live = {u.rsplit("/", 1)[-1] for u in DeltaTable(b.storage.uri("bz_inventory")).file_uris()}
    stored = {k.rsplit("/", 1)[-1] for k in s3.keys("bronze/bz_inventory/") if "_delta_log" not in k}
    assert stored == live, "VACUUM removed every file no version needs from the bucket"


def test_forget_on_s3_shreds_the_key_and_marks_the_rows(seeded: str, s3: S3) -> None:
    b = OnS3(seeded, s3)
    b.materialize("customers")
    (customer,) = query(seeded, "SELECT min(customer_id) FROM tests.customers")[0]
    out = _cli("forget", "--customer-id", str(customer))
    assert f"customer {customer}: 1 row(s)" in out
    rows = b.read("customers").filter(pl.col("customer_id") == customer)
    assert rows["record_status"].to_list() == ["FORGOTTEN"]


def test_cdc_ticks_on_s3_are_exact(seeded: str, s3: S3) -> None:
    orders = CONTRACTS["orders"]
    cdc_load(orders, seeded, Storage(s3.root))
    OnS3(seeded, s3).assert_exact("orders")
    query(seeded, "INSERT INTO tests.orders VALUES (900001, 1, DATE '2026-11-02', 'PENDING', 5.00, now())")
    query(seeded, "UPDATE tests.orders SET total_amount = total_amount + 1 WHERE order_id = 1")
    query(seeded, "DELETE FROM tests.orders WHERE order_id = 2")
    batch, result = cdc_load(orders, seeded, Storage(s3.root))
    assert batch.mode == STREAM
    assert (result.inserted, result.updated, result.soft_deleted) == (1, 1, 1)
    OnS3(seeded, s3).assert_exact("orders")


def test_two_materializations_of_one_table_at_once_on_s3_end_exact(
        seeded: str, s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", TODAY.isoformat())
    b = OnS3(seeded, s3)
    b.materialize("inventory", TODAY.isoformat())
    query(seeded, "UPDATE tests.inventory SET quantity_available = quantity_available + 1, "
                  "updated_at = now() WHERE inventory_id <= 50")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            b.materialize("inventory", TODAY.isoformat())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    b.assert_exact("inventory")


def test_the_store_rejects_a_second_create_of_one_commit_file(s3: S3) -> None:
    """delta-rs commits with a conditional put (If-None-Match: *): a store that ignored it would
    let two writers both create version N, silently losing one commit."""
    from botocore.exceptions import ClientError

    client, key = s3.client(), "bronze/bz_guard/_delta_log/00000000000000000005.json"
    client.put_object(Bucket=s3.bucket, Key=key, Body=b'{"first":1}', IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=s3.bucket, Key=key, Body=b'{"second":1}', IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=s3.bucket, Key=key)["Body"].read() == b'{"first":1}'


def _status(env: dict[str, str], command: str = "status",
            timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bronze_assets.cli", command], env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)
    return done, time.perf_counter() - started


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _one_line(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("command", ["status", "demo"])
def test_no_credentials_is_one_line_naming_the_root_and_the_variables(s3: S3, command: str) -> None:
    """``bronze demo`` says it before seeding or loading anything (no retries per table)."""
    env = _env(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None, AWS_ENDPOINT_URL=None,
               AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:1")  # no instance profile here
    done, _ = _status(env, command)
    _one_line(done, s3.root, "no credentials", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def test_a_missing_bucket_is_one_line(s3: S3) -> None:
    done, _ = _status(_env(BRONZE_ROOT="s3://no-such-bucket-here/bronze"))
    _one_line(done, "s3://no-such-bucket-here/bronze", "no such bucket")


def test_a_load_into_a_missing_bucket_is_not_retried_and_says_to_create_it(s3: S3) -> None:
    """In a run (the assets' failure policy): the bucket's fix, not the source table's."""
    with pytest.raises(OSError) as raised:
        DeltaTable("s3://no-such-bucket-here/bronze/bz_orders")
    classified = classify(raised.value, "bz_orders")
    assert classified.cause is Cause.MISSING_OBJECT and not classified.retry
    assert "create the bucket" in classified.message and "BRONZE_SOURCE_DSN" not in classified.message
    assert "\n" not in classified.message


def test_an_unreachable_endpoint_is_one_line_in_bounded_time(s3: S3) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    done, seconds = _status(_env(AWS_ENDPOINT_URL=closed))
    _one_line(done, s3.root, "unreachable", closed)
    assert seconds < 30


def test_access_denied_is_one_line(s3: S3, tmp_path: Path) -> None:
    """A second moto server that checks keys (INITIAL_NO_AUTH_ACTION_COUNT=0): unknown keys are
    refused with InvalidAccessKeyId, as AWS refuses them."""
    port = free_port()
    server = start_moto(port, _env(INITIAL_NO_AUTH_ACTION_COUNT="0"))
    try:
        done, _ = _status(_env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}"))
        _one_line(done, s3.root, "access denied", "AWS_ACCESS_KEY_ID")
    finally:
        stop(server)
