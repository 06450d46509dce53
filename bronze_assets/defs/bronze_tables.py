"""``bronze_assets.BronzeTables``: the Dagster component that turns a tables file into bronze assets.

A ``defs.yaml`` of this type (ARCHITECTURE §2.10; the shipped example is ``defs/inventory/``)
names a source and its tables, each with its business overlay and the columns discovered from the
catalog (:mod:`bronze_assets.contracts.tablefile` is its schema and parser). The component builds,
from the same :class:`~bronze_assets.contracts.Contract` the rest of the product reads, every table's
asset with its checks, partitions and freshness (:func:`~bronze_assets.defs.assets.build_bronze_asset`)
and the schedules of its cadences (:mod:`bronze_assets.defs.schedules`). Nothing connects to the
database while definitions load.

``dg scaffold defs bronze_assets.BronzeTables <folder>`` writes such a file: introspected from
the source when its DSN variable is set (as ``bronze init`` does), else a skeleton to refresh.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import BaseModel, Field

from bronze_assets.contracts import Contract
from bronze_assets.contracts.tablefile import (
    DEFAULT_DSN_ENV,
    SourceSpec,
    TablesFile,
    TableSpec,
    contracts_of,
    render,
)
from bronze_assets.defs.assets import build_bronze_asset
from bronze_assets.defs.checks import build_reconciliation_check
from bronze_assets.defs.edge import edge_settings
from bronze_assets.defs.resources import PostgresSource
from bronze_assets.defs.schedules import build_reconciliation_schedule, build_schedule, load_groups

_SOURCES: dict[str, PostgresSource] = {}  # one resource object per DSN variable (Definitions.merge)


def source_resource_key(dsn_env: str) -> str:
    """The resource a tables file's assets read: ``source`` for ``$BRONZE_SOURCE_DSN`` (unset: the
    embedded server), else ``source_<variable>`` reading that variable when a run starts."""
    return "source" if dsn_env == DEFAULT_DSN_ENV else f"source_{dsn_env.lower()}"


class BronzeTablesScaffoldParams(BaseModel):
    dsn_env: str = Field(default=DEFAULT_DSN_ENV, description="environment variable holding the DSN")
    schemas: str = Field(default="public", description="source schemas, comma-separated")
    tables: str = Field(default="*", description="tables to load: names or globs, comma-separated")


class BronzeTablesScaffolder(dg.Scaffolder[BronzeTablesScaffoldParams]):
    """Writes ``defs.yaml``: discovered from the source when ``$<dsn_env>`` is set (``bronze init``),
    else the source settings and no tables yet (``bronze init --refresh <file>`` fills them)."""

    @classmethod
    def get_scaffold_params(cls) -> type[BronzeTablesScaffoldParams]:
        return BronzeTablesScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[BronzeTablesScaffoldParams]) -> None:
        from bronze_assets.lib.source.introspect import introspect
        from bronze_assets.settings import source_dsn_from

        params = request.params
        schemas = [s.strip() for s in params.schemas.split(",") if s.strip()]
        patterns = [t.strip() for t in params.tables.split(",") if t.strip()]
        source = SourceSpec(dsn_env=params.dsn_env, schemas=schemas, tables=patterns)
        path = Path(request.target_path) / "defs.yaml"
        dsn = source_dsn_from(params.dsn_env)
        name = Path(request.target_path).name
        if dsn:
            result = introspect(dsn, source, name=name)
            path.write_text(render(result.file, result.notes))
        else:
            path.write_text(render(TablesFile(source=source, name=name)) +
                            f"# no tables yet: set ${params.dsn_env} and run  bronze init --refresh {path}\n")


@dg.scaffold_with(BronzeTablesScaffolder)
class BronzeTables(dg.Component, dg.Resolvable, dg.Model):
    """Bronze tables of one PostgreSQL source, declared in YAML: the source (the environment
    variable with its DSN, its schemas, the tables as names or globs) and per table the business
    overlay (primary key, load pattern, cadence, partitioning, PII, quality rules, foreign keys) and
    the columns discovered from the catalog. Builds one asset ``bz_<table>`` per table with its
    checks and freshness policy, and one schedule per cadence. ``bronze init`` writes the file."""

    source: SourceSpec = SourceSpec()
    name: str | None = None
    tables: dict[str, TableSpec] = {}  # noqa: RUF012 (pydantic copies field defaults)

    @classmethod
    def get_spec(cls) -> dg.ComponentTypeSpec:
        return dg.ComponentTypeSpec(owners=["team:data-engineering"], tags=["postgres", "delta"],
                                    produces=["asset", "asset_check", "schedule", "job", "resource"])

    def tables_file(self) -> TablesFile:
        return TablesFile(source=self.source, name=self.name, tables=self.tables)  # validates `name`

    def contracts(self) -> list[Contract]:
        """The contracts of the tables this file loads (``skip``-ped tables have none)."""
        return contracts_of(self.tables_file())

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        contracts = self.contracts()
        settings = edge_settings()  # read once for this file's assets and schedules
        key = source_resource_key(self.source.dsn_env)
        resources = {}
        if key != "source":
            resource = _SOURCES.setdefault(key, PostgresSource(dsn=dg.EnvVar(self.source.dsn_env)))
            resources[key] = resource
        return dg.Definitions(
            assets=[build_bronze_asset(c, key, settings) for c in contracts],
            asset_checks=[build_reconciliation_check(c, key) for c in contracts],
            schedules=[build_schedule(g, settings) for g in load_groups(contracts, prefix=self.name or "")]
            + ([build_reconciliation_schedule(contracts, self.name or "", settings)] if contracts else []),
            resources=resources,
        )
