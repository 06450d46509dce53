"""Connections to the PostgreSQL source, with errors that name the server but never the password."""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from bronze_assets.lib.source.dsn import describe_dsn, redact, with_connect_timeout
from bronze_assets.lib.stop import cancel_on_stop
from bronze_assets.settings import ENV_SOURCE_DSN, Settings

# ARCHITECTURE §2.2: every rendering is independent of the role's and database's defaults:
# timestamptz/date text (TimeZone, DateStyle), interval (IntervalStyle), bytea (bytea_output),
# real/double (extra_float_digits 1: shortest round-trip digits; 0 or less rounds) and money
# (lc_monetary 'C': `-$1,234.56`, two fraction digits). See contracts/types.py.
PINNED_SESSION = ("SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, MDY'", "SET IntervalStyle = 'postgres'",
                  "SET bytea_output = 'hex'", "SET extra_float_digits = 1", "SET lc_monetary = 'C'")


class SourceConnectionError(RuntimeError):
    """The PostgreSQL source could not be reached; the message says what to check."""


def resolve_source_dsn(settings: Settings, dsn: str | None = None) -> str:
    """The DSN to use: ``dsn`` if given, else ``settings.source_dsn`` (``$BRONZE_SOURCE_DSN``), else
    the secret ``KConnectionString`` (with ``KUser``/``KPassword`` filled in when given separately; see
    :mod:`bronze_assets.lib.secrets`), else the embedded server. Every connection bronze opens
    (ADBC, psycopg2, Spark's JDBC) uses this DSN, so it carries libpq's ``connect_timeout``
    (:data:`~bronze_assets.lib.source.dsn.DEFAULT_CONNECT_TIMEOUT_SECONDS` unless it sets one)."""
    dsn = dsn or configured_source_dsn(settings)
    if dsn:
        return with_connect_timeout(dsn)
    from bronze_assets.lib.source.embedded import embedded_server

    return with_connect_timeout(embedded_server(settings.pgdata).start())


def configured_source_dsn(settings: Settings) -> str | None:
    """The DSN the user configured (``$BRONZE_SOURCE_DSN`` or the ``KConnectionString`` secret from
    the providers ``settings`` configure), or None when bronze uses its embedded server."""
    from bronze_assets.lib.secrets import providers, source_dsn_from_secrets

    return settings.source_dsn or source_dsn_from_secrets(providers(settings))


def connect(dsn: str, *, autocommit: bool = False) -> Any:
    """Open an ADBC PostgreSQL connection (DB-API) to ``dsn``, session pinned (UTC, ISO dates),
    giving up after libpq's ``connect_timeout`` (added when ``dsn`` sets none). The server's type
    catalog is read once per DSN in the process (:data:`DRIVER_DATABASE_SECONDS`)."""
    dsn = with_connect_timeout(dsn)
    try:
        conn = _open(dsn, autocommit)
    except Exception as exc:
        from bronze_assets.lib.failures import Cause, explain

        cause, detail, fix = explain(exc)
        if cause in (Cause.CONNECTION, Cause.UNKNOWN, Cause.BUG):
            fix = (f"check that the server is running and reachable, that the database exists and the "
                   f"credentials are right, and the value of {ENV_SOURCE_DSN} (unset it to use the "
                   f"embedded server)")
        raise SourceConnectionError(
            f"cannot connect to the PostgreSQL source ({describe_dsn(dsn)}): {redact(detail, dsn)} — {fix}."
        ) from None
    cur = conn.cursor()
    for statement in PINNED_SESSION:
        cur.execute(statement)
    cur.close()
    cancel_on_stop(conn)  # a load on a step thread, blocked on the server, still stops
    return conn


# The driver's database object (ADBC) connects to the server once more to read its type catalog,
# ≈30 ms of client CPU and a second backend per connection: one per DSN serves every connection to
# it, replaced after DRIVER_DATABASE_SECONDS so a long-lived process sees types created since.
DRIVER_DATABASE_SECONDS = 300.0
# DSN -> (the driver database's shared holder, the database, when it was made)
_DATABASES: dict[str, tuple[Any, Any, float]] = {}
_DATABASES_LOCK = threading.RLock()  # the driver counts a database's connections without a lock


@functools.cache
def _connection_class() -> type:
    from adbc_driver_manager import dbapi

    class Connection(dbapi.Connection):
        """A DB-API connection closed under the lock of the shared driver databases."""

        def close(self) -> None:
            with _DATABASES_LOCK:
                super().close()

    return Connection


def _shared_database_class() -> type | None:
    """``adbc_driver_manager``'s holder of a driver database shared by connections (private in
    1.8-1.13, the one its ``adbc_clone`` uses), or None if this version has none made of the
    database alone, in whose place a DB-API connection takes it."""
    import inspect

    from adbc_driver_manager import dbapi

    holder = getattr(dbapi, "_SharedDatabase", None)
    try:
        made_of = list(inspect.signature(holder).parameters) if holder is not None else []
        takes = inspect.signature(dbapi.Connection).parameters
    except (TypeError, ValueError):  # no signature to read
        return None
    return holder if made_of == ["db"] and {"db", "conn", "autocommit"} <= takes.keys() else None


def _open(dsn: str, autocommit: bool) -> Any:
    """An ADBC DB-API connection to ``dsn`` made from the DSN's shared driver database."""
    import adbc_driver_manager
    import adbc_driver_postgresql

    shared_database = _shared_database_class()
    if shared_database is None:  # a driver manager without it: a driver database per connection
        import adbc_driver_postgresql.dbapi as pg

        return pg.connect(dsn, autocommit=autocommit)
    with _DATABASES_LOCK:
        entry = _DATABASES.get(dsn)
        if entry is None or time.monotonic() - entry[2] > DRIVER_DATABASE_SECONDS:
            database = adbc_driver_postgresql.connect(dsn)
            _forget_databases(time.monotonic() - DRIVER_DATABASE_SECONDS)
            entry = _DATABASES[dsn] = (shared_database(database), database, time.monotonic())
        shared, database, _made = entry
        handle = adbc_driver_manager.AdbcConnection(database)
        try:
            return _connection_class()(shared, handle, autocommit=autocommit)
        except BaseException:
            handle.close()
            raise


def _forget_databases(made_before: float = float("inf")) -> None:
    """Let go of the shared driver databases made before ``made_before`` (``time.monotonic``;
    default: all); each closes with its last connection."""
    with _DATABASES_LOCK:
        for dsn, (shared, _database, made) in list(_DATABASES.items()):
            if made < made_before:
                del _DATABASES[dsn]
                shared.close()
