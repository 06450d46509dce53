"""One failure policy (lib/failures.py): a permanent error fails once, in one line, on every entry
point; a transient one is retried. Real errors from the test PostgreSQL wherever one can be had."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg2
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.pipes import BronzePipes
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib import failures
from bronze_assets.lib.delta.control import AUDIT_LOG
from bronze_assets.lib.failures import Cause, cause_of, classify
from bronze_assets.lib.load import SourceTableMissingError, extract_and_stage
from bronze_assets.lib.source.dsn import with_connect_timeout
from bronze_assets.lib.source.embedded import EmbeddedPostgres
from bronze_assets.lib.source.extract import SourceReader
from bronze_assets.lib.source.postgres import SourceConnectionError, connect
from bronze_assets.lib.spark.jdbc import jdbc_options
from bronze_assets_tests.bronze_helpers import Bronze, interrupt_while_locked
from bronze_assets_tests.conftest import AS_OF, SeedDb, query
from bronze_assets_tests.s3 import S3, free_port, wait_for_port

pytestmark = pytest.mark.integration

PASSWORD = "right-pw-7f3a"
WRONG = "wrong-pw-9c1e"


def _error(dsn: str, sql: str) -> Exception:
    """The error the server raises for ``sql`` (through ADBC, as the loads read)."""
    with connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        try:
            cur.execute(sql)
        except Exception as exc:
            return exc
    raise AssertionError(f"{sql} did not fail")


def _psycopg2_error(dsn: str, sql: str) -> Exception:
    """The same through psycopg2 (the replication connections)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    except Exception as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"{sql} did not fail")


def test_every_class_the_policy_names_exists() -> None:
    """The classifier matches bronze's own errors by name: a rename must not silently drop one."""
    for name in [*failures._OWN, *failures._WRAPPERS]:
        module, _, cls = name.rpartition(".")
        if module.startswith("bronze_assets.lib.spark"):
            pytest.importorskip("pyspark")
        assert isinstance(getattr(importlib.import_module(module), cls), type), name


def test_real_server_errors_are_classified(seed_db: SeedDb, tmp_path: Path) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    role = f"r_{uuid.uuid4().hex[:8]}"
    query(fresh_dsn, f"CREATE ROLE {role} LOGIN")
    try:
        as_role = fresh_dsn.replace("postgresql://postgres:@", f"postgresql://{role}:@", 1)
        cases = [
            (_error(as_role, "SELECT * FROM tests.products"), Cause.PERMISSION,
             "permission denied for schema tests"),
            (_error(fresh_dsn, "SELECT * FROM tests.nope"), Cause.MISSING_OBJECT,
             'relation "tests.nope" does not'),
            (_error(fresh_dsn, "INSERT INTO tests.warehouses SELECT * FROM tests.warehouses LIMIT 1"),
             Cause.DUPLICATE_KEY, "duplicate key value"),
            (_error(fresh_dsn, "SELECT nope FROM tests.products"), Cause.SCHEMA_MISMATCH, "nope"),
            (_error(fresh_dsn, "SELEC 1"), Cause.BUG, "syntax error"),
            (_psycopg2_error(as_role, "SELECT * FROM tests.products"), Cause.PERMISSION, "permission denied"),
            (_psycopg2_error(fresh_dsn, "SELECT 1/0"), Cause.BUG, "division by zero"),
        ]
    finally:
        query(fresh_dsn, f"DROP ROLE {role}")
    for exc, cause, text in cases:
        got = classify(exc, "bz_products", fresh_dsn)
        assert got.cause is cause, (exc, got)
        assert got.message.startswith("bz_products: ") and "\n" not in got.message, got
        assert text in got.message, got
        assert got.retry is cause.retry
        if cause is not Cause.BUG:  # a message that travels as text (the Spark job's log) keeps its cause
            assert cause_of(RuntimeError(got.message))[0] is cause, got.message

    # a connection the server ended in the middle of a session: retried
    with SourceReader(fresh_dsn, CONTRACTS["products"], parallelism=1) as reader:
        (pid,) = reader.query("SELECT pg_backend_pid()")[0]
        query(fresh_dsn, f"SELECT pg_terminate_backend({pid})")
        with pytest.raises(Exception) as info:  # whichever driver error it is
            reader.query("SELECT 1")
    assert classify(info.value, "bz_products").cause is Cause.CONNECTION

    # bronze's own errors keep their message (it names the fix), with the table in front
    query(fresh_dsn, "DROP TABLE tests.returns")
    with pytest.raises(SourceTableMissingError) as missing:
        extract_and_stage(CONTRACTS["returns"], fresh_dsn, tmp_path)
    got = classify(missing.value, "bz_returns")
    assert got.cause is Cause.MISSING_OBJECT and not got.retry and "bronze ddl" in got.message


