"""Secrets: a provider chain (environment → Databricks secret scope → Azure Key Vault) and redaction.

Key names are the seed's: ``KConnectionString``, ``KUser``, ``KPassword``, plus ``KPiiMasterKey``
(base64 of 32 random bytes, the PII key-encryption key). Every value fetched is registered in a
process-wide registry; :func:`redact_secrets` masks registered values in any text and
:func:`install_log_redaction` applies it to every log record. Errors raised here name the
secret and the providers tried, never a value.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from bronze_assets.settings import Settings

log = logging.getLogger(__name__)

K_CONNECTION_STRING = "KConnectionString"
K_USER = "KUser"
K_PASSWORD = "KPassword"
K_PII_MASTER_KEY = "KPiiMasterKey"

ENV_PREFIX = "BRONZE_SECRET_"
ENV_SECRET_SCOPE = "BRONZE_SECRET_SCOPE"
ENV_KEY_VAULT_URL = "BRONZE_KEY_VAULT_URL"
MASK = "***"
MIN_REDACT_LENGTH = 3  # shorter values would mask ordinary words in every message


class SecretError(RuntimeError):
    """A secret provider failed (the message names the secret, never its value)."""


class SecretProvider(Protocol):
    name: str

    def get(self, key: str) -> str | None:
        """The secret ``key``, or None if this provider does not have it."""
        ...


# --------------------------------------------------------------------------- registry / redaction
_lock = threading.Lock()
_registry: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Remember ``value`` (and its URL-encoded form) so :func:`redact_secrets` masks it."""
    global _pattern
    if not value or len(value) < MIN_REDACT_LENGTH:
        return
    forms = {value, quote(value, safe="")}
    with _lock:
        if forms <= _registry:
            return
        _registry.update(forms)
        ordered = sorted(_registry, key=len, reverse=True)  # longest first: no partial leaks
        _pattern = re.compile("|".join(re.escape(v) for v in ordered))


def clear_registry() -> None:
    """Forget every registered value (tests)."""
    global _pattern
    with _lock:
        _registry.clear()
        _pattern = None


def redact_secrets(text: str) -> str:
    """``text`` with every registered secret value replaced by ``***``."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


class SecretRedactionFilter(logging.Filter):
    """Masks registered secrets in a record's message, arguments and formatted traceback."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record, self._formatter)
        return True


def _redact_record(record: logging.LogRecord, formatter: logging.Formatter) -> None:
    if _pattern is None or getattr(record, "_bronze_redacted", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: leave it to logging's own error handling
        return
    redacted = redact_secrets(message)
    if redacted != message:  # untouched records keep their msg/args (structured handlers)
        record.msg, record.args = redacted, None
    if record.exc_info and not record.exc_text:
        text = formatter.formatException(record.exc_info)
        if redact_secrets(text) != text:
            record.exc_text = redact_secrets(text)
    elif record.exc_text:
        record.exc_text = redact_secrets(record.exc_text)
    if record.stack_info:
        record.stack_info = redact_secrets(record.stack_info)
    record._bronze_redacted = True


_installed = False


def install_log_redaction(handlers: Iterable[logging.Handler] = ()) -> None:
    """Mask secrets in every log record from now on (idempotent).

    Adds :class:`SecretRedactionFilter` to the root logger's handlers and to ``handlers``, and
    wraps the log-record factory so records reaching handlers added later (Dagster's) are
    masked too.
    """
    global _installed
    flt = SecretRedactionFilter()
    for handler in [*logging.getLogger().handlers, *handlers]:
        if not any(isinstance(f, SecretRedactionFilter) for f in handler.filters):
            handler.addFilter(flt)
    if _installed:
        return
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record, formatter)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


_SECRET_OPTION = re.compile(r"secret|password|token|account_key|sas_key|sas$", re.IGNORECASE)


