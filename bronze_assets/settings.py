"""Environment settings, read lazily (never at import time) so tests can change them freely."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path

ENV_SOURCE_DSN = "BRONZE_SOURCE_DSN"
ENV_BRONZE_ROOT = "BRONZE_ROOT"
ENV_DATA_DIR = "BRONZE_DATA_DIR"

SOURCE_DATABASE = "DE"
SOURCE_SCHEMA = "tests"
SOURCE_SYSTEM = "PostgreSQL_DE"


def data_dir() -> Path:
    """Project data folder (embedded PostgreSQL, default bronze root): ``$BRONZE_DATA_DIR`` or ./data."""
    return Path(os.environ.get(ENV_DATA_DIR) or "data").expanduser().absolute()


def source_dsn_from_env() -> str | None:
    """The libpq URI in ``$BRONZE_SOURCE_DSN``, or None to use the embedded server."""
    value = os.environ.get(ENV_SOURCE_DSN, "").strip()
    return value or None


def bronze_root() -> str:
    """Root of the bronze Delta tables: ``$BRONZE_ROOT`` (path or object-store URI) or ./data/bronze."""
    value = os.environ.get(ENV_BRONZE_ROOT, "").strip()
    if value:
        return value if "://" in value else str(Path(value).expanduser().absolute())
    return str(data_dir() / "bronze")


ENV_START_DATE = "BRONZE_START_DATE"
ENV_PARTITIONS_START = "BRONZE_PARTITIONS_START"
DEFAULT_PARTITIONS_START = "2020-01-01"


def _parse_date(name: str, value: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a date; write it as YYYY-MM-DD (UTC)") from None


def start_date(today: date | None = None) -> date:
    """Go-live day of the daily tables (``$BRONZE_START_DATE``; default: the first day of the
    current UTC month). Its partition is the initial snapshot of all history (ARCHITECTURE §2.4)."""
    value = os.environ.get(ENV_START_DATE, "").strip()
    if value:
        return _parse_date(ENV_START_DATE, value)
    return (today or datetime.now(UTC).date()).replace(day=1)


def partitions_start() -> date:
    """First business month of the monthly tables (``$BRONZE_PARTITIONS_START``, default 2020-01-01)."""
    value = os.environ.get(ENV_PARTITIONS_START, "").strip() or DEFAULT_PARTITIONS_START
    return _parse_date(ENV_PARTITIONS_START, value).replace(day=1)