def test_connection_errors_name_the_cause_and_never_the_password(tmp_path: Path) -> None:
    refused = f"postgresql://loader:{PASSWORD}@/DE?host={tmp_path}&port=5999"  # no server on that socket
    with pytest.raises(SourceConnectionError) as info:
        connect(refused)
    got = classify(info.value, "bz_orders", refused)
    assert got.cause is Cause.CONNECTION and got.retry
    assert PASSWORD not in got.message and "running" in got.message

    unknown_host = "postgresql://loader@no-such-host.invalid/DE"
    with pytest.raises(SourceConnectionError) as info:
        connect(unknown_host)
    assert classify(info.value, "bz_orders").cause is Cause.CONFIGURATION


@pytest.mark.parametrize(("text", "cause"), [
    # pgjdbc, as Spark's JDBC read raises it (Py4JJavaError text)
    ("py4j.protocol.Py4JJavaError: An error occurred while calling o72.load.\n: org.postgresql.util."
     "PSQLException: FATAL: password authentication failed for user \"loader\"\n\tat org.postgresql.core",
     Cause.AUTHENTICATION),
    ("org.postgresql.util.PSQLException: ERROR: permission denied for schema tests\n  Position: 15",
     Cause.PERMISSION),
    ("org.postgresql.util.PSQLException: Connection to db.example:5432 refused. Check that the hostname and "
     "port are correct and that the postmaster is accepting TCP/IP connections.", Cause.CONNECTION),
    ("org.postgresql.util.PSQLException: An I/O error occurred while sending to the backend.",
     Cause.CONNECTION),
    ("org.postgresql.util.PSQLException: ERROR: could not serialize access due to concurrent update",
     Cause.CONFLICT),
    ("org.postgresql.util.PSQLException: ERROR: deadlock detected", Cause.CONFLICT),
    ("org.postgresql.util.PSQLException: ERROR: canceling statement due to lock timeout", Cause.CONFLICT),
    # delta-rs / object_store
    ("Kernel error -> Operation not supported ↳ an error occurred while loading credentials ↳ failed to load "
     "IMDS session token", Cause.AUTHENTICATION),
    ("Generic S3 error: Error performing GET http://127.0.0.1:9/b/x after 10 retries: error sending request",
     Cause.STORAGE),
    ("Generic S3 error: Client error with status 403 Forbidden: <Code>AccessDenied</Code>",
     Cause.AUTHENTICATION),
    ("Generic S3 error: Received redirect without LOCATION, this normally indicates an incorrectly "
     "configured region: NoSuchBucket", Cause.MISSING_OBJECT),
    ("Generic S3 error: Server returned non-2xx status code: 503 Service Unavailable: SlowDown",
     Cause.STORAGE),
    ("something nobody has seen before", Cause.UNKNOWN),
    # Spark's text of a task failure numbers tasks and stages: a 503 there is no HTTP status
    ("org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 503.0 failed 1 "
     "times, most recent failure: Lost task 0.0 in stage 503.0 (TID 429) (localhost executor driver): "
     "org.postgresql.util.PSQLException: ERROR: the ledger is closed", Cause.UNKNOWN),
])
def test_driver_texts_we_cannot_produce_here(text: str, cause: Cause) -> None:
    """Spark's JDBC and cloud object stores: the texts those drivers print (no JVM, no cloud here)."""
    got = classify(OSError(text), "bz_orders")
    assert got.cause is cause and got.retry is cause.retry and "\n" not in got.message