def protect_logs(settings: Settings, storage_options: Mapping[str, str] | None = None) -> None:
    """Log redaction for an entry point (a resource's set-up, the ``bronze`` CLI, the Spark job):
    installs it and registers every secret ``settings`` hold (the source DSN's password, the
    environment's secrets, the SMTP password) and the credentials among ``storage_options``
    (secret keys, tokens; not the key ids)."""
    from bronze_assets.lib.source.dsn import dsn_parts

    install_log_redaction()
    if settings.source_dsn:
        register_secret(dsn_parts(settings.source_dsn).get("password"))
    for value in settings.env_secrets.values():
        register_secret(value)
    register_secret(settings.alerts.get("BRONZE_SMTP_PASSWORD"))
    for key, value in (storage_options or {}).items():
        if _SECRET_OPTION.search(key):
            register_secret(value)


# --------------------------------------------------------------------------- providers
class EnvProvider:
    """``$<key>`` (e.g. ``$KPassword``), else ``$BRONZE_SECRET_<key>`` (as spelled or upper case),
    from ``values``: the environment's secrets an entry point read (``Settings.env_secrets``)."""

    name = "environment"

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = values

    def get(self, key: str) -> str | None:
        for name in (key, ENV_PREFIX + key, ENV_PREFIX + key.upper()):
            if self.values.get(name):
                return self.values[name]
        return None


class DatabricksSecretProvider:
    """``dbutils.secrets.get(scope, key)``; used only on a Databricks runtime."""

    name = "Databricks secret scope"

    def __init__(self, scope: str, dbutils: Any = None) -> None:
        self.scope = scope
        self._dbutils = dbutils

    def _client(self) -> Any:
        if self._dbutils is None:
            try:
                from databricks.sdk.runtime import dbutils  # DBR 13+
            except ImportError:
                from pyspark.dbutils import DBUtils  # type: ignore[import-not-found]
                from pyspark.sql import SparkSession

                dbutils = DBUtils(SparkSession.builder.getOrCreate())
            self._dbutils = dbutils
        return self._dbutils

    def get(self, key: str) -> str | None:
        try:
            return self._client().secrets.get(scope=self.scope, key=key) or None
        except Exception as exc:
            if "does not exist" in str(exc).lower():
                return None
            raise SecretError(
                f"cannot read secret {key!r} from Databricks secret scope {self.scope!r} "
                f"({type(exc).__name__}). Check the scope name (${ENV_SECRET_SCOPE}) and that the "
                f"job's principal has READ on it."
            ) from None


def key_vault_name(key: str) -> str:
    """Key Vault secret names allow only letters, digits and '-': ``BRONZE_X_Y`` → ``BRONZE-X-Y``."""
    return re.sub(r"[^0-9A-Za-z-]", "-", key)


class AzureKeyVaultProvider:
    """Azure Key Vault at ``vault_url`` with ``DefaultAzureCredential`` (extra ``azure``)."""

    name = "Azure Key Vault"

    def __init__(self, vault_url: str, client: Any = None) -> None:
        self.vault_url = vault_url
        self._client = client

    def _secret_client(self) -> Any:
        if self._client is None:
            try:
                from azure.identity import DefaultAzureCredential
                from azure.keyvault.secrets import SecretClient
            except ImportError:
                raise SecretError(
                    f"{ENV_KEY_VAULT_URL} is set but the Azure SDK is missing: "
                    f"pip install 'bronze_assets[azure]' (or unset {ENV_KEY_VAULT_URL})."
                ) from None
            self._client = SecretClient(vault_url=self.vault_url, credential=DefaultAzureCredential())
        return self._client

    def get(self, key: str) -> str | None:
        name = key_vault_name(key)
        try:
            return self._secret_client().get_secret(name).value or None
        except SecretError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "ResourceNotFoundError":
                return None
            raise SecretError(
                f"cannot read secret {name!r} from Azure Key Vault {self.vault_url} "
                f"({type(exc).__name__}). Check the vault URL, network access and the identity's 'get' "
                f"permission on secrets."
            ) from None


_remote_cache: dict[tuple[str, str, str], str | None] = {}


def clear_cache() -> None:
    """Drop cached remote secrets (tests, or after a rotation)."""
    _remote_cache.clear()


def providers(settings: Settings) -> list[SecretProvider]:
    """The chain ``settings`` configure: the environment's secrets, then the Databricks secret
    scope (on a Databricks runtime), then Azure Key Vault (if its URL is set)."""
    chain: list[SecretProvider] = [EnvProvider(settings.env_secrets)]
    if settings.databricks_runtime:
        chain.append(DatabricksSecretProvider(settings.secret_scope))
    if settings.key_vault_url:
        chain.append(AzureKeyVaultProvider(settings.key_vault_url))
    return chain


