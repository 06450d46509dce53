"""Bronze on object storage (ARCHITECTURE §2.9, issue #23 deliverables 1 and 5), local engine: the
same loads, commands and maintenance as on a local folder, on S3 (moto) and ADLS (Azurite) — the
``store`` fixture (``stores.py``) runs a test on each — configured only through ``BRONZE_ROOT`` and
the store's standard variables; exact after each step, a writer killed mid-commit recovers, and
one-line errors when the store refuses or cannot be reached."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
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
from bronze_assets.defs.schedules import CHANGES_ONLY_TAG
from bronze_assets.lib.cdc import STREAM, cdc_load
from bronze_assets.lib.delta import audit_inbox
from bronze_assets.lib.delta.audit_inbox import INBOXES
from bronze_assets.lib.delta.commit_log import BATCH_KEY
from bronze_assets.lib.delta.control import (
    ALERTS,
    AUDIT_LOG,
    CHECKPOINTS,
    CONTROL_PROPERTIES,
    COST_TRACKING,
    LINEAGE,
    SCHEMAS,
    LoadRecord,
    append_rows,
    hold_appends,
    post_audit_row,
    read_table,
    record_load,
    release_appends,
)
from bronze_assets.lib.delta.maintenance import maintain_table
from bronze_assets.lib.delta.merge_result import MergeResult
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.delta.retention import apply_retention
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.delta.writers import DELTA_RS, SPARK, MixedEnginesError, check_single_engine
from bronze_assets.lib.failures import Cause, classify
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.lib.monitoring.report import build_report
from bronze_assets_tests.bronze_helpers import active_hashes, at_once, source_hashes
from bronze_assets_tests.conftest import query
from bronze_assets_tests.s3 import S3, Request, free_port, start_moto, stop, wait_for_port
from bronze_assets_tests.stores import LocalRoot, Store
from bronze_assets_tests.test_recovery import LOAD_SCRIPT

pytestmark = pytest.mark.integration

TODAY = datetime.now(UTC).date()


class OnStore:
    """A bronze root on the test's bucket or container wired to one source DSN."""

    def __init__(self, dsn: str, store: Store) -> None:
        self.dsn, self.store = dsn, store
        self.storage = Storage(store.root)
        self.resources = build_resources(PostgresSource(dsn=dsn), BronzeStorage(root=store.root))
        self.assets = {c.bronze_table: build_bronze_asset(c) for c in CONTRACTS.values()}

    def materialize(self, table: str, partition: str | None = None, **kwargs: object) -> None:
        result = dg.materialize([self.assets[f"bz_{table}"]], resources=self.resources,
                                partition_key=partition, **kwargs)
        assert result.success

    def read(self, table: str) -> pl.DataFrame:
        frame = pl.from_arrow(DeltaTable(self.storage.uri(f"bz_{table}")).to_pyarrow_table())
        assert isinstance(frame, pl.DataFrame)
        return frame

    def load_direct(self, table: str) -> MergeResult:
        """One load through the library (no Dagster run)."""
        staged = extract_and_stage(CONTRACTS[table], self.dsn, self.storage)
        try:
            return BronzeMerger(CONTRACTS[table], self.storage).merge(staged)
        finally:
            staged.cleanup()

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


