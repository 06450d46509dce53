"""Secret provider chain, redaction of secrets in text and logs, and source DSN resolution.

The only test doubles are the Databricks ``dbutils`` and the Azure Key Vault ``SecretClient``
(no workspace or vault in CI); everything else is real: environment, logging, ADBC connect.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bronze_assets.lib import secrets
from bronze_assets.lib.secrets import (
    AzureKeyVaultProvider,
    DatabricksSecretProvider,
    EnvProvider,
    SecretError,
    SecretProvider,
    SecretRedactionFilter,
    get_secret,
    install_log_redaction,
    key_vault_name,
    redact_secrets,
    require_secret,
)
from bronze_assets.lib.source.postgres import SourceConnectionError, connect, resolve_source_dsn
from bronze_assets.settings import Settings

PLANTED = "pl4nted-S3cret/value@x"
SECRET_ENV = ("KConnectionString", "KUser", "KPassword", "KPiiMasterKey", "BRONZE_SECRET_KPassword",
              "BRONZE_SECRET_KPASSWORD", "BRONZE_SECRET_SCOPE", "BRONZE_KEY_VAULT_URL",
              "DATABRICKS_RUNTIME_VERSION")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    secrets.clear_registry()
    secrets.clear_cache()
    yield
    secrets.clear_registry()
    secrets.clear_cache()


class FakeDbutils:
    """Stands in for Databricks' dbutils (test double: no workspace in CI)."""

    def __init__(self, values: dict[str, str], error: Exception | None = None) -> None:
        self.values, self.error, self.calls = values, error, []
        self.secrets = self

    def get(self, scope: str, key: str) -> str:
        self.calls.append((scope, key))
        if self.error:
            raise self.error
        if key not in self.values:
            raise RuntimeError(f"IllegalArgumentException: Secret does not exist with scope: {scope} "
                               f"and key: {key}")
        return self.values[key]


class ResourceNotFoundError(Exception):
    """Same name as azure.core.exceptions.ResourceNotFoundError."""