def get_secret(name: str, providers: Iterable[SecretProvider]) -> str | None:
    """The first value any provider has for ``name`` (registered for redaction), else None."""
    for provider in providers:
        cacheable = not isinstance(provider, EnvProvider)
        cache_key = (provider.name, getattr(provider, "scope", getattr(provider, "vault_url", "")), name)
        if cacheable and cache_key in _remote_cache:
            value = _remote_cache[cache_key]
        else:
            value = provider.get(name)
            if cacheable:
                _remote_cache[cache_key] = value
        if value:
            register_secret(value)
            return value
    return None


def require_secret(name: str, providers: Iterable[SecretProvider]) -> str:
    """Like :func:`get_secret` but raises :class:`SecretError` naming where it looked."""
    chain = list(providers)
    value = get_secret(name, chain)
    if value is None:
        where = ", ".join(p.name for p in chain)
        raise SecretError(
            f"secret {name!r} not found (looked in: {where}). Set ${name} or ${ENV_PREFIX}{name}, "
            f"or add it to the secret scope / key vault."
        )
    return value


# --------------------------------------------------------------------------- source DSN
_ADO_KEYS = {
    "host": "host", "server": "host", "data source": "host",
    "port": "port",
    "database": "dbname", "dbname": "dbname", "initial catalog": "dbname",
    "user": "user", "user id": "user", "userid": "user", "username": "user", "uid": "user",
    "password": "password", "pwd": "password",
    "sslmode": "sslmode", "ssl mode": "sslmode",
}


def _to_uri(conn: str) -> str:
    """A libpq URI from a URI, a ``jdbc:postgresql://`` URL or an ADO.NET ``Key=Value;`` string."""
    conn = conn.strip().removeprefix("jdbc:")
    if "://" in conn:
        return conn
    if ";" not in conn:
        return conn  # libpq keyword/value DSN: adbc accepts it as is
    parts: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in conn.split(";"))):
        key, _, value = item.partition("=")
        mapped = _ADO_KEYS.get(key.strip().lower())
        if mapped:
            parts[mapped] = value.strip()
    host = parts.pop("host", "localhost")
    if "," in host:  # ADO.NET "host,port"
        host, parts["port"] = host.split(",", 1)
    port = parts.pop("port", "")
    db = quote(parts.pop("dbname", ""), safe="")
    creds = ""
    if "user" in parts:
        creds = quote(parts.pop("user"), safe="")
        if "password" in parts:
            creds += ":" + quote(parts.pop("password"), safe="")
        creds += "@"
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in parts.items())
    return f"postgresql://{creds}{host}{':' + port if port else ''}/{db}" + (f"?{query}" if query else "")


def with_credentials(uri: str, user: str | None, password: str | None) -> str:
    """``uri`` with ``user``/``password`` set (URL-encoded) when given; others kept as they are."""
    if not (user or password) or "://" not in uri:
        if user or password:  # keyword/value DSN
            extra = (f" user='{user}'" if user else "") + (f" password='{password}'" if password else "")
            return uri + extra
        return uri
    url = urlsplit(uri)
    netloc = url.netloc.rsplit("@", 1)[-1]
    old_user, _, old_pw = url.netloc.rpartition("@")[0].partition(":")
    new_user = quote(user, safe="") if user else old_user
    new_pw = quote(password, safe="") if password else old_pw
    creds = new_user + (f":{new_pw}" if new_pw else "")
    return urlunsplit(url._replace(netloc=f"{creds}@{netloc}" if creds else netloc))


def source_dsn_from_secrets(providers: Iterable[SecretProvider]) -> str | None:
    """The source DSN from ``KConnectionString`` (+ ``KUser``/``KPassword`` filled in), else None."""
    chain = list(providers)
    conn = get_secret(K_CONNECTION_STRING, chain)
    if not conn:
        return None
    dsn = with_credentials(_to_uri(conn), get_secret(K_USER, chain), get_secret(K_PASSWORD, chain))
    register_secret(dsn)
    return dsn
