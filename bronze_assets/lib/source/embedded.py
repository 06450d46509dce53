"""The embedded PostgreSQL source: a ``pgserver`` instance under the project data folder."""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import Any

from bronze_assets.settings import SOURCE_DATABASE

log = logging.getLogger(__name__)


def _pgserver() -> Any:
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pgserver

    return pgserver


class EmbeddedPostgres:
    """A PostgreSQL server from the PyPI ``pgserver`` package, with database ``DE`` created.

    The server listens on a Unix socket only. ``start`` reuses a server that is already running
    on the same data directory (from this or another process); the server stops when the last
    process that started it calls ``stop`` or exits.
    """

    def __init__(self, pgdata: Path, database: str = SOURCE_DATABASE) -> None:
        self.pgdata = pgdata.absolute()
        self.database = database
        self._server: Any = None

    @property
    def is_running(self) -> bool:
        """Whether a postmaster is running on this data directory (in any process)."""
        info = _pgserver().utils.PostmasterInfo.read_from_pgdata(self.pgdata)
        return bool(info is not None and info.is_running())

    def start(self) -> str:
        """Start (or attach to) the server and return the libpq URI of the ``DE`` database (one
        thread at a time: a run's steps on threads ask for it at once, and ``pgserver`` keeps the
        processes using a server in a file it rewrites)."""
        with _STARTING:
            return self._start()

    def _start(self) -> str:
        if self._server is None:
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            log.info("starting embedded PostgreSQL in %s", self.pgdata)
            self._server = _pgserver().get_server(self.pgdata, cleanup_mode="stop")
            if self._prepare():  # once per data folder: log-based CDC needs wal_level = logical
                self._server.cleanup()
                self._server = _pgserver().get_server(self.pgdata, cleanup_mode="stop")
        return self._server.get_uri(self.database)

    def stop(self) -> None:
        """Release this process's handle; the server stops if no other process holds one."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def _prepare(self) -> bool:
        """In one connection (each costs ≈0.1 s): create the ``DE`` database if missing and set
        ``wal_level = logical`` (kept in postgresql.auto.conf); True if a restart must apply it."""
        import adbc_driver_postgresql.dbapi as pg

        with pg.connect(self._server.get_uri("postgres"), autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1 FROM pg_database WHERE datname = $1", parameters=(self.database,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{self.database}"')
            cur.execute("SELECT current_setting('wal_level')")
            (level,) = cur.fetchone()
            if level != "logical":
                cur.execute("ALTER SYSTEM SET wal_level = 'logical'")
            cur.close()
        return level != "logical"


_EMBEDDED: dict[Path, EmbeddedPostgres] = {}
_STARTING = threading.Lock()


def embedded_server(pgdata: Path) -> EmbeddedPostgres:
    """The process-wide :class:`EmbeddedPostgres` for ``pgdata`` (``Settings.pgdata``: under the
    data folder)."""
    server = EmbeddedPostgres(pgdata)
    return _EMBEDDED.setdefault(server.pgdata, server)