class FakeSecretClient:
    """Stands in for azure.keyvault.secrets.SecretClient (test double: no vault in CI)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values, self.calls = values, []

    def get_secret(self, name: str) -> Any:
        self.calls.append(name)
        if name not in self.values:
            raise ResourceNotFoundError(name)
        return type("Secret", (), {"value": self.values[name]})()


def test_chain_order_env_then_databricks_then_key_vault(monkeypatch: pytest.MonkeyPatch) -> None:
    dbutils = FakeDbutils({"KUser": "dbx-user", "KPassword": "dbx-pass"})
    vault = FakeSecretClient({"KUser": "kv-user", "KPassword": "kv-pass", "KConnectionString": "kv-conn",
                              "BRONZE-EXTRA-NAME": "kv-extra"})
    monkeypatch.setenv("KUser", "env-user")
    chain = [EnvProvider(Settings.from_env().env_secrets), DatabricksSecretProvider("bronze", dbutils),
             AzureKeyVaultProvider("https://v", vault)]
    assert get_secret("KUser", chain) == "env-user"
    assert get_secret("KPassword", chain) == "dbx-pass"
    assert get_secret("KConnectionString", chain) == "kv-conn"
    assert get_secret("BRONZE_EXTRA_NAME", chain) == "kv-extra"  # Key Vault names cannot hold '_'
    assert get_secret("KMissing", chain) is None
    assert ("bronze", "KPassword") in dbutils.calls and "KUser" not in vault.calls
    with pytest.raises(SecretError, match=r"'KMissing' not found \(looked in: environment, Databricks"):
        require_secret("KMissing", chain)


def test_env_prefixed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    def from_env() -> list[SecretProvider]:
        return [EnvProvider(Settings.from_env().env_secrets)]

    monkeypatch.setenv("BRONZE_SECRET_KPASSWORD", "upper")
    assert get_secret("KPassword", from_env()) == "upper"
    monkeypatch.setenv("BRONZE_SECRET_KPassword", "prefixed")
    assert get_secret("KPassword", from_env()) == "prefixed"
    monkeypatch.setenv("KPassword", "direct")
    assert get_secret("KPassword", from_env()) == "direct"
    assert get_secret("KPassword", [EnvProvider(Settings().env_secrets)]) is None, "a value, not the env"


def test_the_chain_depends_on_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [type(p) for p in secrets.providers(Settings.from_env())] == [EnvProvider]
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    monkeypatch.setenv("BRONZE_SECRET_SCOPE", "prod-scope")
    monkeypatch.setenv("BRONZE_KEY_VAULT_URL", "https://my-vault.vault.azure.net/")
    chain = secrets.providers(Settings.from_env())
    assert [type(p) for p in chain] == [EnvProvider, DatabricksSecretProvider, AzureKeyVaultProvider]
    assert chain[1].scope == "prod-scope" and chain[2].vault_url == "https://my-vault.vault.azure.net/"
    assert key_vault_name("BRONZE_SECRET_X") == "BRONZE-SECRET-X"
    assert key_vault_name("KPassword") == "KPassword"


def test_provider_errors_never_carry_the_value() -> None:
    failing = DatabricksSecretProvider("s", FakeDbutils({}, PermissionError(f"denied {PLANTED}")))
    with pytest.raises(SecretError) as info:
        get_secret("KPassword", [failing])
    assert PLANTED not in str(info.value) and "READ on it" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.skipif(importlib.util.find_spec("azure") is not None, reason="the azure extra is installed")
def test_key_vault_without_the_extra_names_it() -> None:
    with pytest.raises(SecretError, match=r"bronze_assets\[azure\]"):
        AzureKeyVaultProvider("https://v.vault.azure.net").get("KPassword")


def test_redact_secrets_masks_every_fetched_value(monkeypatch: pytest.MonkeyPatch) -> None:
    assert redact_secrets(f"before {PLANTED}") == f"before {PLANTED}"  # not fetched yet
    monkeypatch.setenv("KPassword", PLANTED)
    assert get_secret("KPassword", secrets.providers(Settings.from_env())) == PLANTED
    text = f"connect failed for {PLANTED}; uri postgresql://u:pl4nted-S3cret%2Fvalue%40x@h/DE"
    redacted = redact_secrets(text)
    assert PLANTED not in redacted and "pl4nted" not in redacted
    assert redacted.startswith("connect failed for ***;")


def test_logging_filter_masks_messages_args_and_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPassword", PLANTED)
    get_secret("KPassword", secrets.providers(Settings.from_env()))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(SecretRedactionFilter())
    logger = logging.getLogger("bronze_test_secrets")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("password is %s", PLANTED)
        logger.warning(f"inline {PLANTED}")
        try:
            raise RuntimeError(f"boom {PLANTED}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert PLANTED not in out
    assert "password is ***" in out and "inline ***" in out and "RuntimeError: boom ***" in out


def test_install_log_redaction_covers_handlers_added_later(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets, "_installed", False)
    monkeypatch.setattr(logging, "_logRecordFactory", logging.getLogRecordFactory())  # restored after
    install_log_redaction()
    monkeypatch.setenv("KPassword", PLANTED)
    get_secret("KPassword", secrets.providers(Settings.from_env()))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # added after installation, no filter of its own
    logger = logging.getLogger("bronze_test_secrets_late")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("dsn=%s", f"postgresql://u:{PLANTED}@h/DE")
    finally:
        logger.removeHandler(handler)
    assert PLANTED not in stream.getvalue() and "postgresql://u:***@h/DE" in stream.getvalue()


def test_resolve_source_dsn_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KConnectionString", "postgresql://db.example:5432/DE?sslmode=require")
    monkeypatch.setenv("KUser", "loader")
    monkeypatch.setenv("KPassword", "p@ss:w/rd")
    dsn = resolve_source_dsn(Settings.from_env())
    assert dsn == "postgresql://loader:p%40ss%3Aw%2Frd@db.example:5432/DE?sslmode=require&connect_timeout=10"
    assert "p%40ss" not in redact_secrets(f"using {dsn}") and "p@ss:w/rd" not in redact_secrets(dsn)
    # explicit and $BRONZE_SOURCE_DSN come first
    assert resolve_source_dsn(Settings(), "postgresql://x@h/db") == "postgresql://x@h/db?connect_timeout=10"
    monkeypatch.setenv("BRONZE_SOURCE_DSN", "postgresql://env@h/db")
    assert resolve_source_dsn(Settings.from_env()) == "postgresql://env@h/db?connect_timeout=10"


@pytest.mark.parametrize(("conn", "expected"), [
    ("jdbc:postgresql://db:5432/DE", "postgresql://loader:pw1x@db:5432/DE?connect_timeout=10"),
    ("postgresql://old:oldpw@db/DE", "postgresql://loader:pw1x@db/DE?connect_timeout=10"),
    ("Server=db.postgres.database.azure.com;Database=DE;Port=5432;Ssl Mode=Require;",
     "postgresql://loader:pw1x@db.postgres.database.azure.com:5432/DE?sslmode=Require&connect_timeout=10"),
    ("host=db dbname=DE", "host=db dbname=DE user='loader' password='pw1x' connect_timeout=10"),
])
def test_connection_string_forms(monkeypatch: pytest.MonkeyPatch, conn: str, expected: str) -> None:
    monkeypatch.setenv("KConnectionString", conn)
    monkeypatch.setenv("KUser", "loader")
    monkeypatch.setenv("KPassword", "pw1x")
    assert resolve_source_dsn(Settings.from_env()) == expected


def test_ado_string_with_its_own_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KConnectionString", "Host=db;Database=DE;Username=app;Password=a;b=c")
    assert resolve_source_dsn(Settings.from_env()) == "postgresql://app:a@db/DE?connect_timeout=10"


def test_connection_error_from_secret_dsn_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KConnectionString", "postgresql://127.0.0.1:1/DE?connect_timeout=2")
    monkeypatch.setenv("KUser", "loader")
    monkeypatch.setenv("KPassword", PLANTED)
    dsn = resolve_source_dsn(Settings.from_env())
    with pytest.raises(SourceConnectionError) as info:
        connect(dsn)
    assert PLANTED not in str(info.value) and "pl4nted" not in str(info.value)
    assert "host=127.0.0.1" in str(info.value)


REDACTION_PROBE = """
import logging, dagster as dg
from bronze_assets.defs.resources import PostgresSource