def test_bugs_and_interrupts() -> None:
    assert classify(TypeError("unsupported operand"), "bz_orders").cause is Cause.BUG
    assert not Cause.BUG.retry and not Cause.INTERRUPTED.retry
    assert cause_of(KeyboardInterrupt())[0] is Cause.INTERRUPTED
    assert cause_of(dg.DagsterExecutionInterruptedError())[0] is Cause.INTERRUPTED
    cancelled = classify(OSError("ERROR: canceling statement due to user request (SQLSTATE 57014)"),
                         "bz_orders")
    assert cancelled.cause is Cause.INTERRUPTED and cancelled.sqlstate is None  # the user's, not the server's
    with pytest.raises(failures.LoadInterrupted), failures.failure_policy("bz_orders"):
        raise KeyboardInterrupt
    with pytest.raises(dg.Failure) as info, failures.failure_policy("bz_orders"):
        raise ConnectionResetError(104, "Connection reset by peer")
    assert info.value.allow_retries and info.value.description.startswith("bz_orders: connection:")


def test_an_error_is_worked_out_once_however_often_it_is_classified(fresh_dsn: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The lifecycle's audit, the Spark job and the failure policy each classify the same error: its
    chain (on Spark, JVM calls through py4j) is walked once, and every answer is the same."""
    exc = _error(fresh_dsn, "SELECT * FROM no_such_table_here")
    walks: list[BaseException] = []
    sqlstate = failures._sqlstate
    monkeypatch.setattr(failures, "_sqlstate", lambda e: walks.append(e) or sqlstate(e))
    audited = classify(exc, "bz_orders", fresh_dsn)  # as the lifecycle audits it
    with pytest.raises(dg.Failure) as info, failures.failure_policy("bz_orders", fresh_dsn):
        raise exc
    assert walks == [exc]
    assert audited.cause is Cause.MISSING_OBJECT and audited.sqlstate == "42P01"
    assert info.value.description == audited.message and not info.value.allow_retries
    assert classify(exc, "bz_orders", fresh_dsn) == audited and cause_of(exc) == (Cause.MISSING_OBJECT, None)


# ------------------------------------------------------------------ on the asset (dagster's retries)


@pytest.fixture
def password_role(pg_server: EmbeddedPostgres, fresh_dsn: str) -> Iterator[str]:
    """A role that must give its password (scram-sha-256, as a real server asks), with no grant."""
    name = f"loader_{uuid.uuid4().hex[:8]}"
    hba = pg_server.pgdata / "pg_hba.conf"
    line = f"local all {name} scram-sha-256\n"
    query(fresh_dsn, f"CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}'")
    hba.write_text(line + hba.read_text())  # first match wins: before the server's "trust" lines
    query(fresh_dsn, "SELECT pg_reload_conf()")
    try:
        yield name
    finally:
        hba.write_text(hba.read_text().replace(line, ""))
        query(fresh_dsn, "SELECT pg_reload_conf()")
        query(fresh_dsn, f"DROP ROLE {name}")


def _steps(result: dg.ExecuteInProcessResult) -> list[str]:
    return [e.event_type_value for e in result.all_events
            if e.event_type_value in ("STEP_START", "STEP_RESTARTED", "STEP_UP_FOR_RETRY", "STEP_FAILURE",
                                      "STEP_SUCCESS")]


@pytest.mark.parametrize("password", [WRONG, PASSWORD], ids=["wrong-password", "no-grant"])
def test_a_permanent_error_fails_once_in_one_line(seed_db: SeedDb, tmp_path: Path, password_role: str,
                                                 password: str) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    dsn = fresh_dsn.replace("postgresql://postgres:@", f"postgresql://{password_role}:{password}@", 1)
    b = Bronze(dsn, tmp_path / "bronze")
    started = time.perf_counter()
    result = dg.materialize([b.assets["bz_products"]], resources=b.resources, raise_on_error=False)
    seconds = time.perf_counter() - started
    assert _steps(result) == ["STEP_START", "STEP_FAILURE"], "never retried"
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert "\n" not in message and message.startswith("bz_products: ")
    if password == WRONG:
        assert f'password authentication failed for user "{password_role}"' in message
        assert "BRONZE_SOURCE_DSN" in message and WRONG not in message and PASSWORD not in message
    else:
        assert "permission denied for schema tests" in message and "GRANT USAGE ON SCHEMA tests" in message
    assert seconds < 30, "no retry delays"


def test_a_dropped_connection_is_retried(seed_db: SeedDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        quick_retries: None) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    original, dropped = SourceReader.__enter__, []

    def enter_then_lose_the_connection(self: SourceReader) -> SourceReader:  # fault: the server ends it
        reader = original(self)
        if not dropped:
            (pid,) = reader.query("SELECT pg_backend_pid()")[0]
            query(fresh_dsn, f"SELECT pg_terminate_backend({pid})")
            dropped.append(pid)
        return reader

    monkeypatch.setattr(SourceReader, "__enter__", enter_then_lose_the_connection)
    b = Bronze(fresh_dsn, tmp_path / "bronze")
    result = dg.materialize([b.assets["bz_products"]], resources=b.resources, raise_on_error=False)
    assert dropped and result.success
    assert _steps(result) == ["STEP_START", "STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_SUCCESS"]
    (retry,) = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert "bz_products: connection:" in str(retry.event_specific_data.error.cause.message)
    assert b.read("products").height == query(fresh_dsn, "SELECT count(*) FROM tests.products")[0][0]


# ------------------------------------------------------------------ connect_timeout


def test_every_source_connection_gets_a_connect_timeout(tmp_path: Path) -> None:
    assert with_connect_timeout("postgresql://u@h/db") == "postgresql://u@h/db?connect_timeout=10"
    assert with_connect_timeout("postgresql://u@h/db?sslmode=require") == \
        "postgresql://u@h/db?sslmode=require&connect_timeout=10"
    assert with_connect_timeout("postgresql://u@h/db?connect_timeout=3") == "postgresql://u@h/db?connect_timeout=3"
    assert with_connect_timeout("host=h dbname=db") == "host=h dbname=db connect_timeout=10"
    assert with_connect_timeout("host=h connect_timeout=3") == "host=h connect_timeout=3"
    options = jdbc_options("postgresql://u:p@h/db")
    assert options["connectTimeout"] == options["loginTimeout"] == "10"
    assert jdbc_options("postgresql://u:p@h/db?connect_timeout=4")["connectTimeout"] == "4"

    # a server that accepts the connection and never answers (a black-holed port answers no better)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True)
    accepting.start()
    port = silent.getsockname()[1]
    started = time.perf_counter()
    try:
        with pytest.raises(SourceConnectionError) as info:
            connect(f"postgresql://loader:{PASSWORD}@127.0.0.1:{port}/DE")  # no connect_timeout: bronze's
    finally:
        silent.close()
        for conn in held:
            conn.close()
    seconds = time.perf_counter() - started
    assert 9 <= seconds < 20, seconds
    assert classify(info.value, "bz_orders").cause is Cause.CONNECTION and PASSWORD not in str(info.value)


# ------------------------------------------------------------------ bronze seed


def test_seed_as_a_role_that_may_not_create_says_so_in_one_line(fresh_dsn: str) -> None:
    role = f"r_{uuid.uuid4().hex[:8]}"
    query(fresh_dsn, f"CREATE ROLE {role} LOGIN")  # CONNECT (as PUBLIC), no CREATE on the database
    try:
        dsn = fresh_dsn.replace("postgresql://postgres:@", f"postgresql://{role}:@", 1)
        result = CliRunner().invoke(main, ["seed", "--scale", "0", "--dsn", dsn])
    finally:
        query(fresh_dsn, f"DROP ROLE {role}")
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: cannot seed host=") and f"user={role}" in line
    assert "permission denied for database" in line and "owner" in line and "Traceback" not in line
    assert query(fresh_dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'tests'")[0][0] == 0


# ------------------------------------------------------------------ the Spark engine (Pipes)


@pytest.mark.xdist_group("spark_pipes")
def test_the_spark_job_uses_the_same_policy(seed_db: SeedDb, tmp_path: Path, password_role: str,
                                            spark_pipes: BronzePipes) -> None:
    """The Spark job classifies with lib/failures and reports its retry flag over Pipes: a wrong
    password fails the asset once, with the same line as the local engine."""
    from bronze_assets_tests.test_spark_pipes import materialize

    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    dsn = fresh_dsn.replace("postgresql://postgres:@", f"postgresql://{password_role}:{WRONG}@", 1)
    spark = materialize(dsn, tmp_path / "spark", "spark", "products", pipes=spark_pipes)
    local = materialize(dsn, tmp_path / "local", "local", "products")
    for result in (spark, local):
        assert _steps(result) == ["STEP_START", "STEP_FAILURE"], "never retried"
    (spark_failure,), (local_failure,) = ([e for e in r.all_events if e.is_step_failure]
                                          for r in (spark, local))
    message = spark_failure.step_failure_data.user_failure_data.description
    assert message == local_failure.step_failure_data.user_failure_data.description
    assert "\n" not in message and f'password authentication failed for user "{password_role}"' in message
    assert WRONG not in message


# ------------------------------------------------------------------ every failure class on both engines


def _revoke_select(dsn: str, role: str) -> None:
    query(dsn, f"GRANT USAGE ON SCHEMA tests TO {role}")
    query(dsn, f"GRANT SELECT ON ALL TABLES IN SCHEMA tests TO {role}")
    query(dsn, f"REVOKE SELECT ON tests.warehouses FROM {role}")


def _repeat_a_key(dsn: str, _: str) -> None:
    query(dsn, "ALTER TABLE tests.warehouses DROP CONSTRAINT warehouses_pkey CASCADE")
    query(dsn, "INSERT INTO tests.warehouses SELECT * FROM tests.warehouses ORDER BY warehouse_id LIMIT 1")


def _refuse_connections(dsn: str, role: str) -> None:
    query(dsn, f"GRANT USAGE ON SCHEMA tests TO {role}")
    query(dsn, f"GRANT SELECT ON ALL TABLES IN SCHEMA tests TO {role}")
    query(dsn, f"ALTER ROLE {role} CONNECTION LIMIT 0")  # the server refuses it: too many connections


def _row_policy(expression: str) -> Callable[[str, str], None]:
    """The role reads tests.warehouses through a row security policy that evaluates
    ``expression`` on every row (the server raises its error in the middle of the read)."""

    def provoke(dsn: str, role: str) -> None:
        query(dsn, f"GRANT USAGE ON SCHEMA tests TO {role}")
        query(dsn, f"GRANT SELECT ON ALL TABLES IN SCHEMA tests TO {role}")
        query(dsn, "CREATE FUNCTION tests.ledger_closed(bigint) RETURNS boolean LANGUAGE plpgsql AS $$ "
                   "BEGIN RAISE EXCEPTION USING MESSAGE = 'the ledger is closed', ERRCODE = 'P0001'; END $$")
        query(dsn, "ALTER TABLE tests.warehouses ENABLE ROW LEVEL SECURITY")
        query(dsn, f"CREATE POLICY provoke ON tests.warehouses FOR SELECT TO {role} USING ({expression})")

    return provoke


def _hold_a_lock(dsn: str, role: str) -> Callable[[], None]:
    """Another session holds bz_warehouses' source table (ACCESS EXCLUSIVE) while the role, which
    waits 200 ms for a lock, reads it; returns what releases the lock."""
    query(dsn, f"GRANT USAGE ON SCHEMA tests TO {role}")
    query(dsn, f"GRANT SELECT ON ALL TABLES IN SCHEMA tests TO {role}")
    query(dsn, f"ALTER ROLE {role} SET lock_timeout = '200ms'")
    holder = psycopg2.connect(dsn)
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE tests.warehouses IN ACCESS EXCLUSIVE MODE")  # until the transaction ends
    return holder.close


ONCE = ["STEP_START", "STEP_FAILURE"]
RETRIED = ["STEP_START", *["STEP_UP_FOR_RETRY", "STEP_RESTARTED"] * 3, "STEP_FAILURE"]  # RETRY: 3 retries


@dataclass(frozen=True)
class Provoked:
    """A failure class provoked for real on bz_warehouses: what to do to the source database, the
    password the load logs in with as the test role (None: as the owner), what the message says."""

    cause: Cause
    provoke: Callable[[str, str], object]  # may return what undoes it (called after both runs)
    password: str | None
    says: str
    host: str | None = None  # the host the load connects to, None: the test server

    def dsn(self, owner_dsn: str, role: str) -> str:
        if self.host is not None:
            return f"postgresql://{role}:{PASSWORD}@{self.host}/DE"
        if self.password is None:
            return owner_dsn
        return owner_dsn.replace("postgresql://postgres:@", f"postgresql://{role}:{self.password}@", 1)

    @property
    def steps(self) -> list[str]:
        return RETRIED if self.cause.retry else ONCE


CLASSES = {
    "authentication": Provoked(Cause.AUTHENTICATION, lambda dsn, role: None, WRONG,
                               "password authentication failed"),
    "permission": Provoked(Cause.PERMISSION, _revoke_select, PASSWORD,
                           "permission denied for table warehouses"),
    "missing-object": Provoked(Cause.MISSING_OBJECT, lambda dsn, _: query(
        dsn, "DROP TABLE tests.warehouses CASCADE"), None, "the source has no table tests.warehouses"),
    "schema-mismatch": Provoked(Cause.SCHEMA_MISMATCH, lambda dsn, _: query(
        dsn, "ALTER TABLE tests.warehouses DROP COLUMN capacity"), None, "no longer matches its contract"),
    "duplicate-key": Provoked(Cause.DUPLICATE_KEY, _repeat_a_key, None, "repeats primary key values"),
    "connection": Provoked(Cause.CONNECTION, _refuse_connections, PASSWORD, "too many connections"),
    "configuration": Provoked(Cause.CONFIGURATION, lambda dsn, _: None, PASSWORD,
                              "could not translate host name", host="no-such-host.invalid"),
    "conflict": Provoked(Cause.CONFLICT, _hold_a_lock, PASSWORD, "lock timeout"),
    # a data exception (SQLSTATE class 22) in a row: the same code on the same data fails again.
    # The local engine meets it as ADBC's DataError, Spark as a Py4JJavaError around pgjdbc's
    # PSQLException: the message and audit row say the server's words and SQLSTATE on both, the
    # exception's type is the audit row's details.error_type (README, 'When a load fails')
    "bug": Provoked(Cause.BUG, _row_policy("capacity / (warehouse_id - warehouse_id) > 0"), PASSWORD,
                    "bug: division by zero (SQLSTATE 22012)"),
    # an error no rule knows (a source function's own RAISE, SQLSTATE P0001): retried
    "unknown": Provoked(Cause.UNKNOWN, _row_policy("tests.ledger_closed(warehouse_id)"), PASSWORD,
                        "unknown: the ledger is closed (SQLSTATE P0001)"),
}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _same_each_run(value: Any) -> Any:
    """``value`` without what differs per run (batch ids)."""
    return _UUID.sub("<batch>", value) if isinstance(value, str) else value


def _failed_loads(root: Path | str, engine: str, cause: Cause) -> list[dict[str, Any]]:
    """The audit rows of the failed loads, without their times and run ids, and without what
    their details say of the engine (checked here: its name and the exception's type)."""
    audit = DeltaTable(f"{root}/{AUDIT_LOG}").to_pyarrow_table().to_pylist()
    per_run = ("start_timestamp", "end_timestamp", "job_id")
    rows = []
    for row in sorted(audit, key=lambda r: r["start_timestamp"]):
        details = json.loads(row["details"])
        assert details.pop("engine") == engine and details.pop("error_type"), (engine, details)
        assert (details["failure_class"], details["retry"]) == (cause.value, cause.retry), details
        rows.append({k: _same_each_run(v) for k, v in row.items() if k not in per_run} | {"details": details})
    return rows


def _failed_run(dsn: str, root: Path | str, engine: str, case: Provoked, pipes: BronzePipes | None = None,
                ) -> tuple[str, dict[str, Any], list]:
    """Materialize bz_warehouses on ``engine``: the failure's message and metadata and the audit
    rows, without what differs per run; the steps show the retry decision."""
    from bronze_assets_tests.test_spark_pipes import materialize

    result = materialize(dsn, root, engine, "warehouses", pipes=pipes)  # type: ignore[arg-type]
    assert _steps(result) == case.steps, engine
    failure = [e for e in result.all_events if e.is_step_failure][-1].step_failure_data.user_failure_data
    assert failure is not None, engine
    message = failure.description or ""
    assert message.startswith("bz_warehouses: ") and "\n" not in message and case.says in message, message
    assert WRONG not in message and PASSWORD not in message
    audit = _failed_loads(root, engine, case.cause)
    attempts = sum(s in ("STEP_START", "STEP_RESTARTED") for s in case.steps)
    assert [r["status"] for r in audit] == ["FAILED"] * attempts, engine
    # the line, after "MERGE failed: " when the MERGE raised it
    assert all(r["error_message"].endswith(_same_each_run(message)) for r in audit), engine
    metadata = {k: _same_each_run(getattr(v, "value", v)) for k, v in (failure.metadata or {}).items()}
    return _same_each_run(message), metadata, audit


@pytest.mark.xdist_group("spark_pipes")
@pytest.mark.parametrize("name", list(CLASSES))
def test_each_failure_class_is_the_same_on_both_engines(name: str, seed_db: SeedDb, tmp_path: Path,
                                                         password_role: str, spark_pipes: BronzePipes,
                                                         quick_retries: None) -> None:
    """Each failure class, provoked for real, leaves the same audit rows (status, message, failure
    class, retry flag, SQLSTATE), the same failure (message, metadata) and the same retry decision
    on the local engine and on Spark (subprocess Pipes). ``storage`` and ``interrupted``: below."""
    case = CLASSES[name]
    owner_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    undo = case.provoke(owner_dsn, password_role)
    dsn = case.dsn(owner_dsn, password_role)
    try:
        local = _failed_run(dsn, tmp_path / "local", "local", case)
        spark = _failed_run(dsn, tmp_path / "spark", "spark", case, spark_pipes)
    finally:  # the role's grants in this database, so that the role can be dropped
        if callable(undo):
            undo()
        query(owner_dsn, f"DROP OWNED BY {password_role}")
    assert spark == local


@pytest.mark.xdist_group("spark_pipes")
def test_a_throttled_store_is_the_same_storage_failure_on_both_engines(
        seed_db: SeedDb, s3: S3, tmp_path: Path, spark_pipes: BronzePipes,
        monkeypatch: pytest.MonkeyPatch, quick_retries: None) -> None:
    """``storage``: the object store answers bz_warehouses' prefix 503 SlowDown (a proxy in front of
    the test S3 server, as S3 answers a prefix over its request rate); the audit log, elsewhere in
    the bucket, stays writable. Both engines open the table's log with delta-rs (the lifecycle
    reads its commit log before the engine runs), retry it three times and audit four FAILED rows."""
    dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    port = free_port()
    proxy = subprocess.Popen([sys.executable, "-m", "bronze_assets_tests.store_proxy", "--port", str(port),
                              "--upstream", s3.endpoint, "--throttle", r"bz_warehouses(/|%2F|$)"])
    case = Provoked(Cause.STORAGE, lambda dsn, _: None, None, "storage: ")
    try:
        wait_for_port(proxy, port, "the store proxy")
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        local = _failed_run(dsn, f"{s3.root}/local", "local", case)
        spark = _failed_run(dsn, f"{s3.root}/spark", "spark", case, spark_pipes)
    finally:
        proxy.kill()
        proxy.wait()
    assert "503 Service Unavailable ↳ SlowDown: Please reduce your request rate" in local[0], local[0]
    root = "<root>/"
    assert _replaced(spark, f"{s3.root}/spark/", root) == _replaced(local, f"{s3.root}/local/", root)


def _replaced(value: Any, old: str, new: str) -> Any:
    """``value`` (strings in tuples, lists, dicts) with ``old`` replaced by ``new`` (bronze roots
    in a message that names an object's URL)."""
    if isinstance(value, str):
        return value.replace(old.split("://", 1)[1], new)
    if isinstance(value, (list, tuple)):
        return type(value)(_replaced(v, old, new) for v in value)
    if isinstance(value, dict):
        return {k: _replaced(v, old, new) for k, v in value.items()}
    return value


def _interrupt_when_blocked(dsn: str, role: str, release: Callable[[], None], done: threading.Event) -> None:
    """Once a session of ``role`` waits for the lock on tests.warehouses: SIGINT to this process
    (Ctrl-C: the orchestrator's, which the Spark engine's Pipes client forwards to its job), then
    the lock is released; the lock is released in any case."""
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not done.is_set():
            waiting = query(dsn, f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}' "
                                 "AND wait_event_type = 'Lock'")[0][0]
            if waiting:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(3)  # the interrupt reaches the load (and the job) while it is still blocked
                return
            time.sleep(0.2)
    finally:
        release()


def _interrupted_run(dsn: str, owner_dsn: str, role: str, root: Path, engine: str,
                     pipes: BronzePipes | None = None) -> tuple[list[str], str, list]:
    from bronze_assets_tests.test_spark_pipes import materialize

    holder = psycopg2.connect(owner_dsn)
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE tests.warehouses IN ACCESS EXCLUSIVE MODE")  # until the transaction ends
    done = threading.Event()
    watcher = threading.Thread(target=_interrupt_when_blocked, args=(owner_dsn, role, holder.close, done))
    watcher.start()
    try:
        result = materialize(dsn, root, engine, "warehouses", pipes=pipes)
    finally:
        done.set()
        watcher.join()
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message.strip()
    return _steps(result), message, _failed_loads(root, engine, Cause.INTERRUPTED)


@pytest.mark.xdist_group("spark_pipes")
def test_an_interrupt_is_the_same_on_both_engines(seed_db: SeedDb, tmp_path: Path, password_role: str,
                                                  spark_pipes: BronzePipes) -> None:
    """``interrupted``: a real SIGINT (Ctrl-C) while the load waits for a lock on its source table.
    Locally ADBC cancels the statement (SQLSTATE 57014, "due to user request"); on Spark, Dagster
    raises the interrupt in the asset, whose Pipes client forwards SIGINT to the job (PySpark
    cancels its Spark jobs, the lifecycle audits). Both: one FAILED row (interrupted, not retried),
    the step fails once, never retried, in the same line."""
    owner_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    query(owner_dsn, f"GRANT USAGE ON SCHEMA tests TO {password_role}")
    query(owner_dsn, f"GRANT SELECT ON ALL TABLES IN SCHEMA tests TO {password_role}")
    dsn = owner_dsn.replace("postgresql://postgres:@", f"postgresql://{password_role}:{PASSWORD}@", 1)
    try:
        local = _interrupted_run(dsn, owner_dsn, password_role, tmp_path / "local", "local")
        spark = _interrupted_run(dsn, owner_dsn, password_role, tmp_path / "spark", "spark", spark_pipes)
    finally:
        query(owner_dsn, f"DROP OWNED BY {password_role}")
    steps, message, audit = local
    assert steps == ONCE, "never retried"
    assert "bz_warehouses: interrupted — re-run to continue" in message
    assert [r["status"] for r in audit] == ["FAILED"]
    assert audit[0]["error_message"] == \
        "bz_warehouses: interrupted — re-run to continue; what was committed stays"
    assert spark == local


def test_an_interrupt_cancels_a_threaded_steps_blocked_source_statement(seed_db: SeedDb, tmp_path: Path,
                                                                        ) -> None:
    """``interrupted`` on the load jobs' threaded executor: a step thread never gets the Ctrl-C
    (Python delivers signals to the main thread), so the stop request cancels its source statement
    blocked on a lock (here its first, the table's size), as ADBC does on SIGINT in a main thread:
    the run ends while the lock is still held, the step failed as interrupted."""
    from bronze_assets.defs.resources import BronzeEngine, BronzeStorage, PostgresSource, build_resources

    dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    resources = build_resources(PostgresSource(dsn=dsn), BronzeStorage(root=str(tmp_path / "bronze")),
                                BronzeEngine(engine="local"), None)
    ended_before_release, result = interrupt_while_locked(dsn, resources)
    assert ended_before_release, "the step waited for the lock: its statement was never cancelled"
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "bz_warehouses: interrupted — re-run to continue" in failure.step_failure_data.error.message
