"""Resources shared by every bronze asset: the PostgreSQL source and the bronze storage root."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from bronze_assets.lib.source.postgres import resolve_source_dsn
from bronze_assets.settings import ENV_BRONZE_ROOT, ENV_SOURCE_DSN, bronze_root


class PostgresSource(dg.ConfigurableResource):
    """The operational PostgreSQL database (``DE``, schema ``tests``) that bronze copies."""

    dsn: str | None = Field(
        default=None,
        description=f"libpq URI; unset means ${ENV_SOURCE_DSN}, else the embedded server.",
    )

    def resolved_dsn(self) -> str:
        """The URI to connect to (starting the embedded server when none is configured)."""
        return resolve_source_dsn(self.dsn)


class BronzeStorage(dg.ConfigurableResource):
    """Where the bronze Delta tables live (local path or s3://, abfss://, gs:// URI)."""

    root: str | None = Field(default=None, description=f"unset means ${ENV_BRONZE_ROOT}.")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="delta-rs object-store options (credentials, region)."
    )

    def resolved_root(self) -> str:
        return (self.root or bronze_root()).rstrip("/")

    def table_uri(self, table: str) -> str:
        return f"{self.resolved_root()}/{table}"


@dg.definitions
def resources() -> dg.Definitions:
    from bronze_assets.lib.delta.io_manager import BronzeDeltaIOManager

    return dg.Definitions(
        resources={
            "source": PostgresSource(),
            "bronze": BronzeStorage(),
            "bronze_io_manager": BronzeDeltaIOManager(),
        }
    )