def test_initial_load_and_hourly_tick_then_status_history_restore_and_maintenance(
        seeded: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start = TODAY - timedelta(days=1)
    monkeypatch.setenv("BRONZE_START_DATE", start.isoformat())
    b = OnStore(seeded, store)
    b.materialize("inventory", start.isoformat())
    b.materialize("order_details", start.isoformat())
    b.assert_exact("inventory")
    b.assert_exact("order_details")
    for control in INBOXES:  # each run's end committed its control rows (the IO manager's teardown)
        assert not b.storage.list_files(INBOXES[control].folder), control
    audited = DeltaTable(b.storage.uri("bz_audit_log")).to_pyarrow_table()["table_name"].to_pylist()
    assert {"bz_inventory", "bz_order_details"} <= set(audited), audited

    query(seeded, "UPDATE tests.inventory SET quantity_available = 77, updated_at = now() "
                  "WHERE inventory_id = 3")
    query(seeded, "DELETE FROM tests.inventory WHERE inventory_id = 4")
    query(seeded, "INSERT INTO tests.inventory VALUES (990001, 1, 1, 5, now())")
    b.materialize("inventory", TODAY.isoformat())  # the hourly tick of the open day
    frame = b.assert_exact("inventory")
    assert frame.filter(pl.col("inventory_id") == 4)["record_status"].to_list() == ["DELETED"]

    keys = store.keys("bronze/")
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

    # no file can be aged on an object store (os.utime): the table's own retention goes to 0 instead
    DeltaTable(b.storage.uri("bz_inventory")).alter.set_table_properties(
        {"delta.deletedFileRetentionDuration": "interval 0 hours"})
    report = maintain_table(b.storage, "bz_inventory", CONTRACTS["inventory"], retention_hours=0)
    assert report.version_after is not None and report.version_after > version + 1
    assert report.files_removed_by_vacuum > 0, "the files the tick's MERGE replaced are gone"
    b.assert_exact("inventory")
    live = {u.rsplit("/", 1)[-1] for u in DeltaTable(b.storage.uri("bz_inventory")).file_uris()}
    stored = {k.rsplit("/", 1)[-1] for k in store.keys("bronze/bz_inventory/") if "_delta_log" not in k}
    assert stored == live, "VACUUM removed every file no version needs from the bucket"


def test_forget_shreds_the_key_and_marks_the_rows(seeded: str, store: Store) -> None:
    b = OnStore(seeded, store)
    b.materialize("customers")
    (customer,) = query(seeded, "SELECT min(customer_id) FROM tests.customers")[0]
    out = _cli("forget", "--customer-id", str(customer))
    assert f"customer {customer}: 1 row(s)" in out
    rows = b.read("customers").filter(pl.col("customer_id") == customer)
    assert rows["record_status"].to_list() == ["FORGOTTEN"]


def test_cdc_ticks_are_exact(seeded: str, store: Store) -> None:
    orders = CONTRACTS["orders"]
    cdc_load(orders, seeded, Storage(store.root))
    OnStore(seeded, store).assert_exact("orders")
    query(seeded, "INSERT INTO tests.orders VALUES (900001, 1, DATE '2026-11-02', 'PENDING', 5.00, now())")
    query(seeded, "UPDATE tests.orders SET total_amount = total_amount + 1 WHERE order_id = 1")
    query(seeded, "DELETE FROM tests.orders WHERE order_id = 2")
    batch, result = cdc_load(orders, seeded, Storage(store.root))
    assert batch.mode == STREAM
    assert (result.inserted, result.updated, result.soft_deleted) == (1, 1, 1)
    OnStore(seeded, store).assert_exact("orders")


def test_two_materializations_of_one_table_at_once_end_exact(
        seeded: str, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", TODAY.isoformat())
    b = OnStore(seeded, store)
    b.materialize("inventory", TODAY.isoformat())
    query(seeded, "UPDATE tests.inventory SET quantity_available = quantity_available + 1, "
                  "updated_at = now() WHERE inventory_id <= 50")
    def load() -> None:
        b.materialize("inventory", TODAY.isoformat())

    at_once(load, load)
    b.assert_exact("inventory")


def test_the_store_rejects_a_second_create_of_one_commit_file(store: Store) -> None:
    """delta-rs commits with a conditional put (If-None-Match: *): a store that ignored it would
    let two writers both create version N, silently losing one commit."""
    key = "bronze/bz_guard/_delta_log/00000000000000000005.json"
    store.create_once(key, b'{"first":1}')
    with pytest.raises(Exception) as refused:
        store.create_once(key, b'{"second":1}')
    assert store.refused(refused.value), refused.value
    assert store.read_key(key) == b'{"first":1}'


def _load_killed_at_commit(b: OnStore, table: str, version: int, when: str, work: Path) -> None:
    """A load of ``bz_<table>`` in a child process, SIGKILLed at the PUT of commit ``version``:
    ``before`` it reaches the store, or ``after`` it landed but before the writer heard (a proxy
    in front of the store holds it: ``store_proxy.py``)."""
    port, held = free_port(), work / f"held-{version}-{when}"
    commit = rf"/bz_{table}/_delta_log/{version:020d}\.json"
    proxy = subprocess.Popen([sys.executable, "-m", "bronze_assets_tests.store_proxy", "--port", str(port),
                              "--upstream", b.store.endpoint, "--hold", commit, "--when", when,
                              "--held", str(held)])
    try:
        wait_for_port(proxy, port, "the store proxy")
        env = _env(**{b.store.endpoint_variable: f"http://127.0.0.1:{port}"})
        uri = b.storage.uri(f"bz_{table}")
        load = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT, b.dsn, uri, table], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not held.exists():
            assert load.poll() is None, f"the load ended before its commit: {load.stderr.read()[-2000:]!r}"
            assert time.monotonic() < deadline, "the load never reached its commit"
            time.sleep(0.02)
        load.kill()
        load.wait(timeout=30)
        load.stderr.close()
    finally:
        stop(proxy)


def test_a_writer_killed_mid_commit_then_a_rerun_is_exact(seeded: str, store: Store, tmp_path: Path) -> None:
    """Killed before its first commit reached the store: no table, orphan files only; killed after
    a MERGE commit landed but before it heard back: the commit stands, and the re-run neither
    repeats nor loses a change."""
    b = OnStore(seeded, store)
    _load_killed_at_commit(b, "inventory", 0, "before", tmp_path)
    assert b.storage.open("bz_inventory") is None, "no commit"
    assert [k for k in store.keys("bronze/bz_inventory/") if k.endswith(".parquet")], "orphan data files"
    assert b.load_direct("inventory").committed
    b.assert_exact("inventory")

    version = DeltaTable(b.storage.uri("bz_inventory")).version()
    query(seeded, "UPDATE tests.inventory SET quantity_available = quantity_available + 3, "
                  "updated_at = now() WHERE inventory_id % 4 = 0")
    query(seeded, "DELETE FROM tests.inventory WHERE inventory_id = 5")
    _load_killed_at_commit(b, "inventory", version + 1, "after", tmp_path)
    assert DeltaTable(b.storage.uri("bz_inventory")).version() == version + 1, "the held commit landed"
    b.load_direct("inventory")
    b.assert_exact("inventory")
    assert not b.load_direct("inventory").committed, "a further re-run changes nothing"


def test_retention_and_the_report(seeded: str, store: Store, tmp_path: Path) -> None:
    """Retention moves exactly the old rows to the archive beside bronze on the store; the report
    reads the control tables from there."""
    b = OnStore(seeded, store)
    b.load_direct("returns")
    before = b.read("returns").height
    (old,) = query(seeded, "SELECT count(*) FROM tests.returns WHERE return_date < DATE '2025-11-01'")[0]
    assert old > 0
    moved = apply_retention(CONTRACTS["returns"], b.storage, years=1, today=date(2026, 11, 1))
    assert moved.moved == old and moved.archive_uri == f"{store.root}/_archive/bz_returns"
    archived = DeltaTable(moved.archive_uri).to_pyarrow_table().num_rows
    assert archived == old and b.read("returns").height == before - old, "archive + bronze = before"

    report = build_report(store.root, tmp_path / "report")
    assert report.html.exists()
    assert {s.table: s.rows for s in report.status}["bz_returns"] == before - old
    assert "bz_returns" in report.html.read_text()


def _commit(engine: str, hours_ago: float, load: bool = True) -> dict[str, object]:
    """A history entry as delta-rs / delta-spark write it (bronze's batch id on a load)."""
    info = {"delta-rs": {"engineInfo": "delta-rs:py-1.6.6", "clientVersion": "delta-rs.py-1.6.6"},
            "delta-spark": {"engineInfo": "Apache-Spark/4.0.1 Delta-Lake/4.0.1"}}[engine]
    when = datetime.now(UTC) - timedelta(hours=hours_ago)
    return {**info, "timestamp": int(when.timestamp() * 1000), "version": 7,
            **({BATCH_KEY: "b"} if load else {"operation": "OPTIMIZE"})}


def test_one_engine_per_s3_table_from_the_commit_history() -> None:
    """A load is refused when the table's latest load on S3, within the quiet period, was the
    other engine's; its own, maintenance commits (no batch id), older loads and other stores pass."""
    root = "s3://lake/bronze"
    check_single_engine(root, "bz_orders", SPARK, [_commit(SPARK, 0.1), _commit(DELTA_RS, 3)])
    check_single_engine(root, "bz_orders", SPARK, [_commit(DELTA_RS, 0.1, load=False), _commit(SPARK, 1)])
    check_single_engine(root, "bz_orders", SPARK, [_commit(DELTA_RS, 25)])
    check_single_engine("abfss://c@a.dfs.core.windows.net/b", "bz_orders", SPARK, [_commit(DELTA_RS, 0.1)])
    refused = r"^bz_orders: refusing a delta-spark load on s3://lake/bronze: version 7 .* by delta-rs.*#3596"
    with pytest.raises(MixedEnginesError, match=refused):
        check_single_engine(root, "bz_orders", SPARK, [_commit(SPARK, 0.5, False), _commit(DELTA_RS, 23)])
    with pytest.raises(MixedEnginesError, match="loaded by delta-spark"):
        check_single_engine("s3a://lake/bronze", "bz_orders", DELTA_RS, [_commit(SPARK, 2)])
    assert classify(MixedEnginesError("x"), "bz_orders").cause is Cause.CONFIGURATION


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


def _by_kind(requests: list[Request]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in Counter(f"{r.kind} ({r.table})" for r in requests).most_common())


TICK_SCRIPT = """
import sys
import dagster as dg
from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.assets import build_bronze_asset
from bronze_assets.defs.resources import BronzeStorage, PostgresSource, build_resources
from bronze_assets.defs.schedules import CHANGES_ONLY_TAG
asset = build_bronze_asset(CONTRACTS[sys.argv[2]])
key = asset.partitions_def.get_last_partition_key() if asset.partitions_def else None
resources = build_resources(PostgresSource(dsn=sys.argv[1]), BronzeStorage())
result = dg.materialize([asset], resources=resources, partition_key=key, tags={CHANGES_ONLY_TAG: "true"})
assert result.success
"""


def _audit_log_at(storage: Storage, past_checkpoint: int) -> int:
    """Append rows to bz_audit_log (the first carries the rows waiting in its inbox) until it is
    ``past_checkpoint`` commits past its last checkpoint (it checkpoints every ten: versions 9,
    19 …); its version."""

    while True:
        append_rows(storage, AUDIT_LOG, [_audit_row("setup")])
        if (version := DeltaTable(storage.uri(AUDIT_LOG)).version()) % 10 == (9 + past_checkpoint) % 10:
            return version


@pytest.mark.parametrize("table", ["inventory", "orders", "order_details"])  # the hourly tables
def test_an_unchanged_scheduled_tick_costs_few_requests(seeded: str, s3: S3, table: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 requests of an hourly tick that finds nothing new, run as production runs it: in a
    fresh process (each Dagster run is one), on a table of more than ten commits, with the audit
    log just checkpointed (k = 0) and nine commits past its checkpoint (k = 9, the most): issue #23
    deliverable 3 asks at most 50 per table whatever k (README 'Bronze on S3' has them by kind)."""
    from bronze_assets.lib.delta.audit_inbox import INBOX

    monkeypatch.setenv("BRONZE_START_DATE", TODAY.isoformat())
    rows = query(seeded, f"SELECT count(*) FROM tests.{table}")[0][0]
    monkeypatch.setenv("BRONZE_COMMIT_CHUNK_ROWS", str(max(1, rows // 14)))  # the load: ~14 commits
    b = OnStore(seeded, s3)
    asset = b.assets[f"bz_{table}"]
    partition = asset.partitions_def.get_last_partition_key() if asset.partitions_def else None
    b.materialize(table, partition)
    b.materialize(table, partition, tags={CHANGES_ONLY_TAG: "true"})  # the first tick after a load
    version = DeltaTable(b.storage.uri(f"bz_{table}")).version()
    assert version >= 10, f"bz_{table} has {version + 1} commits: too young to need a checkpoint"
    for k in (0, 9):
        audit_version = _audit_log_at(b.storage, k)  # (carrying the rows the ticks before left)
        before = len(s3.requests())
        subprocess.run([sys.executable, "-c", TICK_SCRIPT, seeded, table], check=True, env=os.environ.copy(),
                       timeout=300)
        tick = s3.requests()[before:]
        (tmp_path / f"tick_k{k}.log").write_text("".join(f"{r.method} {r.key}?{r.query} {r.status}\n"
                                                          for r in tick))
        print(f"\n{table} (version {version}), audit log at version {audit_version} (k = {k}), fresh "
              f"process: {len(tick)} requests: {_by_kind(tick)}")
        data = [r for r in tick if r.kind.startswith("GET data") and r.table.startswith("bz_")]
        assert not data, f"the checks answered from their kept outcomes: {_by_kind(data)}"
        assert not [r for r in tick if r.table == "bz_audit_log"], "the audit row went to the inbox"
        assert len(b.storage.list_files(INBOX)) == 1, "the tick's audit row waits in the inbox"
        # one open of the table from the checkpoint the first tick wrote (staging, MERGE and checks
        # share it), its latest two commits, the CDC acknowledgement, the kept check outcomes, a
        # listing per parent, and the audit row: one file in the audit log's inbox
        assert len(tick) <= 50, _by_kind(tick)


def test_control_tables_checkpoint_every_ten_commits_on_the_store(s3: S3) -> None:
    """A control table gets a commit per load: opening it in a new process reads every commit
    since its last checkpoint, so it checkpoints every 10 commits (an older table gets the
    property with its first append of a process)."""
    from deltalake import write_deltalake


    storage = Storage(s3.root)
    write_deltalake(storage.uri(ALERTS), SCHEMAS[ALERTS].empty_table())  # as an earlier version made it
    for n in range(11):
        append_rows(storage, ALERTS, [{"kpi": "freshness", "message": f"tick {n}"}])
    dt = DeltaTable(storage.uri(ALERTS))
    assert CONTROL_PROPERTIES.items() <= dt.metadata().configuration.items()
    assert dt.to_pyarrow_table().num_rows == 11
    assert [k for k in s3.keys("bronze/bz_alerts/_delta_log/") if k.endswith(".checkpoint.parquet")]


def test_status_counts_skip_the_files_that_hold_only_active_rows(s3: S3) -> None:
    """The rows per ``record_status`` (the demo's summary, ``bronze status``) take the ACTIVE rows
    from the log's row counts: a file whose statistics say it holds only ACTIVE rows is not read,
    and the counts equal a full read's."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from bronze_assets.lib.delta.query import value_counts

    uri = Storage(s3.root).uri("bz_counted")
    statuses = ["ACTIVE"] * 6 + ["ACTIVE", "DELETED", "DELETED", "FORGOTTEN", None]
    parts = ["only_active"] * 6 + ["mixed"] * 5
    write_deltalake(uri, pa.table({"id": list(range(len(statuses))), "part": parts,
                                   "record_status": pa.array(statuses, pa.string())}), partition_by=["part"])
    dt = DeltaTable(uri)
    before = len(s3.requests())
    counts = value_counts(dt, "record_status", "ACTIVE")
    read = [r.key for r in s3.requests()[before:] if r.kind.startswith("GET data")]
    assert counts == {"ACTIVE": 7, "DELETED": 2, "FORGOTTEN": 1, None: 1}
    assert counts == Counter(dt.to_pyarrow_table()["record_status"].to_pylist())
    assert read and all("part=mixed/" in key for key in read), read


def test_a_file_read_again_in_one_process_costs_one_request(s3: S3) -> None:
    """The process's DataFusion session keeps the Parquet footers it read: reading a table again
    (the checks, reconciliation and summary after a load) is one ranged GET per file and column
    read, not the footer's length and the footer first; a table opened anew reads the same."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from bronze_assets.lib.delta.query import query_tables, read_columns

    uri = Storage(s3.root).uri("bz_reread")
    write_deltalake(uri, pa.table({"id": list(range(100)), "part": [i % 4 for i in range(100)],
                                   "name": [f"n{i}" for i in range(100)]}), partition_by=["part"])

    def data_gets(read: Callable[[], pa.Table]) -> tuple[pa.Table, list[str]]:
        before = len(s3.requests())
        value = read()
        return value, [r.key for r in s3.requests()[before:] if r.kind.startswith("GET data")]

    first, cold = data_gets(lambda: read_columns(DeltaTable(uri), ["id"]))
    again, warm = data_gets(lambda: read_columns(DeltaTable(uri), ["id"]))
    joined, _ = data_gets(lambda: query_tables({"a": DeltaTable(uri), "b": DeltaTable(uri)},
                                               "SELECT count(*) AS n FROM a JOIN b ON a.id = b.id"))
    assert sorted(first["id"].to_pylist()) == sorted(again["id"].to_pylist()) == list(range(100))
    assert len(cold) == 3 * 4 and len(warm) == 4, (cold, warm)
    assert joined["n"].to_pylist() == [100]
    assert read_columns(DeltaTable(uri), ["name"], "id = 7")["name"].to_pylist() == ["n7"]


def test_a_small_file_beside_the_tables_is_one_put(store: Store) -> None:
    """A kept check outcome, an inbox row, a CDC acknowledgement: written (and replaced) in one
    request on S3, not a three-request multipart upload, and read back the same on both stores."""
    storage = Storage(store.root)
    before = len(store.requests()) if isinstance(store, S3) else 0
    storage.write_file("_bronze_checks/bz_x.key_uniqueness.json", b'{"a": 1}')
    storage.write_file("_bronze_checks/bz_x.key_uniqueness.json", b'{"a": 2}')
    if isinstance(store, S3):
        assert [r.method for r in store.requests()[before:]] == ["PUT", "PUT"]
    assert storage.read_file("_bronze_checks/bz_x.key_uniqueness.json") == b'{"a": 2}'
    assert storage.list_files("_bronze_checks") == ["_bronze_checks/bz_x.key_uniqueness.json"]


def _audit_row(name: str) -> dict[str, object]:
    return {"table_name": name, "operation_type": "LOAD", "status": "SUCCESS", "records_affected": 0}


def _audit_ids(storage: Storage) -> Counter[str]:
    """How often each audit row (by table_name) is in bz_audit_log's Delta table itself."""
    return Counter(DeltaTable(storage.uri("bz_audit_log")).to_pyarrow_table()["table_name"].to_pylist())


def test_the_audit_rows_of_unchanged_loads_wait_in_the_inbox_then_join_the_log_once(store: Store) -> None:
    """An unchanged load's audit row is one file in the inbox; readers see it at once; the next
    append to the audit log carries it in its own commit and removes the file; a file whose
    removal failed (a fold that died after its commit) is neither read nor appended twice."""

    storage = Storage(store.root)
    append_rows(storage, AUDIT_LOG, [_audit_row("a")])
    for name in ("b", "c", "d"):
        post_audit_row(storage, _audit_row(name))
    assert len(storage.list_files(audit_inbox.INBOX)) == 3
    assert _audit_ids(storage) == Counter({"a": 1})
    assert Counter(read_table(storage, AUDIT_LOG)["table_name"].to_pylist()) == Counter("abcd")
    kept = {path: storage.read_file(path) for path in storage.list_files(audit_inbox.INBOX)}
    append_rows(storage, AUDIT_LOG, [_audit_row("e")])
    assert _audit_ids(storage) == Counter("abcde") and not storage.list_files(audit_inbox.INBOX)
    for path, data in kept.items():  # as if the fold had died before removing the files
        assert data is not None
        storage.write_file(path, data)
    assert Counter(read_table(storage, AUDIT_LOG)["table_name"].to_pylist()) == Counter("abcde")
    append_rows(storage, AUDIT_LOG, [_audit_row("f")])
    assert _audit_ids(storage) == Counter("abcdef") and not storage.list_files(audit_inbox.INBOX)


def test_concurrent_unchanged_loads_and_folds_all_land_once(store: Store) -> None:
    """Runs at once: unchanged loads posting their rows while two others append theirs (each
    carrying the inbox): every row lands in the audit log exactly once."""

    storage = Storage(store.root)
    append_rows(storage, AUDIT_LOG, [_audit_row("first")])
    for n in range(4):
        post_audit_row(storage, _audit_row(f"waiting{n}"))
    works = [lambda n=n: append_rows(storage, AUDIT_LOG, [_audit_row(f"moved{n}")]) for n in range(2)]
    works += [lambda n=n: post_audit_row(storage, _audit_row(f"unchanged{n}")) for n in range(3)]
    at_once(*works)
    expected = Counter(["first", *(f"waiting{n}" for n in range(4)), "moved0", "moved1",
                        *(f"unchanged{n}" for n in range(3))])
    assert Counter(read_table(storage, AUDIT_LOG)["table_name"].to_pylist()) == expected
    append_rows(storage, AUDIT_LOG, [_audit_row("last")])  # whatever was posted after the folds
    assert _audit_ids(storage) == expected + Counter(["last"])


HELD_RUN_SCRIPT = """
import os, signal, sys
from bronze_assets.lib.delta.control import AUDIT_LOG, append_rows, hold_appends, release_appends
from bronze_assets.lib.delta.storage import Storage
storage = Storage(sys.argv[1])
hold_appends()
for name in sys.argv[3:]:
    append_rows(storage, AUDIT_LOG, [{"table_name": name, "operation_type": "LOAD", "status": "SUCCESS"}])
print("HELD", flush=True)
sys.stdin.readline()
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
release_appends()
"""


def _held_run(root: str, end: str, *names: str) -> subprocess.Popen[str]:
    """A process that holds its appends (as a Dagster run does), appends one audit row per name,
    then, once told, either releases (``end`` "release") or is SIGKILLed ("kill")."""
    run = subprocess.Popen([sys.executable, "-c", HELD_RUN_SCRIPT, root, end, *names], text=True,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=os.environ.copy())
    assert run.stdout is not None and run.stdout.readline().strip() == "HELD"
    return run


def _end(run: subprocess.Popen[str], returncode: int) -> None:
    assert run.stdin is not None
    run.stdin.write("\n")
    run.stdin.flush()
    assert run.wait(timeout=120) == returncode


def test_a_run_commits_its_control_rows_once_per_table_at_its_end(any_store: Store | LocalRoot) -> None:
    """During a run (:func:`hold_appends`) an append to the audit log or bz_checkpoints posts its
    rows to the table's inbox: readers see them at once, the table gets no commit; the run's end
    commits them, with the rows that were waiting, in one commit per table, and removes the files."""

    storage = Storage(any_store.root)
    append_rows(storage, AUDIT_LOG, [_audit_row("before")])
    post_audit_row(storage, _audit_row("waiting"))  # on a local folder an append of its own
    in_table = Counter(["before", "waiting"] if isinstance(any_store, LocalRoot) else ["before"])
    version = DeltaTable(storage.uri(AUDIT_LOG)).version()
    hold_appends()
    try:
        for name in ("a", "b", "c"):
            append_rows(storage, AUDIT_LOG, [_audit_row(name)])
        for chunk in range(3):
            append_rows(storage, CHECKPOINTS, [{"table_name": "bz_x", "chunk_index": chunk,
                                                "status": "COMPLETE"}])
        assert DeltaTable(storage.uri(AUDIT_LOG)).version() == version, "no commit during the run"
        assert _audit_ids(storage) == in_table
        assert not storage.list_files("bz_checkpoints"), "bz_checkpoints not created yet"
        assert Counter(read_table(storage, AUDIT_LOG)["table_name"].to_pylist()) == Counter(
            ["before", "waiting", "a", "b", "c"]), "readers see the held rows"
        assert sorted(read_table(storage, CHECKPOINTS)["chunk_index"].to_pylist()) == [0, 1, 2]
        hold_appends()  # a run inside (bronze demo holds around its runs): its end commits nothing
        append_rows(storage, AUDIT_LOG, [_audit_row("inner")])
        release_appends()
        assert DeltaTable(storage.uri(AUDIT_LOG)).version() == version, "the outer hold still holds"
    finally:
        release_appends()
    assert DeltaTable(storage.uri(AUDIT_LOG)).version() == version + 1, "one commit for the run"
    assert _audit_ids(storage) == Counter(["before", "waiting", "a", "b", "c", "inner"])
    checkpoints = DeltaTable(storage.uri(CHECKPOINTS))
    assert checkpoints.version() == 0
    assert sorted(checkpoints.to_pyarrow_table()["chunk_index"].to_pylist()) == [0, 1, 2]
    for table in (AUDIT_LOG, CHECKPOINTS):
        assert not storage.list_files(audit_inbox.INBOXES[table].folder), table
    append_rows(storage, AUDIT_LOG, [_audit_row("after")])  # no longer held: an append of its own
    assert _audit_ids(storage) == Counter(["before", "waiting", "a", "b", "c", "inner", "after"])


def test_a_killed_run_leaves_its_rows_and_two_runs_at_once_land_each_row_once(
        any_store: Store | LocalRoot) -> None:
    """A run SIGKILLed before its end leaves its held rows in the inbox (readers see them; the next
    run's end carries them); a run whose rows another run's end carried meanwhile (it lists the
    whole inbox) does not append them again at its own end: every row exactly once."""

    storage = Storage(any_store.root)
    append_rows(storage, AUDIT_LOG, [_audit_row("first")])
    killed = _held_run(any_store.root, "kill", "k1", "k2")
    _end(killed, -9)
    assert _audit_ids(storage) == Counter(["first"])
    assert Counter(read_table(storage, AUDIT_LOG)["table_name"].to_pylist()) == Counter(["first", "k1", "k2"])
    slow = _held_run(any_store.root, "release", "s1", "s2")  # holds its rows while this one ends
    hold_appends()
    try:
        append_rows(storage, AUDIT_LOG, [_audit_row("m1")])
    finally:
        release_appends()  # carries k1, k2 and the slow run's s1, s2 with m1
    assert _audit_ids(storage) == Counter(["first", "k1", "k2", "s1", "s2", "m1"])
    _end(slow, 0)
    assert _audit_ids(storage) == Counter(["first", "k1", "k2", "s1", "s2", "m1"])
    runs = [_held_run(any_store.root, "release", f"r{n}a", f"r{n}b") for n in range(3)]
    at_once(*[lambda run=run: _end(run, 0) for run in runs])
    expected = Counter(["first", "k1", "k2", "s1", "s2", "m1", *(f"r{n}{x}" for n in range(3) for x in "ab")])
    assert _audit_ids(storage) == expected
    assert Counter(read_table(storage, AUDIT_LOG)["table_name"].to_pylist()) == expected


def test_a_filtered_read_costs_one_request_per_file_and_the_same_rows(s3: S3) -> None:
    """On an object store a query filtering a column other than the status reads each file in one
    ranged GET once its footer is known (without the page index, which costs one more per file);
    the rows equal a local read's."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from bronze_assets.lib.delta.query import read_columns

    data = pa.table({"id": list(range(400)), "part": [i % 4 for i in range(400)],
                     "record_status": ["ACTIVE"] * 400})
    uri = Storage(s3.root).uri("bz_filtered")
    write_deltalake(uri, data, partition_by=["part"])
    read_columns(DeltaTable(uri), ["id"])  # the footers
    before = len(s3.requests())
    found = read_columns(DeltaTable(uri), ["id", "part"], "id BETWEEN 10 AND 390 AND id IS NOT NULL")
    gets = [r for r in s3.requests()[before:] if r.kind.startswith("GET data")]
    assert sorted(found["id"].to_pylist()) == list(range(10, 391))
    assert len(gets) == 4, gets


def test_a_parent_of_several_tables_is_read_once_per_version_by_their_checks(seeded: str, s3: S3) -> None:
    """The referential checks of bz_shipments and bz_returns both read bz_orders' keys: the second
    reads none of its files (they are kept per table version); after a new version of it they are
    read again; the outcomes equal a fresh process's (the DataFusion join)."""
    from bronze_assets.lib.quality import checks

    b = OnStore(seeded, s3)
    for table in ("customers", "orders", "shipments", "returns"):
        b.load_direct(table)
    storage = b.storage
    first = checks._referential_integrity(CONTRACTS["shipments"], storage.open("bz_shipments"),
                                          {"bz_orders": storage.open("bz_orders")})
    before = len(s3.requests())
    second = checks._referential_integrity(CONTRACTS["returns"], storage.open("bz_returns"),
                                           {"bz_orders": storage.open("bz_orders")})
    orders_read = [r for r in s3.requests()[before:]
                   if r.table == "bz_orders" and r.kind.startswith("GET data")]
    assert not orders_read, orders_read
    for contract, outcome in ((CONTRACTS["shipments"], first), (CONTRACTS["returns"], second)):
        fk = contract.foreign_keys[0]
        joined = checks._orphans_joined(storage.open(contract.bronze_table), fk, storage.open("bz_orders"))
        label = f"{fk.column} -> {fk.parent_table}.{fk.parent_column}"
        assert outcome.metadata[f"orphans {label}"] == len(joined[1])
        sample = sorted(set(joined[1].to_pylist()))[:5]
        assert outcome.metadata.get(f"orphan_values_sample {label}", []) == sample


def test_a_load_that_changed_nothing_posts_its_lineage_and_cost_rows_too(store: Store) -> None:
    """A load that read rows but changed none (a daily full load of an unchanged table) writes no
    control-table commit: its audit, lineage and cost rows wait in their inboxes, readers see
    them at once, and each table's next append carries them; a load that changed rows appends."""

    storage = Storage(store.root)
    start = datetime.now(UTC)

    def load(name: str, changed: int) -> LoadRecord:
        return LoadRecord(name, f"tests.{name}", "MERGE_FULL", "job", start, seconds=1.0, rows_read=50,
                          records_affected=changed)

    tables = (AUDIT_LOG, LINEAGE, COST_TRACKING)
    name_of = {AUDIT_LOG: "table_name", LINEAGE: "target_table", COST_TRACKING: "table_name"}
    record_load(storage, load("first", 5))
    record_load(storage, load("unchanged", 0))
    for table in tables:
        assert len(storage.list_files(audit_inbox.INBOXES[table].folder)) == 1, table
        in_delta = DeltaTable(storage.uri(table)).to_pyarrow_table()[name_of[table]].to_pylist()
        assert in_delta == ["first"], table
        assert sorted(read_table(storage, table)[name_of[table]].to_pylist()) == ["first", "unchanged"], table
    record_load(storage, load("moved", 3))
    for table in tables:
        assert not storage.list_files(audit_inbox.INBOXES[table].folder), table
        in_delta = DeltaTable(storage.uri(table)).to_pyarrow_table()[name_of[table]].to_pylist()
        assert Counter(in_delta) == Counter(["first", "unchanged", "moved"]), table


def test_a_created_tables_key_and_referential_checks_read_none_of_its_files(seeded: str, s3: S3) -> None:
    """The load that creates bz_suppliers hands its checks what it wrote: the key check reads none
    of its files, the referential check its foreign keys from the staged rows and bz_products' keys
    as bz_products' own load held them; both outcomes equal the ones read from the tables."""
    from bronze_assets.defs.checks import (
        KEY_UNIQUENESS,
        REFERENTIAL_INTEGRITY,
        key_uniqueness_result,
        referential_integrity_result,
    )
    from bronze_assets.lib.quality import checks

    b = OnStore(seeded, s3)
    b.materialize("products")
    before = len(s3.requests())
    result = dg.materialize([b.assets["bz_suppliers"]], resources=b.resources)
    assert result.success
    read = [r for r in s3.requests()[before:] if r.kind.startswith("GET data")
            and r.table in ("bz_suppliers", "bz_products")]
    assert not read, read
    found = {e.check_name: e for e in result.get_asset_check_evaluations()}
    for check in (KEY_UNIQUENESS, REFERENTIAL_INTEGRITY):  # computed again, from the tables' files
        b.storage.delete_file(f"_bronze_checks/bz_suppliers.{check}.json")
    checks._PARENT_KEYS.clear()
    key = key_uniqueness_result(CONTRACTS["suppliers"], b.storage)
    referential = referential_integrity_result(CONTRACTS["suppliers"], b.storage)
    for computed, name in ((key, KEY_UNIQUENESS), (referential, REFERENTIAL_INTEGRITY)):
        assert found[name].passed == computed.passed
        assert {k: v.value for k, v in found[name].metadata.items()} == \
            {k: v.value for k, v in computed.metadata.items()}
