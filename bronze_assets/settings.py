"""Environment settings, read lazily (never at import time) so tests can change them freely."""

from __future__ import annotations

import os
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
