"""Dagster instance storage of ``make ui`` / ``make demo``: PostgreSQL, on the embedded server.

The production profile (``deploy/dagster.yaml``) keeps runs, events and schedules in a PostgreSQL
database named by ``$DAGSTER_PG_URL``. The local profile (the repository's ``dagster.yaml``) is the
same file except for its ``storage`` block, which names :class:`EmbeddedPostgresStorage`: Dagster's
own PostgreSQL storage (``dagster-postgres``) on a ``dagster`` database of the embedded server that
also hosts the demo source (``$BRONZE_DATA_DIR/pgdata``). Whichever process opens the instance
first (the webserver, the daemon, a run worker, ``bronze demo``, ``bronze status``) starts the
server; it stops when the last of them exits, as for the source.

Both profiles queue runs with :class:`PoolQueuedRunCoordinator`, Dagster's QueuedRunCoordinator
with one fix to how the queue meets a pool for the first time (one run per bronze table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster._check as check
from dagster import Field, StringSource
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage

DAGSTER_DATABASE = "dagster"


def embedded_dagster_url(pgdata: Path | None = None, database: str = DAGSTER_DATABASE) -> str:
    """Start (or attach to) the embedded server and return the URI of its ``database``, created
    when missing."""
    from bronze_assets.lib.source.embedded import embedded_server
    from bronze_assets.lib.source.postgres import connect
    from bronze_assets.settings import Settings

    server = embedded_server(pgdata or Settings.from_env().pgdata)
    source_uri = server.start()
    admin = source_uri.replace(f"/{server.database}?", "/postgres?", 1)
    with connect(admin, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
        if cur.fetchone() is None:
            try:
                cur.execute(f'CREATE DATABASE "{database}"')
            except Exception:  # another process created it between the check and here
                cur.execute(f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
                if cur.fetchone() is None:
                    raise
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; dagster-postgres ships psycopg2
    url = source_uri.replace(f"/{server.database}?", f"/{database}?", 1)
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


class EmbeddedPostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` on a database of the embedded PostgreSQL server.

    Config (all optional): ``pgdata``, the server's data folder (default
    ``$BRONZE_DATA_DIR/pgdata``), and ``database`` (default ``dagster``).
    """

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "pgdata": Field(StringSource, is_required=False),
            "database": Field(StringSource, is_required=False, default_value=DAGSTER_DATABASE),
        }

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> EmbeddedPostgresStorage:
        pgdata = config_value.get("pgdata")
        url = embedded_dagster_url(Path(pgdata) if pgdata else None,
                                   check.str_param(config_value.get("database", DAGSTER_DATABASE),
                                                   "database"))
        return cls(postgres_url=url, inst_data=inst_data)


class PoolQueuedRunCoordinator(QueuedRunCoordinator):
    """The QueuedRunCoordinator, giving each pool of a run its limit before the run is queued.

    With ``concurrency.pools.default_limit``, Dagster 1.13 writes a pool's limit in the first
    dequeue pass that meets a queued run of that pool, but that pass reads the list of limited
    pools before writing it: for that one pass the pool counts as unlimited and every run of it
    then in the queue starts — the first two loads of a table would run at once (seen in
    test_dagster_daemon.py). Writing the limit at submission, before the run enters the queue,
    leaves no such pass.
    """

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        pools = run.run_op_concurrency.all_pools if run.run_op_concurrency else None
        if pools and self._instance.global_op_concurrency_default_limit is not None:
            storage = self._instance.event_log_storage
            for pool in sorted(pools - storage.get_concurrency_keys()):
                storage.initialize_concurrency_limit_to_default(pool)
        return super().submit_run(context)
