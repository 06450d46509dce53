"""``bronze seed``: create the source schema from the contracts and bulk-load generated data."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from bronze_assets.contracts import in_dependency_order
from bronze_assets.demo.generator import InventoryGenerator, SeedOptions, rows_for
from bronze_assets.lib.source.ddl import (
    create_index_statements,
    create_schema_statements,
    drop_table_statements,
    qualified,
)
from bronze_assets.lib.source.postgres import connect
from bronze_assets.settings import SOURCE_SCHEMA

log = logging.getLogger(__name__)
COPY_CHUNK_ROWS = 100_000


class SourceNotEmptyError(RuntimeError):
    """The source already holds data and ``--reset`` was not given."""


@dataclass
class SeedReport:
    """What a seed run loaded: rows and injected defects per table, and how long it took."""

    rows: dict[str, int] = field(default_factory=dict)
    defects: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def source_row_counts(dsn: str, schema: str = SOURCE_SCHEMA) -> dict[str, int]:
    """Row count of every contract table that exists in the source (missing tables are absent).
    Existence comes from the catalog, which every role may read: a table the role may not read
    is not taken for a missing one (its count raises the server's "permission denied")."""
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
            parameters=(schema,),
        )
        existing = {r[0] for r in cur.fetchall()} & {c.name for c in in_dependency_order()}
        counts = {}
        for name in sorted(existing):
            cur.execute(f"SELECT count(*) FROM {qualified(schema, name)}")
            counts[name] = cur.fetchone()[0]
        return counts


def seed_source(
    dsn: str,
    options: SeedOptions,
    *,
    reset: bool = False,
    schema: str = SOURCE_SCHEMA,
    progress: bool | None = None,
) -> SeedReport:
    """Create ``schema`` and the ten tables if missing and fill them with generated data.

    Refuses (:class:`SourceNotEmptyError`) when any of the tables holds rows, unless ``reset``,
    which drops and recreates the ten tables (nothing else in the schema is touched). Everything
    happens in one transaction: a failure leaves the source as it was.
    """
    started = time.perf_counter()
    existing = {name: n for name, n in source_row_counts(dsn, schema).items() if n}
    if existing and not reset:
        listing = ", ".join(f"{schema}.{name} ({n:,} rows)" for name, n in existing.items())
        raise SourceNotEmptyError(
            f"the source already holds data: {listing}. Pass --reset to drop and recreate the "
            f"ten source tables, or seed another database via BRONZE_SOURCE_DSN."
        )
    contracts = in_dependency_order()
    generator = InventoryGenerator(options)
    total = sum(rows_for(c, options.scale) for c in contracts)
    show = sys.stderr.isatty() if progress is None else progress
    report = SeedReport()
    with connect(dsn) as conn, conn.cursor() as cur:
        statements = drop_table_statements(contracts, schema) if reset else []
        for sql in statements + create_schema_statements(contracts, schema, indexes=False):
            cur.execute(sql)
        with tqdm(total=total, unit="rows", desc="seeding", disable=not show) as bar:
            for table in generator.generate_all():
                name = table.contract.name
                bar.set_postfix_str(name)
                for batch in table.data.to_batches(max_chunksize=COPY_CHUNK_ROWS):
                    cur.adbc_ingest(name, batch, mode="append", db_schema_name=schema)
                    bar.update(batch.num_rows)
                report.rows[name] = table.data.num_rows
                report.defects[name] = table.defects
        for sql in create_index_statements(contracts, schema):  # built once, after the rows are in
            cur.execute(sql)
        for contract in contracts:
            cur.execute(f"ANALYZE {qualified(schema, contract.name)}")
        conn.commit()
    report.seconds = time.perf_counter() - started
    log.info("seeded %s rows into %s in %.1f s", f"{report.total_rows:,}", schema, report.seconds)
    return report
