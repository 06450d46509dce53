"""Resources shared by every bronze asset: the PostgreSQL source and the bronze storage root."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from bronze_assets.defs.edge import edge_settings
from bronze_assets.defs.engines import BronzeEngine
from bronze_assets.defs.io_manager import BronzeDeltaIOManager, BronzeStorage
from bronze_assets.defs.pipes import BronzePipes
from bronze_assets.lib.secrets import protect_logs, register_secret
from bronze_assets.lib.source.dsn import dsn_parts
from bronze_assets.lib.source.postgres import configured_source_dsn, resolve_source_dsn
from bronze_assets.settings import ENV_SOURCE_DSN

__all__ = ["BronzeDeltaIOManager", "BronzeEngine", "BronzePipes", "BronzeStorage", "PostgresSource",
           "resources"]


class PostgresSource(dg.ConfigurableResource):
    """The operational PostgreSQL database (``DE``, schema ``tests``) that bronze copies."""

    dsn: str | None = Field(
        default=None,
        description=f"libpq URI; unset means ${ENV_SOURCE_DSN}, else the embedded server.",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Every entry point that runs bronze assets (``dagster asset materialize``, the UI, the
        daemon, ``bronze demo``) masks the source's password and other secrets in every log record."""
        settings = edge_settings()
        protect_logs(settings)
        dsn = self.dsn or configured_source_dsn(settings)
        if dsn:
            register_secret(dsn_parts(dsn).get("password"))

    def resolved_dsn(self) -> str:
        """The URI to connect to (starting the embedded server when none is configured)."""
        return resolve_source_dsn(edge_settings(), self.dsn)


def build_resources(
    source: PostgresSource | None = None, storage: BronzeStorage | None = None,
    engine: BronzeEngine | None = None, pipes: BronzePipes | None = None,
) -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManager]:
    """The resource set every bronze asset needs; one storage config feeds assets and IO manager.
    ``pipes`` starts the Spark job (subprocess, Databricks; the tests' fake workspace)."""
    storage = storage or BronzeStorage()
    return {
        "source": source or PostgresSource(),
        "bronze": storage,
        "bronze_io_manager": BronzeDeltaIOManager(storage=storage),
        "engine": engine or BronzeEngine(),
        "pipes": pipes or BronzePipes(),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources())
