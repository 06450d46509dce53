"""Dagster as in production (deploy/dagster.yaml): runs, events and schedules in PostgreSQL,
``dagster-daemon`` ticking a schedule and a sensor, one run per bronze table at a time, and run
retries only for runs that were lost — never for an asset that failed."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil
import psycopg2
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from bronze_assets.defs.assets import bronze_assets
from bronze_assets.defs.resources import BronzeStorage
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.demo.seed import seed_source
from bronze_assets.lib.source.embedded import EmbeddedPostgres
from bronze_assets_tests import daemon_defs
from bronze_assets_tests.conftest import AS_OF, query
from bronze_assets_tests.webserver import Webserver, free_port

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ROOT / "deploy" / "dagster.yaml"
LOCAL = ROOT / "dagster.yaml"
DEADLINE_SECONDS = 200  # the schedule ticks within a minute; the six runs take one to two minutes

SCHEDULE_TAG, SENSOR_TAG, RUN_KEY_TAG = "dagster/schedule_name", "dagster/sensor_name", "dagster/run_key"
PARENT_TAG, RETRY_NUMBER_TAG = "dagster/parent_run_id", "dagster/retry_number"
WILL_RETRY_TAG, FAILURE_REASON_TAG = "dagster/will_retry", "dagster/failure_reason"


def test_local_profile_is_the_production_profile_on_the_embedded_server() -> None:
    production, local = (yaml.safe_load(p.read_text()) for p in (PRODUCTION, LOCAL))
    assert production.pop("storage") == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    assert local.pop("storage")["custom"] == {"module": "bronze_assets.instance",
                                              "class": "EmbeddedPostgresStorage",
                                              "config": {"database": "dagster"}}
    assert local == production
    assert production["run_coordinator"] == {"module": "bronze_assets.instance",
                                             "class": "PoolQueuedRunCoordinator"}
    assert production["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}
    assert production["run_retries"]["retry_on_asset_or_op_failure"] is False
    assert production["run_monitoring"]["enabled"] is True


def test_profiles_pass_dagster_config_validation(tmp_path: Path) -> None:
    for profile in (PRODUCTION, LOCAL):
        home = tmp_path / profile.parent.name
        home.mkdir()
        shutil.copy(profile, home / "dagster.yaml")
        dagster_instance_config(str(home))  # raises on a key or value Dagster 1.13 does not accept


def test_every_bronze_asset_is_in_the_pool_of_its_table() -> None:
    pools = {key.to_user_string(): a.op.pool for a in bronze_assets().assets for key in a.keys}
    # a history table is written by its table's step, so it shares that pool
    assert pools and all(pool == key.removesuffix("_history") for key, pool in pools.items()), pools


@pytest.mark.integration
def test_make_ui_instance_lives_in_a_dagster_database_of_the_embedded_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    home = data / "dagster_home"
    stale = "storage:\n  sqlite:\n    base_dir: history\n"  # a home made before this profile
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(stale)
    os.utime(home / "dagster.yaml", (0, 0))  # older than the checkout's profile
    make = subprocess.run(["make", "-s", f"BRONZE_DATA_DIR={data}", f"{home}/dagster.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert make.returncode == 0, make.stderr
    assert (home / "dagster.yaml").read_text() == LOCAL.read_text(), "make ui/demo use the profile"
    assert (home / "dagster.yaml.bak").read_text() == stale and "updated" in make.stdout

    env = os.environ | {"DAGSTER_HOME": str(home), "BRONZE_DATA_DIR": str(data)}
    port = free_port()  # make ui: dagster dev (webserver, daemon, code server) on this instance
    log = tmp_path / "dagster_dev.log"
    with log.open("wb") as out:
        ui = subprocess.Popen(
            [sys.executable, "-m", "bronze_assets.devserver", "-w", "workspace.yaml", "-p", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    web = Webserver(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 120
        while not _listening(port):
            assert time.monotonic() < deadline and ui.poll() is None, \
                f"make ui did not start on the profile:\n{web.log_tail()}"
            time.sleep(0.5)
        queue = web.graphql("{ instance { runQueuingSupported poolConfig { poolGranularity "
                            "defaultPoolLimit } } }")
        assert queue["instance"] == {"runQueuingSupported": True,
                                     "poolConfig": {"poolGranularity": "run", "defaultPoolLimit": 1}}, \
            web.log_tail()
    finally:
        ui.send_signal(signal.SIGTERM)  # as Ctrl-C / the end of make
        try:
            ui.wait(timeout=60)
        finally:
            _stop_group(ui)
    server = EmbeddedPostgres(data / "pgdata")
    deadline = time.monotonic() + 60
    while server.is_running:  # its webserver, daemon and code servers let go of the server
        assert time.monotonic() < deadline, "the embedded server outlived make ui"
        time.sleep(0.5)

    script = (  # one process that opens the instance, as `bronze demo` or a run worker would
        "import dagster as dg\n"
        "@dg.asset\n"
        "def one() -> int:\n    return 1\n"
        "instance = dg.DagsterInstance.get()\n"
        "print(type(instance.run_storage).__name__, type(instance.event_log_storage).__name__)\n"
        "assert dg.materialize([one], instance=instance).success\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["PostgresRunStorage", "PostgresEventLogStorage"]

    assert not server.is_running, "the server stops with the last process that opened the instance"
    uri = server.start()
    try:
        dagster_db = uri.replace(f"/{server.database}?", "/dagster?")
        assert query(dagster_db, "SELECT count(*) FROM runs")[0][0] == 1
    finally:
        server.stop()


@pytest.fixture
def dagster_pg_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A new ``dagster`` database on the test server, as the production profile's DAGSTER_PG_URL."""
    admin = pg_server.start().replace(f"/{pg_server.database}?", "/postgres?")
    name = f"dagster_{uuid.uuid4().hex[:10]}"
    query(admin, f'CREATE DATABASE "{name}"')
    yield admin.replace("/postgres?", f"/{name}?").replace("postgresql://", "postgresql+psycopg2://")
    query(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.integration
@pytest.mark.parametrize(("coordinator", "launched"), [
    ("dagster._core.run_coordinator:QueuedRunCoordinator", 2),  # Dagster 1.13.27: both start at once
    ("bronze_assets.instance:PoolQueuedRunCoordinator", 1),
])
def test_first_two_runs_of_a_new_pool_do_not_start_together(
    dagster_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coordinator: str, launched: int,
) -> None:
    from dagster._core.remote_origin import (
        RegisteredCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.run_coordinator import SubmitRunContext
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    profile = yaml.safe_load(PRODUCTION.read_text())
    module, cls = coordinator.split(":")
    profile["run_coordinator"] = {"module": module, "class": cls}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url)

    @dg.asset(pool="bz_new_table")
    def bz_new_table() -> None: ...

    defs = dg.Definitions(assets=[bz_new_table], jobs=[dg.define_asset_job("load", "*")])
    job = defs.resolve_job_def("load")
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("tests"), "__repository__"),
                             "load")  # a queued run names the code location it will launch from
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        for _ in range(2):  # two ticks of a new table, queued before the daemon's next pass
            run = instance.create_run_for_job(job, remote_job_origin=origin)
            instance.run_coordinator.submit_run(SubmitRunContext(run, workspace=None))
        assert [r.status for r in instance.get_runs()] == [dg.DagsterRunStatus.QUEUED] * 2
        dequeue = QueuedRunCoordinatorDaemon(interval_seconds=5)._get_runs_to_dequeue(
            instance, instance.get_concurrency_config(), fixed_iteration_time=None)
        assert len(dequeue) == launched


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the daemon's process group (daemon, code server, run workers), SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the run's worker process, from the run's "Started process for run" event."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        found = re.search(r"Started process for run \(pid: (\d+)\)", entry.message or "")
        if found:
            return int(found.group(1))
    return None


