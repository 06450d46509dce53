"""Describe, normalize and redact libpq connection URIs so no password ever reaches a log or an
error, and no connection attempt waits for the operating system's TCP timeout."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

# libpq waits this long for a server to answer a connection attempt (a firewalled host would
# otherwise hang a load for minutes, until the kernel's TCP timeout); a DSN's own value wins.
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10


def with_connect_timeout(dsn: str, seconds: int = DEFAULT_CONNECT_TIMEOUT_SECONDS) -> str:
    """``dsn`` (libpq URI or keyword DSN) with ``connect_timeout`` set, unless it sets one already."""
    if dsn_parts(dsn).get("connect_timeout"):
        return dsn
    if "://" in dsn:
        return f"{dsn}{'&' if '?' in dsn else '?'}connect_timeout={seconds}"
    return f"{dsn} connect_timeout={seconds}"


def describe_dsn(dsn: str) -> str:
    """A password-free ``host=… port=… db=… user=…`` description of a libpq URI or keyword DSN."""
    parts = dsn_parts(dsn)
    return " ".join(f"{k}={parts[k]}" for k in ("host", "port", "db", "user") if parts.get(k))


def redact(text: str, dsn: str | None) -> str:
    """Remove the DSN's password (and any ``password=``/``:pw@`` fragments) from ``text``."""
    password = dsn_parts(dsn).get("password") if dsn else None
    if password:
        text = text.replace(password, "***")
    text = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def dsn_parts(dsn: str) -> dict[str, str]:
    if "://" in dsn:
        url = urlsplit(dsn)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        host = url.hostname or query.get("host", "")
        return {
            "host": unquote(host) if host else "localhost",
            "port": str(url.port or query.get("port", "")),
            "db": unquote(url.path.lstrip("/")) or query.get("dbname", ""),
            "user": unquote(url.username or "") or query.get("user", ""),
            "password": unquote(url.password or "") or query.get("password", ""),
            "connect_timeout": query.get("connect_timeout", ""),
        }
    pairs = dict(re.findall(r"(\w+)\s*=\s*('[^']*'|\S+)", dsn))
    pairs = {k: v.strip("'") for k, v in pairs.items()}
    return {
        "host": pairs.get("host", "localhost"),
        "port": pairs.get("port", ""),
        "db": pairs.get("dbname", ""),
        "user": pairs.get("user", ""),
        "password": pairs.get("password", ""),
        "connect_timeout": pairs.get("connect_timeout", ""),
    }
