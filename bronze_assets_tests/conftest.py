"""Shared fixtures: one real embedded PostgreSQL per test worker, a fresh database per test, one
local Spark session per test worker."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.source.embedded import EmbeddedPostgres
from bronze_assets.lib.source.postgres import connect
from bronze_assets.settings import ENV_BRONZE_ROOT, ENV_DATA_DIR, ENV_SOURCE_DSN
from bronze_assets_tests.azurite import adls, adls_server  # noqa: F401 - fixtures: Azurite and a container
from bronze_assets_tests.s3 import s3, s3_server  # noqa: F401 - fixtures: a local S3 server and a bucket
from bronze_assets_tests.stores import any_store, local, store  # noqa: F401 - fixtures: each object store in turn (and a local folder)

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
SeedDb = Callable[[SeedOptions], str]  # the seed_db fixture: seed options -> DSN of a seeded database

# Every JVM the suite starts (the Spark session of a worker, the one of each Spark job run through
# Pipes, inherited by those subprocesses) is short-lived and reads tables of a few hundred rows:
# the client JIT compiler alone and the serial collector spend less CPU on it, and a Delta snapshot
# is rebuilt in 2 tasks instead of 50. Results do not depend on either (README "Performance").
TEST_SPARK_SUBMIT_ARGS = (
    '--conf "spark.driver.defaultJavaOptions=-XX:TieredStopAtLevel=1 -XX:+UseSerialGC" '
    "--conf spark.databricks.delta.snapshotPartitions=2 pyspark-shell")
os.environ.setdefault("PYSPARK_SUBMIT_ARGS", TEST_SPARK_SUBMIT_ARGS)
# the GX validation service the checks start ends a minute after the suite's last check, not 75
os.environ.setdefault("BRONZE_GX_SERVICE_IDLE_SECONDS", "60")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--dist loadgroup`` sends the tests of one ``xdist_group`` to one worker by suffixing their
    node ids with ``@<group>`` (pytest-xdist's own hook, which ran before this one). On pytest 9.2
    (structured node ids) that suffix is lost and every group is scattered over the workers
    (pytest-xdist#1386): set it on the structured id. Nothing to do where xdist's suffix took."""
    if not config.getoption("loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})
        suffix = "@" + "_".join(groups)
        if groups and not item.nodeid.endswith(suffix):
            item._id = NodeId.parse(item.nodeid + suffix)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads a developer's environment or writes into the working directory."""
    monkeypatch.delenv(ENV_SOURCE_DSN, raising=False)
    for name in ("KConnectionString", "KUser", "KPassword", "KPiiMasterKey", "BRONZE_KEY_VAULT_URL",
                 "DATABRICKS_RUNTIME_VERSION", "BRONZE_SMTP_HOST", "BRONZE_ALERT_WEBHOOK_URL",
                 "BRONZE_ENGINE", "BRONZE_ENGINE_TABLES", "BRONZE_DEPLOYMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "data"))
    monkeypatch.setenv(ENV_BRONZE_ROOT, str(tmp_path / "bronze"))


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Assets built in this test retry as often, with the same backoff and jitter, as the real
    ``RETRY`` policy, after 50 ms instead of 2 s: the test checks which failures are retried and
    how often, not how long Dagster sleeps in between (3 retries sleep 14 s per run)."""
    import dagster as dg

    from bronze_assets.defs import assets

    real = assets.RETRY
    monkeypatch.setattr(assets, "RETRY", dg.RetryPolicy(max_retries=real.max_retries, delay=0.05,
                                                          backoff=real.backoff, jitter=real.jitter))


@pytest.fixture(scope="session")
def spark() -> Any:
    """The local Spark session (one JVM) of this test worker, shared by every Spark test file;
    the Spark tests share one xdist group, so one worker starts it."""
    from bronze_assets.lib.spark.session import spark_session
    from bronze_assets.settings import Settings

    return spark_session(Settings.from_env(), "bronze_assets_tests")


@pytest.fixture(scope="session")
def spark_pipes(spark: Any) -> Any:
    """The ``pipes`` resource of the tests that run the Spark job through Dagster Pipes: the job's
    subprocess attaches to this worker's JVM (``spark``) instead of starting one (warm_spark.py)."""
    from bronze_assets_tests.warm_spark import WarmSparkPipes, serve

    serve(spark)
    return WarmSparkPipes()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pgdata")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """DSN of a new, empty database on the test server (dropped afterwards)."""
    admin = pg_server.start().replace(f"/{pg_server.database}?", "/postgres?")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with connect(admin, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield admin.replace("/postgres?", f"/{name}?")
    _drop(admin, name)


@pytest.fixture(scope="session")
def _seed_templates() -> dict[SeedOptions, str]:
    """Template databases seeded once per test session (per xdist worker), by seed options."""
    return {}


@pytest.fixture
def seed_db(pg_server: EmbeddedPostgres, _seed_templates: dict[SeedOptions, str]) -> Iterator[SeedDb]:
    """``seed_db(options)``: the DSN of a new database holding the seed of ``options``, cloned
    (``CREATE DATABASE … TEMPLATE``) from a database seeded once per session; dropped afterwards."""
    from bronze_assets.demo.seed import seed_source

    admin = pg_server.start().replace(f"/{pg_server.database}?", "/postgres?")
    made: list[str] = []

    def create(name: str, template: str | None = None) -> str:
        clause = f' TEMPLATE "{template}"' if template else ""
        with connect(admin, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"{clause}')
        return admin.replace("/postgres?", f"/{name}?")

    def seeded(options: SeedOptions) -> str:
        template = _seed_templates.get(options)
        if template is None:
            template = f"tmpl_{uuid.uuid4().hex[:12]}"
            seed_source(create(template), options)
            _seed_templates[options] = template
        name = f"t_{uuid.uuid4().hex[:12]}"
        made.append(name)
        return create(name, template)

    yield seeded
    for name in made:
        _drop(admin, name)


@pytest.fixture
def seeded(seed_db: SeedDb) -> str:
    """A database holding the scale-0.01 seed without defects (as of :data:`AS_OF`)."""
    return seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))


def _drop(admin: str, name: str) -> None:
    with connect(admin, autocommit=True) as conn, conn.cursor() as cur:
        # a database with a replication slot (log-based CDC) cannot be dropped before its slots
        cur.execute(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    f"WHERE database = '{name}'")
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(dsn: str, sql: str) -> list[tuple]:
    """Run one statement in its own committed transaction; rows if it returns any."""
    with connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall() if cur.description else []


@contextmanager
def sessions_opened(dsn: str) -> Iterator[Callable[[int], int]]:
    """Count the server sessions opened on ``dsn``'s database inside the block: the callable waits
    (up to 5 s; PostgreSQL counts a session as it ends) for ``expected`` more, then 0.5 s for any
    beyond them, and returns how many there were."""
    with connect(dsn, autocommit=True) as observer, observer.cursor() as cur:

        def sessions() -> int:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            return int(cur.fetchall()[0][0])

        sessions()  # the observer's own session is counted once it has run a statement
        before = sessions()

        def opened(expected: int) -> int:
            deadline = time.monotonic() + 5
            while sessions() < before + expected and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            return sessions() - before

        yield opened