def _kill_tree(pid: int) -> None:
    """SIGKILL a run worker and its step processes, as when its machine or container is lost."""
    worker = psutil.Process(pid)
    for proc in [*worker.children(recursive=True), worker]:
        proc.kill()


def _waiting_on(dsn: str, table: str) -> int:
    """How many sessions wait for a lock on ``table``."""
    sql = f"SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = '{table}'::regclass"
    return query(dsn, sql)[0][0]


def _materialized(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return [r.event_log_entry.asset_materialization.asset_key.to_user_string() for r in records]


def _rows(table: str) -> int:
    dt = BronzeStorage().storage().open(table)
    return 0 if dt is None else dt.to_pyarrow_dataset().count_rows()


@pytest.mark.integration
@pytest.mark.slow
def test_daemon_ticks_schedule_and_sensor_one_run_per_table_retries_only_lost_runs(
    fresh_dsn: str, dagster_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed_source(fresh_dsn, SeedOptions(scale=0.01, as_of=AS_OF))
    query(fresh_dsn, "DROP TABLE tests.returns")  # the bz_returns run fails: an asset failure
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PRODUCTION, home / "dagster.yaml")
    for name, value in {"DAGSTER_HOME": str(home), "DAGSTER_PG_URL": dagster_pg_url,
                        "BRONZE_SOURCE_DSN": fresh_dsn, "BRONZE_SCHEDULES_RUNNING": "1",
                        "BRONZE_START_DATE": "2026-10-01"}.items():
        monkeypatch.setenv(name, value)
    # the bz_customers run blocks on this lock until the test has killed its worker
    lock = psycopg2.connect(fresh_dsn)
    lock.cursor().execute("LOCK TABLE tests.customers IN ACCESS EXCLUSIVE MODE")

    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m", daemon_defs.__name__],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    try:
        with dg.DagsterInstance.get() as instance:
            runs = _wait_for_runs(instance, fresh_dsn, lock, daemon, log, started)
            _check_runs(instance, fresh_dsn, runs)
    finally:
        _stop_group(daemon)
        if not lock.closed:
            lock.close()


def _wait_for_runs(instance: dg.DagsterInstance, dsn: str, lock: psycopg2.extensions.connection,
                   daemon: subprocess.Popen, log: Path, started: float) -> dict[str, dg.DagsterRun]:
    """Every run the test expects, finished, by name: ``scheduled``, the sensor's run keys and
    ``customers-retry``. Kills the bz_customers run's worker once it waits on the lock."""
    terminal = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
    runs: dict[str, dg.DagsterRun] = {}
    while True:
        runs = {}
        every = instance.get_runs()
        for run in every:
            if run.tags.get(RETRY_NUMBER_TAG):
                continue
            if run.tags.get(SCHEDULE_TAG) == daemon_defs.SCHEDULE:
                runs["scheduled"] = run
            elif run.tags.get(SENSOR_TAG) == daemon_defs.SENSOR:
                runs[run.tags[RUN_KEY_TAG]] = run
        names = {run.run_id: name for name, run in runs.items()}
        for run in every:
            if run.tags.get(RETRY_NUMBER_TAG):
                runs[f"{names.get(run.tags.get(PARENT_TAG, ''), run.run_id)}-retry"] = run
        customers = runs.get("customers")
        if not lock.closed and customers is not None:
            assert customers.status not in terminal, "the bz_customers run finished through the lock"
            pid = _worker_pid(instance, customers.run_id)
            blocked = pid and _waiting_on(dsn, "tests.customers")
            if customers.status is dg.DagsterRunStatus.STARTED and blocked:
                _kill_tree(pid)
                lock.rollback()
                lock.close()
        expected = ["scheduled", *daemon_defs.SENSOR_RUNS, "customers-retry"]
        if all(name in runs and runs[name].status in terminal for name in expected):
            return runs
        failed = [n for n in ("scheduled", "suppliers-1", "suppliers-2", "customers-retry")
                  if n in runs and runs[n].status in terminal - {dg.DagsterRunStatus.SUCCESS}]
        elapsed = time.monotonic() - started
        if failed or daemon.poll() is not None or elapsed > DEADLINE_SECONDS:
            seen = {n: r.status.value for n, r in runs.items()}
            reason = (f"runs failed: {failed}" if failed else "dagster-daemon exited" if daemon.poll()
                      is not None else f"not all runs finished within {DEADLINE_SECONDS} s")
            pytest.fail(f"{reason} after {elapsed:.0f} s; runs seen: {seen}; expected: {expected}\n"
                        f"daemon log (tail):\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(1)


def _check_runs(instance: dg.DagsterInstance, dsn: str, runs: dict[str, dg.DagsterRun]) -> None:
    ok = dg.DagsterRunStatus.SUCCESS
    # the schedule ticked its real job, with the scheduled-run tags, and loaded every source row
    scheduled = runs["scheduled"]
    assert scheduled.status is ok and scheduled.tags["bronze/changes_only"] == "true"
    assert _materialized(instance, scheduled.run_id) == ["bz_warehouses"]
    assert _rows("bz_warehouses") == query(dsn, "SELECT count(*) FROM tests.warehouses")[0][0]
    # the sensor's runs materialized their table
    for name in ("suppliers-1", "suppliers-2"):
        assert runs[name].status is ok, name
        assert _materialized(instance, runs[name].run_id) == ["bz_suppliers"], name
    assert _rows("bz_suppliers") == query(dsn, "SELECT count(*) FROM tests.suppliers")[0][0]

    records = {name: instance.get_run_record_by_id(run.run_id) for name, run in runs.items()}
    launched = {name: instance.get_run_stats(run.run_id).launch_time for name, run in runs.items()}
    t0 = min(r.create_timestamp.timestamp() for r in records.values())
    print("run: queued / launched / started / ended, seconds")  # shown when an assertion below fails
    for name, r in sorted(records.items(), key=lambda item: item[1].create_timestamp):
        times = (r.create_timestamp.timestamp(), launched[name], r.start_time, r.end_time)
        print(f"  {name:16}" + "".join(f"{(t or t0) - t0:7.1f}" for t in times))
    # two runs of one table, queued in one tick: the second left the queue once the first ended
    first, second = sorted(("suppliers-1", "suppliers-2"), key=lambda n: records[n].start_time)
    assert records[second].create_timestamp.timestamp() < records[first].end_time, "both were queued"
    assert launched[second] >= records[first].end_time, "the second run of bz_suppliers left the queue early"
    assert records[second].start_time >= records[first].end_time, "two runs of bz_suppliers overlapped"
    # ... while the run of another table, queued with them, was not held back
    assert launched["customers"] < records[first].end_time, "bz_customers waited for bz_suppliers"

    # an asset failure (the source table is gone) is not re-run by run retries
    returns = runs["returns"]
    assert returns.status is dg.DagsterRunStatus.FAILURE
    assert returns.tags[FAILURE_REASON_TAG] == "STEP_FAILURE" and returns.tags[WILL_RETRY_TAG] == "false"
    assert not [r for r in instance.get_runs() if r.tags.get(PARENT_TAG) == returns.run_id]
    # a lost run (its worker killed) is re-run, and the retry loads the table
    customers, retry = runs["customers"], runs["customers-retry"]
    assert customers.status is dg.DagsterRunStatus.FAILURE and customers.tags[WILL_RETRY_TAG] == "true"
    assert customers.tags.get(FAILURE_REASON_TAG) != "STEP_FAILURE"
    assert retry.tags[PARENT_TAG] == customers.run_id and retry.tags[RETRY_NUMBER_TAG] == "1"
    assert retry.status is ok and _materialized(instance, retry.run_id) == ["bz_customers"]
    assert _rows("bz_customers") == query(dsn, "SELECT count(*) FROM tests.customers")[0][0]
