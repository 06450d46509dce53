"""Embedded server lifecycle, DSN resolution, and connection errors that never leak passwords."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bronze_assets.lib.source.dsn import describe_dsn, redact
from bronze_assets.lib.source.embedded import EmbeddedPostgres
from bronze_assets.lib.source.postgres import SourceConnectionError, connect, resolve_source_dsn
from bronze_assets.settings import ENV_SOURCE_DSN, Settings
from bronze_assets_tests.conftest import sessions_opened

pytestmark = pytest.mark.integration

ATTACH_SCRIPT = """
import sys
from pathlib import Path
from bronze_assets.lib.source.embedded import EmbeddedPostgres
srv = EmbeddedPostgres(Path(sys.argv[1]))
srv.start()
print(srv._server.get_pid())
srv.stop()
"""


def test_embedded_start_reuse_and_stop(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pgdata")
    assert not server.is_running
    uri = server.start()
    assert server.is_running and "/DE?" in uri
    with connect(uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database(), current_setting('TimeZone'), current_setting('wal_level')")
        assert cur.fetchone() == ("DE", "UTC", "logical")  # log-based CDC works from the first start
    pid = server._server.get_pid()

    # another process attaches to the same running server instead of starting a second one
    out = subprocess.run([sys.executable, "-c", ATTACH_SCRIPT, str(server.pgdata)],
                         capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == pid
    assert server.is_running, "the other process's exit must not stop a server still in use"

    assert server.start() == uri  # idempotent within the process
    server.stop()
    assert not server.is_running

    # restart reuses the initialised data directory and the DE database
    again = server.start()
    assert again.endswith(uri.split("/DE", 1)[1]) and server.is_running
    server.stop()


def test_resolve_prefers_explicit_then_env_then_embedded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert resolve_source_dsn(Settings(), "postgresql://u@h/db") == "postgresql://u@h/db?connect_timeout=10"
    monkeypatch.setenv(ENV_SOURCE_DSN, "postgresql://env@h/DE?connect_timeout=3")
    # the user's own timeout wins
    assert resolve_source_dsn(Settings.from_env()) == "postgresql://env@h/DE?connect_timeout=3"
    monkeypatch.delenv(ENV_SOURCE_DSN)
    from bronze_assets.lib.source.embedded import embedded_server

    uri = resolve_source_dsn(Settings.from_env())  # BRONZE_DATA_DIR points into tmp_path (conftest)
    try:  # the server of BRONZE_DATA_DIR's pgdata (its socket may sit elsewhere when that path is long)
        with connect(uri) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_setting('data_directory')")
            assert Path(cur.fetchall()[0][0]).resolve() == (tmp_path / "data" / "pgdata").resolve()
    finally:
        embedded_server(Settings.from_env().pgdata).stop()


def test_the_type_catalog_is_read_once_per_dsn(fresh_dsn: str) -> None:
    """The driver reads the server's type catalog on a session of its own once per DSN: later
    connections open one server session each, not two, and each works on its own."""
    connect(fresh_dsn).close()  # the DSN's driver database, made
    with sessions_opened(fresh_dsn) as opened:
        for value in range(3):
            with connect(fresh_dsn) as conn, conn.cursor() as other:
                other.execute(f"SELECT {value}, current_setting('TimeZone')")
                assert other.fetchall() == [(value, "UTC")]
        assert opened(3) == 3


def test_connect_without_a_shared_driver_database(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver manager without shared databases (a private class of adbc_driver_manager 1.13):
    each connection makes its own, as before."""
    from bronze_assets.lib.source import postgres

    monkeypatch.setattr(postgres, "_shared_database_class", lambda: None)
    monkeypatch.setattr(postgres, "_DATABASES", {})
    with connect(fresh_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('TimeZone')")
        assert cur.fetchall() == [("UTC",)]
    assert postgres._DATABASES == {}  # none shared


def test_connect_with_another_shape_of_the_shared_driver_database(
        fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared driver database holder is private to adbc_driver_manager (``>=1.8,<2``): a
    version keeping its database under another name still shares it, and one whose holder is made
    otherwise gets a driver database per connection; neither fails as an unreachable server."""
    from adbc_driver_manager import dbapi

    from bronze_assets.lib.source import postgres

    original = dbapi._SharedDatabase

    class Renamed(original):  # type: ignore[misc, valid-type]
        def __init__(self, db: object) -> None:
            super().__init__(db)  # type: ignore[arg-type]
            self._database = self.__dict__.pop("_db")

        def close(self) -> None:
            if self._dec() == 0:
                self._database.close()

    class MadeOtherwise(original):  # type: ignore[misc, valid-type]
        def __init__(self, db: object, driver: str | None = None) -> None:
            super().__init__(db)  # type: ignore[arg-type]

    for holder, shared in ((Renamed, True), (MadeOtherwise, False)):
        with monkeypatch.context() as patch:
            patch.setattr(dbapi, "_SharedDatabase", holder)
            patch.setattr(postgres, "_DATABASES", {})
            for value in range(2):
                with connect(fresh_dsn) as conn, conn.cursor() as cur:
                    cur.execute(f"SELECT {value}, current_setting('TimeZone')")
                    assert cur.fetchall() == [(value, "UTC")]
            assert bool(postgres._DATABASES) is shared, holder.__name__
            postgres._forget_databases()


def test_connection_error_names_server_but_not_password(tmp_path: Path) -> None:
    dsn = f"postgresql://alice:s3cr3t-pw@/inventory?host={tmp_path}&port=5999"
    with pytest.raises(SourceConnectionError) as info:
        connect(dsn)
    message = str(info.value)
    assert "s3cr3t-pw" not in message
    assert f"host={tmp_path}" in message and "db=inventory" in message and "user=alice" in message
    assert "BRONZE_SOURCE_DSN" in message and "running" in message


@pytest.mark.parametrize(
    ("dsn", "described"),
    [
        ("postgresql://bob:pw@db.example.com:6543/DE", "host=db.example.com port=6543 db=DE user=bob"),
        ("postgresql://postgres:@/DE?host=/tmp/sock", "host=/tmp/sock db=DE user=postgres"),
        ("host=h port=5432 dbname=DE user=u password=pw", "host=h port=5432 db=DE user=u"),
    ],
)
def test_describe_dsn(dsn: str, described: str) -> None:
    assert describe_dsn(dsn) == described


def test_redact_removes_password_everywhere() -> None:
    dsn = "postgresql://bob:Pa55word@h/DE"
    text = "failed for postgresql://bob:Pa55word@h/DE (password=Pa55word) Pa55word"
    assert "Pa55word" not in redact(text, dsn)
    assert "Pa55word" not in redact("password='Pa55word'", None)
