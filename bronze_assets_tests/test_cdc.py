"""Log-based CDC against the real embedded PostgreSQL (wal_level = logical): the first load reads
the slot's snapshot, later loads only the changed keys, in commit order; a lost slot is named and
a reset re-syncs exactly."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
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
from bronze_assets.lib.cdc import (
    CDC_SLOT_KEY,
    SNAPSHOT,
    STREAM,
    CdcRead,
    CdcSlotLostError,
    acknowledged,
    cdc_choice,
    cdc_load,
    committed_position,
    deployment_id,
    position_gap,
    reset,
    stage_cdc,
    table_slot,
)
from bronze_assets.lib.delta.control import AUDIT_LOG, read_table
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.delta.timetravel import restore
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.lib.source import replication
from bronze_assets.lib.source.dsn import dsn_parts
from bronze_assets.lib.source.embedded import EmbeddedPostgres
from bronze_assets.lib.source.introspect import discover_contract
from bronze_assets.lib.source.postgres import connect
from bronze_assets.lib.source.replication import PublicationError
from bronze_assets.settings import Settings
from bronze_assets_tests.bronze_helpers import (
    Bronze,
    active_hashes,
    assert_orders_exact,
    assert_table_exact,
    orders_frame,
    source_hashes,
)
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

pytestmark = pytest.mark.integration

ORDERS = CONTRACTS["orders"]


@pytest.fixture
def seeded(seed_db: SeedDb) -> str:
    return seed_db(SeedOptions(scale=0.01, defect_rate=0.02, as_of=AS_OF))


def test_first_load_reads_the_slot_snapshot_then_only_the_changes(seeded: str, tmp_path: Path) -> None:
    first, result = cdc_load(ORDERS, seeded, tmp_path)
    rows = query(seeded, "SELECT count(*) FROM tests.orders")[0][0]
    assert first.mode == SNAPSHOT and result.inserted == rows
    assert_orders_exact(seeded, tmp_path)
    version = DeltaTable(str(tmp_path / "bz_orders")).version()

    query(seeded, "INSERT INTO tests.orders VALUES (900001, 1, DATE '2026-11-02', 'PENDING', 5.00, now())")
    query(seeded, "UPDATE tests.orders SET status = 'SHIPPED', updated_at = now() WHERE order_id = 900001")
    # updated_at untouched: a watermark would miss it, the log does not
    query(seeded, "UPDATE tests.orders SET total_amount = total_amount + 1 WHERE order_id = 1")
    query(seeded, "DELETE FROM tests.orders WHERE order_id = 2")
    second, result = cdc_load(ORDERS, seeded, tmp_path)
    assert second.mode == STREAM and second.changes is not None
    assert (second.changes.transactions, len(second.changes.keys)) == (4, 3)
    assert (result.rows_read, result.inserted, result.updated, result.soft_deleted) == (2, 1, 1, 1)
    assert_orders_exact(seeded, tmp_path)

    third, result = cdc_load(ORDERS, seeded, tmp_path)  # nothing changed: nothing read, no commit
    assert third.changes is not None and not third.changes.keys and not result.committed
    assert DeltaTable(str(tmp_path / "bz_orders")).version() == version + 1
    state = replication.slot_state(seeded, ORDERS, table_slot(ORDERS, seeded, tmp_path))
    assert state is not None and state.confirmed_flush_lsn == third.lsn  # the slot freed its WAL


def test_a_snapshot_of_an_exact_table_commits_its_position_alone(seeded: str, tmp_path: Path) -> None:
    """A table loaded by its window (no log position) takes CDC's snapshot: nothing to write, but
    the position is committed, so the next run streams."""
    Bronze(seeded, tmp_path).load_direct("orders")
    version = DeltaTable(str(tmp_path / "bz_orders")).version()
    first, result = cdc_load(ORDERS, seeded, tmp_path)
    assert first.mode == SNAPSHOT and result.committed and result.inserted == result.updated == 0
    assert DeltaTable(str(tmp_path / "bz_orders")).version() == version + 1
    query(seeded, "DELETE FROM tests.orders WHERE order_id = 2")
    second, result = cdc_load(ORDERS, seeded, tmp_path)
    assert second.mode == STREAM and result.soft_deleted == 1
    assert_orders_exact(seeded, tmp_path)


def test_a_tick_reads_and_rewrites_only_the_files_holding_changed_keys(
    seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cost follows the change: old keys updated, the newest deleted, new keys inserted touch
    the two files holding those keys, whatever lies between (the MERGE's key ranges)."""
    details = CONTRACTS["order_details"]
    monkeypatch.setenv("BRONZE_COMMIT_CHUNK_ROWS", "100")  # a snapshot of key-ordered 100-row files
    cdc_load(details, seeded, Storage(str(tmp_path), settings=Settings.from_env()))
    uri = str(tmp_path / "bz_order_details")
    before = set(DeltaTable(uri).file_uris())
    ids = sorted(r[0] for r in query(seeded, "SELECT order_detail_id FROM tests.order_details"))
    assert len(before) >= 10
    table = "tests.order_details"
    query(seeded, f"UPDATE {table} SET quantity_ordered = quantity_ordered + 1 "
                  f"WHERE order_detail_id <= {ids[2]}")
    query(seeded, f"DELETE FROM {table} WHERE order_detail_id = {ids[-1]}")
    query(seeded, f"INSERT INTO {table} SELECT order_detail_id + {ids[-1]}, order_id, product_id, "
                  f"quantity_ordered, unit_price, now() FROM {table} WHERE order_detail_id <= {ids[1]}")
    # the files between the first and the last key range are away during the tick: reading one fails
    stats = pa.table(DeltaTable(uri).get_add_actions(flatten=True))
    middle = [p for _, p in sorted(zip(stats["min.order_detail_id"].to_pylist(), stats["path"].to_pylist(),
                                        strict=True))][1:-1]
    away = tmp_path / "away"
    away.mkdir()
    for path in middle:
        (tmp_path / "bz_order_details" / path).rename(away / Path(path).name)
    batch, result = cdc_load(details, seeded, tmp_path)
    for path in middle:
        (away / Path(path).name).rename(tmp_path / "bz_order_details" / path)
    assert batch.mode == STREAM
    assert (result.inserted, result.updated, result.soft_deleted) == (2, 3, 1)
    after = DeltaTable(uri)
    assert len(before - set(after.file_uris())) == 2  # the first and the last file, nothing between
    assert after.metadata().configuration["delta.targetFileSize"] == str(4 * 2**20)  # small: cheap rewrites
    frame = pl.from_arrow(after.to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    assert active_hashes(frame, "order_detail_id") == source_hashes(seeded, "order_details")
    assert frame["order_detail_id"].n_unique() == frame.height


def test_toast_replica_identity_key_change_and_forgotten_rows(seeded: str, tmp_path: Path) -> None:
    """An update that leaves a TOASTed value out of the stream keeps it; REPLICA IDENTITY FULL
    deletes and a changed primary key are read; a FORGOTTEN row is never brought back."""
    cdc_load(ORDERS, seeded, tmp_path)
    uri = str(tmp_path / "bz_orders")
    DeltaTable(uri).update(predicate="order_id = 8", updates={"record_status": "'FORGOTTEN'"})
    # 32 kB that does not compress: stored out of line (TOAST)
    query(seeded, "UPDATE tests.orders SET status = (SELECT string_agg(md5(i::text), '') "
                  "FROM generate_series(1, 1000) i), updated_at = now() WHERE order_id = 1")
    cdc_load(ORDERS, seeded, tmp_path)
    query(seeded, "ALTER TABLE tests.orders REPLICA IDENTITY FULL")
    # the status stays the same: the stream leaves the TOASTed value out ('u')
    query(seeded, "UPDATE tests.orders SET total_amount = total_amount + 1 WHERE order_id = 1")
    query(seeded, "UPDATE tests.orders SET total_amount = total_amount + 1 WHERE order_id = 8")
    query(seeded, "DELETE FROM tests.orders WHERE order_id = 9")
    query(seeded, "UPDATE tests.orders SET order_id = 990010 WHERE order_id = 10")
    batch, result = cdc_load(ORDERS, seeded, tmp_path)
    assert batch.changes is not None and set(batch.changes.keys) == {1, 8, 9, 10, 990010}
    assert (result.inserted, result.updated, result.soft_deleted, result.forgotten_skipped) == (1, 1, 2, 1)
    frame = orders_frame(tmp_path)
    one = frame.filter(pl.col("order_id") == 1)
    assert len(one["status"][0]) == 32_000
    source = source_hashes(seeded, "orders")
    assert active_hashes(frame, "order_id") == {k: v for k, v in source.items() if k != 8}
    status = dict(zip(frame["order_id"].to_list(), frame["record_status"].to_list(), strict=True))
    assert (status[8], status[9], status[10], status[990010]) == ("FORGOTTEN", "DELETED", "DELETED", "ACTIVE")


def test_concurrent_writer_and_a_long_transaction_end_exact(seeded: str, tmp_path: Path) -> None:
    cdc_load(ORDERS, seeded, tmp_path)
    stop = threading.Event()
    ids = [r[0] for r in query(seeded, "SELECT order_id FROM tests.orders")]

    def write() -> None:
        rng, next_id = random.Random(7), 950000
        with connect(seeded, autocommit=True) as conn, conn.cursor() as cur:
            while not stop.is_set():
                pick = rng.choice(ids)
                match rng.randrange(4):
                    case 0:
                        next_id += 1
                        cur.execute(f"INSERT INTO tests.orders VALUES ({next_id}, 1, DATE '2026-11-03', "
                                    f"'PENDING', 1.00, now())")
                        ids.append(next_id)
                    case 1 | 2:  # some keys several times
                        cur.execute(f"UPDATE tests.orders SET total_amount = total_amount + 1, "
                                    f"updated_at = now() WHERE order_id = {pick}")
                    case 3:
                        cur.execute(f"DELETE FROM tests.orders WHERE order_id = {pick}")
                time.sleep(0.002)

    writer = threading.Thread(target=write)
    writer.start()
    long_tx = connect(seeded, autocommit=True)
    cur = long_tx.cursor()
    try:
        cur.execute("BEGIN")
        cur.execute("UPDATE tests.orders SET status = 'LATE', updated_at = '2020-01-01' "
                    "WHERE order_id = (SELECT min(order_id) FROM tests.orders)")
        for _ in range(3):  # hourly runs while the writer and the long transaction go on
            time.sleep(0.3)
            batch, _ = cdc_load(ORDERS, seeded, tmp_path)
            assert batch.mode == STREAM
        cur.execute("COMMIT")  # committed after those runs, dated long before them
    finally:
        stop.set()
        writer.join()
        cur.close()
        long_tx.close()
    last, _ = cdc_load(ORDERS, seeded, tmp_path)
    assert last.changes is not None and last.changes.transactions >= 1
    assert_orders_exact(seeded, tmp_path)
    late = orders_frame(tmp_path).filter(pl.col("status") == "LATE")
    assert late.height == 1 and late["record_status"][0] == "ACTIVE"


def test_a_dropped_slot_is_named_and_a_reset_recovers_exactly(seeded: str, tmp_path: Path) -> None:
    cdc_load(ORDERS, seeded, tmp_path)
    assert replication.drop_slot(seeded, ORDERS, table_slot(ORDERS, seeded, tmp_path))
    query(seeded, "DELETE FROM tests.orders WHERE order_id IN (3, 4)")  # lost with the slot
    query(seeded, "UPDATE tests.orders SET status = 'CANCELLED', updated_at = now() WHERE order_id = 5")
    with pytest.raises(CdcSlotLostError, match=r"bronze cdc reset bz_orders"):
        cdc_load(ORDERS, seeded, tmp_path)
    batch, result = reset(ORDERS, seeded, tmp_path, job_id="test")
    assert batch.mode == SNAPSHOT and (result.updated, result.soft_deleted) == (1, 2)
    assert_orders_exact(seeded, tmp_path)
    (audit,) = [a for a in read_table(tmp_path, AUDIT_LOG).to_pylist() if a["operation_type"] == "CDC_RESET"]
    assert audit["status"] == "SUCCESS" and audit["records_affected"] == 3
    query(seeded, "DELETE FROM tests.orders WHERE order_id = 6")
    after, _ = cdc_load(ORDERS, seeded, tmp_path)  # streaming again from the new slot
    assert after.mode == STREAM
    assert_orders_exact(seeded, tmp_path)


SWAP_IN_A_COPY = [  # a migration that re-creates the table: changes to the old one are not in the log
    "CREATE TABLE tests.orders_new (LIKE tests.orders INCLUDING ALL)",
    "INSERT INTO tests.orders_new SELECT * FROM tests.orders WHERE order_id <> 3",
    "UPDATE tests.orders_new SET status = 'CANCELLED', updated_at = now() WHERE order_id = 5",
    "DROP TABLE tests.orders CASCADE",
    "ALTER TABLE tests.orders_new RENAME TO orders",
]


@pytest.mark.parametrize(("change", "named"), [
    (SWAP_IN_A_COPY, r"tests\.orders was dropped and re-created"),
    (["ALTER PUBLICATION bronze_orders DROP TABLE tests.orders",
      "DELETE FROM tests.orders WHERE order_id = 3",
      "UPDATE tests.orders SET status = 'CANCELLED', updated_at = now() WHERE order_id = 5"],
     r"publication bronze_orders no longer includes tests\.orders"),
], ids=["table re-created", "out of its publication"])
def test_a_stream_that_misses_changes_is_named_and_a_reset_recovers(
        seeded: str, tmp_path: Path, change: list[str], named: str) -> None:
    """The slot is healthy but its stream no longer holds the table's changes: never silently
    stale. The reset sets the publication again and re-syncs exactly."""
    cdc_load(ORDERS, seeded, tmp_path)
    for sql in change:
        query(seeded, sql)
    with pytest.raises(CdcSlotLostError, match=named + r".*bronze cdc reset bz_orders"):
        cdc_load(ORDERS, seeded, tmp_path)
    batch, result = reset(ORDERS, seeded, tmp_path, job_id="test")
    assert batch.mode == SNAPSHOT and (result.updated, result.soft_deleted) == (1, 1)
    assert_orders_exact(seeded, tmp_path)
    query(seeded, "DELETE FROM tests.orders WHERE order_id = 6")
    after, _ = cdc_load(ORDERS, seeded, tmp_path)
    assert after.mode == STREAM and after.changes is not None and set(after.changes.keys) == {6}
    assert_orders_exact(seeded, tmp_path)


def test_a_partitioned_source_table_streams_through_its_partitions(seeded: str, tmp_path: Path) -> None:
    """A publication of a partitioned table lists its partitions: the table is covered, no alarm."""
    query(seeded, "CREATE TABLE tests.orders_p (LIKE tests.orders INCLUDING DEFAULTS, "
                  "PRIMARY KEY (order_id)) PARTITION BY HASH (order_id)")
    for i in range(2):
        query(seeded, f"CREATE TABLE tests.orders_p{i} PARTITION OF tests.orders_p "
                      f"FOR VALUES WITH (MODULUS 2, REMAINDER {i})")
    for sql in ["INSERT INTO tests.orders_p SELECT * FROM tests.orders", "DROP TABLE tests.orders CASCADE",
                "ALTER TABLE tests.orders_p RENAME TO orders"]:
        query(seeded, sql)
    cdc_load(ORDERS, seeded, tmp_path)
    query(seeded, "UPDATE tests.orders SET status = 'SHIPPED', updated_at = now() WHERE order_id IN (1, 2)")
    query(seeded, "DELETE FROM tests.orders WHERE order_id = 3")
    batch, result = cdc_load(ORDERS, seeded, tmp_path)
    assert batch.mode == STREAM and (result.updated, result.soft_deleted) == (2, 1)
    assert_orders_exact(seeded, tmp_path)


def test_cli_status_names_a_lost_slot_and_reset_recovers(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_SOURCE_DSN", seeded)
    monkeypatch.setenv("BRONZE_ROOT", str(tmp_path))
    cdc_load(ORDERS, seeded, tmp_path)
    runner = CliRunner()
    ok = runner.invoke(main, ["cdc", "status", "--json"])
    assert ok.exit_code == 0, ok.output
    rows = {r["table"]: r for r in map(json.loads, ok.stdout.splitlines())}
    assert rows["bz_orders"]["wal_status"] == "reserved" and rows["bz_orders"]["bronze_lsn"]
    assert rows["bz_orders"]["lag_bytes"] >= 0 and rows["bz_orders"]["problem"] is None
    assert rows["bz_inventory"]["wal_status"] == "missing" and rows["bz_inventory"]["action"] is None

    replication.drop_slot(seeded, ORDERS, table_slot(ORDERS, seeded, tmp_path))
    query(seeded, "DELETE FROM tests.orders WHERE order_id = 7")
    broken = runner.invoke(main, ["cdc", "status"])
    assert broken.exit_code == 1 and "bronze cdc reset bz_orders" in broken.stdout
    fixed = runner.invoke(main, ["cdc", "reset", "orders"])
    assert fixed.exit_code == 0 and "1 soft-deleted" in fixed.stdout, fixed.output
    assert runner.invoke(main, ["cdc", "status"]).exit_code == 0
    assert_orders_exact(seeded, tmp_path)


def test_a_restored_table_re_syncs_from_a_new_slot(seeded: str, tmp_path: Path) -> None:
    cdc_load(ORDERS, seeded, tmp_path)
    query(seeded, "UPDATE tests.orders SET status = 'CANCELLED' WHERE order_id = 8")
    cdc_load(ORDERS, seeded, tmp_path)
    restore(tmp_path, ORDERS, version=0)  # bronze goes back; the slot has moved on
    query(seeded, "DELETE FROM tests.orders WHERE order_id = 9")
    again, _ = cdc_load(ORDERS, seeded, tmp_path)
    assert again.mode == SNAPSHOT
    assert_orders_exact(seeded, tmp_path)


CDC_SCRIPT = """
import sys
from bronze_assets.contracts import CONTRACTS
from bronze_assets.lib.cdc import cdc_load
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.settings import Settings
cdc_load(CONTRACTS["orders"], sys.argv[1], Storage(sys.argv[2], settings=Settings.from_env()))
print("finished")
"""


def _run_and_kill(dsn: str, root: Path, stage: Path, point: str) -> bool:
    """Run a CDC load in a child process and SIGKILL it at ``point``: ``staging`` (a batch file is
    staged, nothing written), ``writing`` (a new data file, no commit yet) or ``committed`` (the
    commit landed; the slot may not have been told)."""
    table = root / "bz_orders"
    data = set(table.rglob("*.parquet"))
    log = set((table / "_delta_log").glob("*.json"))
    proc = subprocess.Popen([sys.executable, "-c", CDC_SCRIPT, dsn, str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "BRONZE_STAGE_DIR": str(stage)})
    deadline, killed = time.monotonic() + 120, False
    while time.monotonic() < deadline and proc.poll() is None:
        hit = {"staging": lambda: any((stage / "bronze_stage").glob("bz_orders*")),
               "writing": lambda: bool(set(table.rglob("*.parquet")) - data),
               "committed": lambda: bool(set((table / "_delta_log").glob("*.json")) - log)}[point]()
        if hit:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.001)
    proc.wait(timeout=60)
    return killed


@pytest.mark.parametrize("point", ["staging", "writing", "committed"])
def test_a_cdc_run_killed_at_any_point_then_re_run_ends_exact(
        point: str, seeded: str, tmp_path: Path) -> None:
    root, stage = tmp_path / "bronze", tmp_path / "stage"
    cdc_load(ORDERS, seeded, root)
    # enough changes that the run is still writing when it is killed
    query(seeded, "UPDATE tests.orders SET total_amount = total_amount + 1, updated_at = now() "
                  "WHERE order_id % 3 = 0")
    query(seeded, "DELETE FROM tests.orders WHERE order_id % 17 = 0")
    killed = _run_and_kill(seeded, root, stage, point)
    if point == "writing":
        assert killed, "the run finished before it could be killed mid-write"
    query(seeded, "UPDATE tests.orders SET status = 'AFTER' WHERE order_id = 10")  # changes go on
    batch, _ = cdc_load(ORDERS, seeded, root)
    assert batch.mode == STREAM
    assert_orders_exact(seeded, root)


def test_the_asset_says_which_load_pattern_it_used(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bronze = Bronze(seeded, tmp_path / "bronze")
    month = datetime.now(UTC).date().replace(day=1).isoformat()  # the open partition of bz_orders
    publication_reads: list[str] = []
    state = replication.publication_state
    monkeypatch.setattr(replication, "publication_state",
                        lambda dsn, contract: publication_reads.append(contract.name) or state(dsn, contract))

    def materialize() -> dict:
        publication_reads.clear()
        result = dg.materialize([bronze.assets["bz_orders"]], resources=bronze.resources,
                                partition_key=month)
        (load,) = [e for e in result.get_asset_materialization_events()
                   if "rows_read" in e.materialization.metadata]
        return {k: v.value for k, v in load.materialization.metadata.items()}

    first = materialize()
    assert (first["load_pattern"], first["cdc_mode"]) == ("cdc", "snapshot")
    assert first["slot_wal_status"] == "reserved"
    assert publication_reads == ["orders"]  # the choice set the publication up; the read trusts it
    query(seeded, "UPDATE tests.orders SET status = 'SHIPPED' WHERE order_id = 11")
    second = materialize()
    assert publication_reads == []  # a stream: its slot's state says whether the table is published
    assert (second["cdc_mode"], second["cdc_keys_changed"], second["rows_updated"]) == ("stream", 1, 1)
    assert second["slot_retained_wal_bytes"] > 0 and second["slot_confirmed_lsn"] != "-"
    assert 0 <= second["cdc_lag_bytes"] < second["slot_retained_wal_bytes"]
    assert "changed keys (log-based CDC)" in second["window"]
    monkeypatch.setenv("BRONZE_CDC", "off")
    third = materialize()
    assert (third["load_pattern"], third["cdc_unavailable"]) == ("watermark", "BRONZE_CDC=off")
    assert_orders_exact(seeded, tmp_path / "bronze")


# ------------------------------------------------------------------ CDC configured halfway


@pytest.fixture
def non_owner(seeded: str) -> Iterator[Callable[..., str]]:
    """Makes a login role that does not own the source tables (the superuser does) and reads
    them through ``GRANT``s; returns its DSN. The roles are dropped afterwards."""
    roles: list[str] = []

    def make(replication: bool = True, create_on_database: bool = False) -> str:
        role = f"loader_{uuid.uuid4().hex[:8]}"
        roles.append(role)
        query(seeded, f"CREATE ROLE {role} LOGIN {'REPLICATION' if replication else 'NOREPLICATION'}")
        query(seeded, f"GRANT USAGE ON SCHEMA tests TO {role}")
        query(seeded, f"GRANT SELECT ON ALL TABLES IN SCHEMA tests TO {role}")
        if create_on_database:
            query(seeded, f"GRANT CREATE ON DATABASE {query(seeded, 'SELECT current_database()')[0][0]} "
                          f"TO {role}")
        user = dsn_parts(seeded)["user"]
        assert seeded.startswith(f"postgresql://{user}:")
        return seeded.replace(f"postgresql://{user}:", f"postgresql://{role}:", 1)

    yield make
    for role in roles:
        query(seeded, f"DROP OWNED BY {role}")  # its grants in this database
        query(seeded, f"DROP ROLE {role}")


def _materialize_logged(bronze: Bronze, table: str) -> tuple[dict, list[str]]:
    """Materialize the open partition of bz_<table>; its metadata and the run's WARNING log lines."""
    instance = dg.DagsterInstance.ephemeral()
    month = datetime.now(UTC).date().replace(day=1).isoformat()
    metadata = bronze.materialize(table, month, instance=instance)
    (run,) = instance.get_runs()
    warnings = [e.user_message for e in instance.all_logs(run.run_id)
                if e.level == logging.WARNING and e.dagster_event is None]
    return metadata, warnings


def test_half_configured_cdc_falls_back_with_the_reason_until_the_owner_creates_the_publication(
        seeded: str, non_owner: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """wal_level = logical and REPLICATION granted, but no publication and the loader does not
    own the table: the load runs by watermark and says why (metadata, the run's log, `cdc status`)
    with the SQL the owner runs; once the owner has run it, the next load reads the slot."""
    loader = non_owner()
    bronze = Bronze(loader, tmp_path / "bronze")
    first, warnings = _materialize_logged(bronze, "orders")
    assert first["load_pattern"] == "watermark" and "cdc_mode" not in first
    reason = first["cdc_unavailable"]
    assert "publication bronze_orders does not exist" in reason
    assert "CREATE privilege on database" in reason and "does not own tests.orders" in reason
    assert reason.endswith("as the owner of tests.orders run: CREATE PUBLICATION bronze_orders FOR TABLE "
                           "tests.orders")
    assert [w for w in warnings if reason in w] == [
        f"bz_orders: log-based CDC cannot be used, loading by the watermark pattern: {reason}"]
    assert first["rows_read"] > 0 and bronze.read("orders").height == first["rows_read"]  # the window's
    assert not query(seeded, "SELECT 1 FROM pg_publication UNION ALL SELECT 1 FROM pg_replication_slots "
                             "WHERE database = current_database()")

    monkeypatch.setenv("BRONZE_SOURCE_DSN", loader)
    monkeypatch.setenv("BRONZE_ROOT", str(bronze.root))
    runner = CliRunner()
    status = runner.invoke(main, ["cdc", "status", "--json"])
    assert status.exit_code == 0, status.output
    rows = {r["table"]: r for r in map(json.loads, status.stdout.splitlines())}
    assert rows["bz_orders"]["reason"] == reason and rows["bz_orders"]["wal_status"] == "missing"
    assert "CREATE PUBLICATION bronze_inventory FOR TABLE tests.inventory" in rows["bz_inventory"]["reason"]
    text = runner.invoke(main, ["cdc", "status"])
    header, *lines = text.stdout.splitlines()
    assert text.exit_code == 0 and header.split() == ["table", "slot", "WAL", "held", "confirmed", "bronze",
                                                      "lag", "note"]
    (orders,) = [line for line in lines if line.startswith("bz_orders ")]
    assert orders.endswith(f"fallback: {reason}")

    query(seeded, "CREATE PUBLICATION bronze_orders FOR TABLE tests.orders")  # as the tables' owner
    second, warnings = _materialize_logged(bronze, "orders")
    assert (second["load_pattern"], second["cdc_mode"]) == ("cdc", "snapshot")
    assert "cdc_unavailable" not in second and not [w for w in warnings if "CDC" in w]
    query(seeded, "UPDATE tests.orders SET status = 'SHIPPED' WHERE order_id = 11")
    third, _ = _materialize_logged(bronze, "orders")
    assert (third["cdc_mode"], third["cdc_keys_changed"], third["rows_updated"]) == ("stream", 1, 1)
    assert_orders_exact(seeded, bronze.root)
    rows = {r["table"]: r for r in map(json.loads, runner.invoke(main, ["cdc", "status", "--json"]
                                                                  ).stdout.splitlines())}
    assert rows["bz_orders"]["reason"] is None and rows["bz_orders"]["wal_status"] == "reserved"
    assert rows["bz_inventory"]["reason"] is not None  # still no publication of its own


@pytest.mark.parametrize(("setup", "loader_kwargs", "named"), [
    ([], {"create_on_database": True},
     r"publication bronze_orders does not exist and the source user loader_\w+ may not create it \(it "
     r"does not own tests\.orders\); as the owner of tests\.orders run: CREATE PUBLICATION bronze_orders "
     r"FOR TABLE tests\.orders$"),
    (["CREATE PUBLICATION bronze_orders"], {},
     r"publication bronze_orders does not include tests\.orders and the source user loader_\w+ may not add "
     r"the table \(it does not own tests\.orders; it does not own the publication bronze_orders\); as the "
     r"owner of tests\.orders run: ALTER PUBLICATION bronze_orders ADD TABLE tests\.orders$"),
    ([], {"replication": False},
     r"^the source user lacks the REPLICATION attribute .*; the publication bronze_orders does not exist"),
], ids=["may create in the database, not own the table", "publication without the table",
        "no REPLICATION either"])
def test_each_half_configuration_names_what_is_missing(
        seeded: str, non_owner: Callable[..., str], setup: list[str], loader_kwargs: dict, named: str,
        tmp_path: Path) -> None:
    for sql in setup:
        query(seeded, sql)
    loader = non_owner(**loader_kwargs)
    use_cdc, meta = cdc_choice(ORDERS, loader, None, tmp_path)
    assert not use_cdc and meta["load_pattern"] == "watermark"
    assert re.search(named, meta["cdc_unavailable"]), meta["cdc_unavailable"]
    batch = extract_and_stage(ORDERS, loader, tmp_path)  # the watermark load the fallback runs
    try:
        assert BronzeMerger(ORDERS, tmp_path).merge(batch).inserted == batch.rows > 0
    finally:
        batch.cleanup()
    with pytest.raises(PublicationError, match=r"^the publication bronze_orders does not (exist|include "
                                                 r"tests\.orders) and .* run: (CREATE|ALTER) PUBLICATION "):
        replication.ensure_publication(loader, ORDERS)  # never a bare "permission denied"


def test_a_stream_gap_still_fails_loudly_for_a_loader_that_cannot_fix_the_publication(
        seeded: str, non_owner: Callable[..., str], tmp_path: Path) -> None:
    """Only "CDC cannot be set up" falls back: once bronze depends on a stream, a table taken out
    of its publication (or a slot gone) fails the run and names the reset, as for an owner."""
    query(seeded, "CREATE PUBLICATION bronze_orders FOR TABLE tests.orders")
    loader = non_owner()
    bronze = Bronze(loader, tmp_path / "bronze")
    first, _ = _materialize_logged(bronze, "orders")
    assert first["cdc_mode"] == "snapshot"
    query(seeded, "ALTER PUBLICATION bronze_orders DROP TABLE tests.orders")
    query(seeded, "DELETE FROM tests.orders WHERE order_id = 3")
    month = datetime.now(UTC).date().replace(day=1).isoformat()
    failed = dg.materialize([bronze.assets["bz_orders"]], resources=bronze.resources, partition_key=month,
                            raise_on_error=False)
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "no longer includes tests.orders" in message and "bronze cdc reset bz_orders" in message
    # a slot gone as well: bronze holds a position, so the run still fails rather than fall back
    replication.drop_slot(seeded, ORDERS, table_slot(ORDERS, seeded, bronze.root))
    assert cdc_choice(ORDERS, loader, None, bronze.root) == (True, {})
    with pytest.raises(CdcSlotLostError, match=r"slot .* is gone"):
        cdc_load(ORDERS, loader, bronze.root)


def test_cdc_status_with_a_wrong_password_says_so_in_one_line(
        fresh_dsn: str, monkeypatch: pytest.MonkeyPatch, pg_server: EmbeddedPostgres) -> None:
    """A role that logs in by password (scram-sha-256, a pg_hba.conf line of its own) given the
    wrong one: one line naming host, database, user and what to check; never the password."""
    role = f"pw_{uuid.uuid4().hex[:8]}"
    hba = pg_server.pgdata / "pg_hba.conf"
    original = hba.read_text()
    query(fresh_dsn, f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'Right1pw'")
    try:
        hba.write_text(f"local all {role} scram-sha-256\nhost all {role} all scram-sha-256\n" + original)
        query(fresh_dsn, "SELECT pg_reload_conf()")
        user = dsn_parts(fresh_dsn)["user"]
        monkeypatch.setenv("BRONZE_SOURCE_DSN",
                           fresh_dsn.replace(f"postgresql://{user}:", f"postgresql://{role}:Wr0ngPw@", 1))
        result = CliRunner().invoke(main, ["cdc", "status"])
    finally:
        hba.write_text(original)
        query(fresh_dsn, "SELECT pg_reload_conf()")
        query(fresh_dsn, f"DROP ROLE {role}")
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    parts = dsn_parts(fresh_dsn)
    assert line.startswith(f"error: cannot open a connection to the PostgreSQL source (host={parts['host']}")
    assert f"db={parts['db']} user={role})" in line
    assert f'password authentication failed for user "{role}"' in line
    assert "credentials are right" in line and "BRONZE_SOURCE_DSN" in line
    assert "Wr0ngPw" not in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------ one stream per deployment

CDC_TABLES = {"inventory": ("inventory_id", "quantity_available"),
              "order_details": ("order_detail_id", "quantity_ordered"),
              "orders": ("order_id", "total_amount")}


def _change(dsn: str, table: str) -> set[int]:
    """A tick's change to a CDC table: 3 keys inserted, 5 updated (their updated_at left alone),
    2 deleted. Returns the keys changed."""
    pk, column = CDC_TABLES[table]
    top = query(dsn, f"SELECT max({pk}) FROM tests.{table}")[0][0]
    inserted = query(dsn, f"INSERT INTO tests.{table} SELECT (jsonb_populate_record(NULL::tests.{table}, "
                          f"to_jsonb(t) || jsonb_build_object('{pk}', t.{pk} + {top}))).* "
                          f"FROM tests.{table} t ORDER BY {pk} LIMIT 3 RETURNING {pk}")
    updated = query(dsn, f"UPDATE tests.{table} SET {column} = {column} + 1 WHERE {pk} IN "
                         f"(SELECT {pk} FROM tests.{table} ORDER BY {pk} LIMIT 5 OFFSET 3) RETURNING {pk}")
    deleted = query(dsn, f"DELETE FROM tests.{table} WHERE {pk} IN "
                         f"(SELECT {pk} FROM tests.{table} ORDER BY {pk} LIMIT 2 OFFSET 10) RETURNING {pk}")
    keys = {r[0] for r in inserted + updated + deleted}
    assert len(keys) == 10
    return keys


def test_two_bronze_roots_on_one_source_each_get_every_change(seeded: str, tmp_path: Path) -> None:
    """Production and staging load from one source: each reads a slot of its own, so neither takes
    the other's changes; both end exact after ticks with inserts, updates and deletes, whichever
    loads first. bz_orders runs as Dagster runs it (staging's root is not $BRONZE_ROOT)."""
    production, staging = Bronze(seeded, tmp_path / "bronze"), Bronze(seeded, tmp_path / "staging")
    month = datetime.now(UTC).date().replace(day=1).isoformat()  # the open partition of bz_orders
    slots = {}
    for bronze in (production, staging):
        first = bronze.materialize("orders", month)
        assert first["cdc_mode"] == "snapshot"
        slots[bronze.root] = first["cdc_slot"]
        for table in ("inventory", "order_details"):
            assert cdc_load(CONTRACTS[table], seeded, bronze.root)[0].mode == SNAPSHOT
    assert slots[production.root] != slots[staging.root]
    assert slots[production.root] == table_slot(ORDERS, seeded, production.root)
    names = {r[0] for r in query(seeded, "SELECT slot_name FROM pg_replication_slots "
                                         "WHERE database = current_database()")}
    assert len(names) == 6 and set(slots.values()) <= names  # three tables, two deployments
    for order in ((production, staging), (staging, production)):
        changed = {table: _change(seeded, table) for table in CDC_TABLES}
        for bronze in order:
            meta = bronze.materialize("orders", month)
            assert (meta["cdc_mode"], meta["cdc_keys_changed"]) == ("stream", 10)
            # its own slot's health, also where $BRONZE_ROOT names the other root
            assert (meta["cdc_slot"], meta["slot_wal_status"]) == (slots[bronze.root], "reserved")
            for table in ("inventory", "order_details"):
                batch, _ = cdc_load(CONTRACTS[table], seeded, bronze.root)
                assert batch.mode == STREAM and batch.changes is not None
                assert set(batch.changes.keys) == changed[table]
            for table in CDC_TABLES:
                assert_table_exact(seeded, bronze.root, table)


def test_a_root_copied_elsewhere_is_a_named_gap_and_its_reset_makes_it_exact(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of a root (a second environment cloned from production) holds a position read from
    the original's slot: never continued from that slot (it would take the original's changes),
    never "0 changes": named, and `bronze cdc reset` gives the copy a slot of its own."""
    original, copy = tmp_path / "bronze", tmp_path / "copy"
    cdc_load(ORDERS, seeded, original)
    shutil.copytree(original, copy)
    _change(seeded, "orders")
    assert cdc_load(ORDERS, seeded, original)[0].mode == STREAM  # the original goes on
    ours, theirs = table_slot(ORDERS, seeded, copy), table_slot(ORDERS, seeded, original)
    assert ours != theirs
    with pytest.raises(CdcSlotLostError, match=rf"stream gap: .*read from the replication slot {theirs}, and "
                                               rf"this deployment reads {ours} \(the bronze root was copied "
                                               r".*bronze cdc reset bz_orders"):
        cdc_load(ORDERS, seeded, copy)
    assert replication.slot_state(seeded, ORDERS, ours) is None  # nothing was created or read

    monkeypatch.setenv("BRONZE_SOURCE_DSN", seeded)
    monkeypatch.setenv("BRONZE_ROOT", str(copy))
    runner = CliRunner()
    status = runner.invoke(main, ["cdc", "status", "--json"])
    assert status.exit_code == 1, status.output
    row = {r["table"]: r for r in map(json.loads, status.stdout.splitlines())}["bz_orders"]
    assert (row["slot"], row["action"]) == (ours, "bronze cdc reset bz_orders")
    assert "the bronze root was copied" in row["problem"]
    text = runner.invoke(main, ["cdc", "status"]).stdout
    assert f"other bronze slot {theirs} (inactive" in text  # the original's, listed, not touched
    fixed = runner.invoke(main, ["cdc", "reset", "orders"])
    assert fixed.exit_code == 0, fixed.output
    assert_orders_exact(seeded, copy)

    changed = _change(seeded, "orders")
    for root in (copy, original):
        batch, _ = cdc_load(ORDERS, seeded, root)
        assert batch.mode == STREAM and batch.changes is not None and set(batch.changes.keys) == changed
        assert_orders_exact(seeded, root)
    assert runner.invoke(main, ["cdc", "status"]).exit_code == 0


def test_a_root_restored_from_an_older_copy_is_a_named_gap_and_its_reset_makes_it_exact(
        seeded: str, tmp_path: Path) -> None:
    """A root restored over itself from a backup keeps its slot, which has moved on: the slot's
    confirmed position is past the restored root's, so the changes in between would never
    arrive. Named; the reset re-syncs. The backup is taken after a tick that committed nothing
    (the slot was told a position Delta does not hold): still a gap once the slot moved on."""
    root, backup = tmp_path / "bronze", tmp_path / "backup"
    cdc_load(ORDERS, seeded, root)
    empty, result = cdc_load(ORDERS, seeded, root)
    assert empty.changes is not None and not empty.changes.keys and not result.committed
    shutil.copytree(root, backup)
    _change(seeded, "orders")
    cdc_load(ORDERS, seeded, root)  # read and acknowledged: the slot moves on
    shutil.rmtree(root)
    shutil.copytree(backup, root)  # the restore
    named = (r"stream gap: .*has confirmed [0-9A-F]+/[0-9A-F]+: the changes in between were read and "
             r"acknowledged by another reader .*restored from an older copy.*bronze cdc reset bz_orders")
    with pytest.raises(CdcSlotLostError, match=named):
        cdc_load(ORDERS, seeded, root)
    batch, result = reset(ORDERS, seeded, root, job_id="test")
    assert batch.mode == SNAPSHOT and (result.inserted, result.updated, result.soft_deleted) == (3, 5, 2)
    assert_orders_exact(seeded, root)
    changed = _change(seeded, "orders")
    after, _ = cdc_load(ORDERS, seeded, root)
    assert after.mode == STREAM and after.changes is not None and set(after.changes.keys) == changed
    assert_orders_exact(seeded, root)


def test_two_roots_given_one_deployment_id_name_the_gap_instead_of_reading_nothing(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two roots configured with the same $BRONZE_DEPLOYMENT_ID share a slot: the second root's
    first load creates the slot again, and the first root's next load names the gap."""
    monkeypatch.setenv("BRONZE_DEPLOYMENT_ID", "shared")
    first, second = (Storage(str(tmp_path / name), settings=Settings.from_env()) for name in "ab")
    cdc_load(ORDERS, seeded, first)
    cdc_load(ORDERS, seeded, second)
    assert table_slot(ORDERS, seeded, first) == table_slot(ORDERS, seeded, second) == \
        f"bronze_{dsn_parts(seeded)['db'].lower()}_orders_shared"
    changed = _change(seeded, "orders")
    batch, _ = cdc_load(ORDERS, seeded, second)
    assert batch.changes is not None and set(batch.changes.keys) == changed
    with pytest.raises(CdcSlotLostError, match=r"another bronze root using this slot: give each deployment "
                                               r"its own BRONZE_DEPLOYMENT_ID"):
        cdc_load(ORDERS, seeded, first)


def test_a_tick_that_commits_nothing_lets_the_slot_go_and_the_next_tick_streams(
        seeded: str, tmp_path: Path) -> None:
    """An update that changes no value is in the log but changes no row: nothing is committed,
    yet the slot is told the position (its WAL is freed). The root records that position, so
    the next tick sees its own acknowledgement, not another reader's."""
    cdc_load(ORDERS, seeded, tmp_path)
    query(seeded, "UPDATE tests.orders SET status = status WHERE order_id = 5")
    batch, result = cdc_load(ORDERS, seeded, tmp_path)
    assert batch.changes is not None and batch.changes.keys == {5: "U"} and not result.committed
    slot = table_slot(ORDERS, seeded, tmp_path)
    position, state = committed_position(tmp_path, "bz_orders"), replication.slot_state(seeded, ORDERS, slot)
    assert position is not None and state is not None
    assert state.confirmed_flush_lsn == batch.lsn > position.lsn  # the slot is past what Delta holds
    assert acknowledged(tmp_path, "bz_orders") == (slot, batch.lsn)
    record = tmp_path / "_bronze_cdc" / "bz_orders.json"
    kept = record.read_bytes()
    record.unlink()  # without the record the same state is another reader's doing
    with pytest.raises(CdcSlotLostError, match="another reader"):
        cdc_load(ORDERS, seeded, tmp_path)
    record.write_bytes(kept)
    changed = _change(seeded, "orders")
    after, _ = cdc_load(ORDERS, seeded, tmp_path)
    assert after.mode == STREAM and after.changes is not None and set(after.changes.keys) == changed
    assert_orders_exact(seeded, tmp_path)


def test_a_commit_not_yet_acknowledged_is_no_gap(seeded: str, tmp_path: Path) -> None:
    """A run killed between its Delta commit and the acknowledgement leaves bronze ahead of the
    slot's confirmed position: the normal exactly-once recovery, read on from bronze's position."""
    cdc_load(ORDERS, seeded, tmp_path)
    first = _change(seeded, "orders")
    batch = stage_cdc(ORDERS, seeded, tmp_path)
    try:
        assert BronzeMerger(ORDERS, tmp_path).merge(batch.staged).committed
    finally:
        batch.staged.cleanup()
    # ... and killed here, before acknowledge()
    position = committed_position(tmp_path, "bz_orders")
    state = replication.slot_state(seeded, ORDERS, table_slot(ORDERS, seeded, tmp_path))
    assert position is not None and state is not None and state.confirmed_flush_lsn is not None
    assert position.lsn == batch.lsn > state.confirmed_flush_lsn
    assert batch.changes is not None and set(batch.changes.keys) == first
    second = _change(seeded, "orders")
    again, _ = cdc_load(ORDERS, seeded, tmp_path)
    assert again.mode == STREAM and again.changes is not None and set(again.changes.keys) == second
    assert_orders_exact(seeded, tmp_path)


def _legacy_load(dsn: str, root: Path) -> CdcRead:
    """A CDC load of bz_orders as versions before per-deployment slots ran it: the one slot
    ``bronze_<db>_orders`` whatever the root, (re-)created by a root's first load, the position
    committed without the slot's name, read on from it without looking at the slot's position."""
    legacy = replication.legacy_slot_name(dsn, ORDERS)
    position = committed_position(root, "bz_orders")
    if position is None:
        replication.ensure_publication(dsn, ORDERS)
        replication.drop_slot(dsn, ORDERS, legacy)
        with replication.new_slot(dsn, ORDERS, legacy) as (lsn, snapshot):
            read = CdcRead(SNAPSHOT, lsn, replication.table_relid(dsn, ORDERS), snapshot_id=snapshot)
            staged = extract_and_stage(ORDERS, dsn, root, all_rows=True, snapshot_id=snapshot)
    else:
        changes = replication.read_changes(dsn, ORDERS, position.lsn, slot=legacy)
        read = CdcRead(STREAM, changes.end_lsn, position.relid, keys=list(changes.keys), changes=changes)
        staged = extract_and_stage(ORDERS, dsn, root, keys=read.keys)
    staged.commit_always = read.all_rows
    staged.final_metadata |= read.final_metadata
    assert CDC_SLOT_KEY not in staged.final_metadata
    try:
        BronzeMerger(ORDERS, root).merge(staged)
    finally:
        staged.cleanup()
    replication.acknowledge(dsn, ORDERS, read.lsn, legacy)
    return read


def test_roots_of_earlier_versions_move_to_slots_of_their_own_by_one_audited_re_sync(
        seeded: str, tmp_path: Path) -> None:
    """Two roots that shared the one slot of earlier versions: the second took the changes and the
    first read "0 changed keys" (the bug). Their positions name no slot; the next load of each
    re-syncs once from a slot of its own (audited), the old shared slot is dropped, and both end
    exact and stream on."""
    legacy = replication.legacy_slot_name(dsn=seeded, contract=ORDERS)
    first, second = tmp_path / "a", tmp_path / "b"
    _legacy_load(seeded, first)
    _legacy_load(seeded, second)
    _change(seeded, "orders")
    assert len(_legacy_load(seeded, second).keys or []) == 10
    stale = _legacy_load(seeded, first)
    assert stale.changes is not None and not stale.changes.keys  # what earlier versions did
    assert active_hashes(orders_frame(first), "order_id") != source_hashes(seeded, "orders")

    for root, dropped in ((first, True), (second, False)):
        batch, _ = cdc_load(ORDERS, seeded, root)
        assert batch.mode == SNAPSHOT and batch.read.legacy_slot == legacy
        assert batch.read.slot == table_slot(ORDERS, seeded, root)
        assert batch.metadata()["cdc_migrated_from"] == legacy
        assert_orders_exact(seeded, root)
        (audit,) = [a for a in read_table(root, AUDIT_LOG).to_pylist() if a["operation_type"] == "CDC_RESET"]
        details = json.loads(audit["details"])
        assert audit["status"] == "SUCCESS" and details["reason"].startswith("migration")
        assert (details["legacy_slot"], details["legacy_slot_dropped"]) == (legacy, dropped)
        assert replication.slot_state(seeded, ORDERS, legacy) is None
    changed = _change(seeded, "orders")
    for root in (first, second):
        batch, _ = cdc_load(ORDERS, seeded, root)
        assert batch.mode == STREAM and batch.changes is not None and set(batch.changes.keys) == changed
        assert_orders_exact(seeded, root)


@pytest.mark.parametrize(("held", "confirmed", "current", "named"), [
    (100, 100, 200, None),  # acknowledged
    (150, 100, 200, None),  # committed, killed before the acknowledgement: read on from 150
    (100, 150, 200, "has confirmed 0/96: the changes in between were read and acknowledged by another"),
    (250, 250, 200, "the source's WAL position is only 0/C8"),  # the source server went back
], ids=["acknowledged", "killed before acknowledging", "consumed elsewhere", "source went back"])
def test_the_position_rule(held: int, confirmed: int, current: int, named: str | None) -> None:
    slot = replication.SlotState("s", False, "reserved", confirmed, 0, 1, True, current)
    gap = position_gap(held, slot)
    assert gap is None if named is None else gap is not None and named in gap


def test_deployment_ids_name_a_slot_per_root(monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = "postgresql://u:p@h:5432/DE"
    one = replication.deployment_id("/data/bronze")
    assert re.fullmatch(r"[0-9a-f]{8}", one)
    assert one == replication.deployment_id("/data/bronze/") == replication.deployment_id(
        "file:///data/bronze") == replication.deployment_id("/data/x/../bronze")
    assert one != replication.deployment_id("/data/staging")
    s3 = replication.deployment_id("s3://bucket/bronze")
    assert s3 == replication.deployment_id("S3A://bucket/bronze/") != replication.deployment_id("s3://bucket/b2")
    assert replication.slot_name(dsn, ORDERS, one) == f"bronze_de_orders_{one}"
    assert replication.legacy_slot_name(dsn, ORDERS) == "bronze_de_orders"
    long = replication.slot_name(dsn.replace("/DE", "/" + "d" * 70), ORDERS, one)
    assert len(long) == 63 and long.endswith(f"_{one}")
    monkeypatch.setenv("BRONZE_DEPLOYMENT_ID", "prod_1")
    assert deployment_id(Storage("/data/bronze", settings=Settings.from_env())) == "prod_1"
    assert deployment_id(Storage("/data/bronze")) == one, "the settings say, not the environment"
    monkeypatch.setenv("BRONZE_DEPLOYMENT_ID", "Prod-1")
    with pytest.raises(replication.ReplicationError, match=r"BRONZE_DEPLOYMENT_ID='Prod-1' is not a "):
        deployment_id(Storage("/data/bronze", settings=Settings.from_env()))


def test_cdc_follows_a_table_in_another_schema_with_a_mixed_case_name(fresh_dsn: str, tmp_path: Path
                                                                      ) -> None:
    """Log-based CDC of a user's own table (ARCHITECTURE §2.10): the publication and the stream
    name the table where it lives, quoted."""
    query(fresh_dsn, 'CREATE SCHEMA sales')
    query(fresh_dsn, 'CREATE TABLE sales."Events" (id bigint PRIMARY KEY, "Kind" varchar(20), '
                     'updated_at timestamptz NOT NULL DEFAULT now())')
    query(fresh_dsn, "INSERT INTO sales.\"Events\" (id, \"Kind\") "
                     "SELECT g, 'k' || g FROM generate_series(1, 50) g")
    contract = replace(discover_contract(fresh_dsn, "Events", "sales"), name="events", source_table="Events",
                       cdc=True)
    first, _ = cdc_load(contract, fresh_dsn, tmp_path)
    assert first.mode == SNAPSHOT
    query(fresh_dsn, "UPDATE sales.\"Events\" SET \"Kind\" = 'changed', updated_at = now() WHERE id = 3")
    query(fresh_dsn, "DELETE FROM sales.\"Events\" WHERE id = 4")
    query(fresh_dsn, "INSERT INTO sales.\"Events\" (id, \"Kind\") VALUES (51, 'new')")
    tick, _ = cdc_load(contract, fresh_dsn, tmp_path)
    assert tick.mode == STREAM and set(tick.changes.keys) == {3, 4, 51}  # type: ignore[union-attr]
    rows = {r["id"]: r for r in pl.from_arrow(DeltaTable(str(tmp_path / "bz_events")).to_pyarrow_table())
            .to_dicts()}  # type: ignore[union-attr]
    assert rows[3]["Kind"] == "changed" and rows[51]["Kind"] == "new"
    assert rows[4]["record_status"] == "DELETED"
    assert sum(r["record_status"] == "ACTIVE" for r in rows.values()) == 50


def test_no_free_replication_slot_falls_back_until_one_is_free(seeded: str, tmp_path: Path) -> None:
    """Every slot of the server taken (other deployments, other tools): a table's first load runs
    by the watermark pattern and names the limit and the fix; once a slot is free, the next load
    creates its slot and reads it. A re-sync that needs a new slot then fails in one line."""
    (free,) = query(seeded, "SELECT current_setting('max_replication_slots')::int - count(*) "
                            "FROM pg_replication_slots")[0]
    fillers = [f"filler_{uuid.uuid4().hex[:8]}" for _ in range(free)]
    for name in fillers:
        query(seeded, f"SELECT 1 FROM pg_create_logical_replication_slot('{name}', 'pgoutput')")
    try:
        bronze = Bronze(seeded, tmp_path / "bronze")
        first, warnings = _materialize_logged(bronze, "orders")
        assert first["load_pattern"] == "watermark" and "cdc_mode" not in first
        reason = first["cdc_unavailable"]
        (limit,) = query(seeded, "SELECT current_setting('max_replication_slots')::int")[0]
        assert reason.startswith(f"all {limit} replication slots of the source are in use")
        assert "raise max_replication_slots" in reason and "bronze cdc status" in reason
        assert [w for w in warnings if reason in w]
        assert bronze.read("orders").height == first["rows_read"] > 0
        refused = r"^bz_orders: cannot create the replication slot bronze_\w+: every replication slot of"
        with pytest.raises(replication.ReplicationError, match=refused), \
                replication.new_slot(seeded, CONTRACTS["orders"], "bronze_extra_slot"):
            pass
    finally:
        for name in fillers:
            query(seeded, f"SELECT 1 FROM pg_drop_replication_slot('{name}')")
    second, _ = _materialize_logged(bronze, "orders")
    assert (second["load_pattern"], second["cdc_mode"]) == ("cdc", "snapshot")
    assert_orders_exact(seeded, bronze.root)