@dg.asset
def probe(context: dg.AssetExecutionContext, source: PostgresSource) -> None:
    context.log.info("connecting with postgresql://loader:S3cret-Probe-Pw@db:5432/DE")
    logging.getLogger("probe").warning("retry with S3cret-Probe-Pw")

assert dg.materialize([probe], resources={"source": PostgresSource()}).success
"""


BRONZE_ONLY_PROBE = """
import logging, dagster as dg
from bronze_assets.defs.resources import BronzeStorage

@dg.op
def probe(context: dg.OpExecutionContext, bronze: BronzeStorage) -> None:
    context.log.info("mailing as Smtp-Probe-Pw, store key Store-Probe-Key")
    logging.getLogger("probe").warning("KPassword is Env-Probe-Pw")

@dg.job
def probe_job() -> None:
    probe()

options = {"AWS_ACCESS_KEY_ID": "AKIAPROBE", "AWS_SECRET_ACCESS_KEY": "Store-Probe-Key"}
assert probe_job.execute_in_process(resources={"bronze": BronzeStorage(storage_options=options)}).success
"""

CLI_PROBE = """
import logging
from bronze_assets.cli import main
main(["server", "status"], standalone_mode=False)  # any command: the group's start installs it
logging.getLogger("probe").warning("mailing as Smtp-Probe-Pw, KPassword Env-Probe-Pw")
"""


@pytest.mark.parametrize("probe", [BRONZE_ONLY_PROBE, CLI_PROBE], ids=["bronze-resource", "bronze-cli"])
def test_every_entry_point_redacts_every_configured_secret(tmp_path: Path, probe: str) -> None:
    """A run that uses only the bronze root (maintenance, retention, the report, the alert
    sensors) and the ``bronze`` CLI mask every secret the settings hold (the SMTP password, a
    secret from the environment) and the store's credentials, not only the source's password."""
    env = {**os.environ, "BRONZE_SMTP_PASSWORD": "Smtp-Probe-Pw", "KPassword": "Env-Probe-Pw",
           "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-2000:]
    assert "mailing as ***" in output and "Env-Probe-Pw" not in output and "Smtp-Probe-Pw" not in output
    assert "Store-Probe-Key" not in output


def test_every_dagster_entry_point_redacts_the_source_password(tmp_path: Path) -> None:
    """Redaction is installed by the source resource's set-up, not only by the ``bronze`` CLI: a
    fresh interpreter that only materializes an asset (as ``dagster asset materialize`` or the UI
    does) never prints the configured DSN's password."""
    env = {**os.environ, "BRONZE_SOURCE_DSN": "postgresql://loader:S3cret-Probe-Pw@db:5432/DE",
           "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", REDACTION_PROBE], env=env, capture_output=True, text=True,
                          timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-2000:]
    assert "connecting with" in output and "retry with ***" in output
    assert "S3cret-Probe-Pw" not in output
