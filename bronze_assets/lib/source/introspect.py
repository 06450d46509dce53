"""``bronze init``: introspect a source and write (or refresh) its tables file (ARCHITECTURE §2.10).

One catalog query lists every table of the chosen schemas with its columns (the same rows as
:func:`catalog_sql`: ``format_type`` spelling, enum/domain,
nullability, position in the primary key), a second its single-column foreign keys. A new table
gets sensible defaults, a refreshed one keeps the user's overlay and gets the catalog's columns:

* primary key from its constraint; a table without one loads as a full snapshot, its rows
  identified by content (:data:`NO_KEY`, the contract's ``record_key``);
* ``updated_at`` present, a primary key and more than ``incremental_rows`` rows (the planner's
  estimate) → incremental by watermark, hourly, daily ``load_date`` partitions; otherwise a full
  load, daily; no ``updated_at``: listed with ``skip`` (:data:`NO_UPDATED_AT`);
* a composite primary key loads by watermark (or full), never by CDC (see :data:`COMPOSITE_KEY`);
* Z-order on the primary key; foreign keys from the constraints between tables of the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from bronze_assets.contracts.discovery import CatalogColumn, contract_from_catalog
from bronze_assets.contracts.model import Cadence, Contract, LoadPattern
from bronze_assets.contracts.tablefile import (
    BRONZE_NAME,
    KINDS,
    ColumnSpec,
    Note,
    SourceSpec,
    TablesFile,
    TableSpec,
    matches,
)
from bronze_assets.contracts.types import PgType, type_notes
from bronze_assets.lib.source.ddl import qualified, quote_literal
from bronze_assets.lib.source.postgres import connect

INCREMENTAL_ROWS = 100_000
NO_KEY = ("no primary key: loads as a full snapshot. Every run reads the whole table; a row is "
          "identified by its content (record_key = record_hash#n, n numbering identical rows), so a "
          "changed row is a soft delete plus an insert and a removed copy a soft delete. Name the "
          "column(s) that identify a row in primary_key to merge by key (and load incrementally)")
# what bronze init wrote for such a table before it loaded them: a refresh loads the table
_NO_KEY_SKIP = ("no primary key: bronze merges rows by key, and a table without one is not loaded. Name the "
                "column(s) that identify a row in primary_key and delete this skip line (or add a primary "
                "key to the table and run bronze init --refresh)")
NO_UPDATED_AT = ("no updated_at column: every bronze table needs one (watermark, partitions, freshness); "
                 "add it to the table (set on insert and update) and run bronze init --refresh")
COMPOSITE_KEY = ("composite primary key ({key}): loads by watermark on updated_at (or full), never by CDC: "
                 "log-based CDC reads the keys of changed rows from the replication stream and "
                 "re-reads them with a key range over a single integer key (cdc: true is refused)")
NOT_INTEGER_KEY = ("primary key {key} is not an integer: loads by watermark on updated_at (or full); "
                   "CDC needs a single integer key (cdc: true is refused)")
_AUTO_SKIPS = (_NO_KEY_SKIP, NO_UPDATED_AT)


def _names(values: Sequence[str]) -> str:
    return "ARRAY[" + ", ".join(quote_literal(v) for v in values) + "]::text[]"


def tables_sql(schemas: Sequence[str]) -> str:
    """Every ordinary or partitioned table of ``schemas`` (not the partitions) with its columns."""
    return (
        "SELECT n.nspname::text, c.relname::text, c.reltuples::bigint, a.attname::text, "
        "format_type(a.atttypid, a.atttypmod), t.typtype::text, "
        "CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END, "
        "NOT a.attnotnull, a.attidentity::text, a.attgenerated::text, "
        "array_position(i.indkey::int2[], a.attnum) - array_lower(i.indkey::int2[], 1) + 1 "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "JOIN pg_type t ON t.oid = a.atttypid "
        "LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary "
        f"WHERE n.nspname::text = ANY({_names(schemas)}) "
        "AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "ORDER BY n.nspname, c.relname, a.attnum"
    )


def foreign_keys_sql(schemas: Sequence[str]) -> str:
    """Single-column foreign keys of the tables of ``schemas``."""
    return (
        "SELECT n.nspname::text, c.relname::text, a.attname::text, pn.nspname::text, pc.relname::text, "
        "pa.attname::text FROM pg_constraint k "
        "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_class pc ON pc.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1] "
        "JOIN pg_attribute pa ON pa.attrelid = k.confrelid AND pa.attnum = k.confkey[1] "
        f"WHERE k.contype = 'f' AND cardinality(k.conkey) = 1 AND n.nspname::text = ANY({_names(schemas)}) "
        "ORDER BY 1, 2, 3"
    )


@dataclass
class SourceTable:
    """A table as the catalog describes it."""

    schema: str
    table: str
    rows: int  # the planner's estimate (exact up to INCREMENTAL_ROWS when never analysed)
    columns: list[CatalogColumn] = field(default_factory=list)

    @property
    def primary_key(self) -> list[str]:
        keyed = sorted((c for c in self.columns if c.key_position is not None),
                       key=lambda c: c.key_position or 0)
        return [c.name for c in keyed]


def read_source(dsn: str, schemas: Sequence[str]) -> tuple[dict[tuple[str, str], SourceTable],
                                                             list[tuple[str, str, str, str, str, str]]]:
    """The tables of ``schemas`` (by (schema, table)) and their single-column foreign keys."""
    from bronze_assets.lib.source.postgres import connect

    tables: dict[tuple[str, str], SourceTable] = {}
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(tables_sql(schemas))
        for schema, table, rows, name, fmt, kind, base, nullable, identity, generated, pos in cur.fetchall():
            entry = tables.setdefault((schema, table), SourceTable(schema, table, int(rows)))
            entry.columns.append(CatalogColumn(name, fmt, kind, base, bool(nullable), identity or "",
                                               generated or "", None if pos is None else int(pos)))
        for entry in tables.values():
            if entry.rows < 0:  # never analysed (PostgreSQL 14+): count, up to the threshold
                cur.execute(f"SELECT count(*) FROM (SELECT 1 FROM {qualified(entry.schema, entry.table)} "
                            f"LIMIT {INCREMENTAL_ROWS + 1}) s")
                entry.rows = int(cur.fetchall()[0][0])
        cur.execute(foreign_keys_sql(schemas))
        fks = [tuple(r) for r in cur.fetchall()]
    return tables, fks  # type: ignore[return-value]


def bronze_name(schema: str, table: str, taken: set[str]) -> str:
    """A bronze name for ``schema.table``: lowercase, ``_`` for anything else; the schema joins it
    when another schema's table has the same name."""
    base = re.sub(r"[^a-z0-9_]+", "_", table.lower()).strip("_") or "table"
    if not BRONZE_NAME.match(base):
        base = f"t_{base}"
    name = base if base not in taken else f"{re.sub(r'[^a-z0-9_]+', '_', schema.lower())}_{base}"
    n = 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def identifier(text: str) -> str:
    """``text`` as a Dagster/Python-friendly identifier: lowercase letters, digits and ``_``."""
    name = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "source"
    return name if BRONZE_NAME.match(name) else f"s_{name}"


def column_specs(columns: Sequence[CatalogColumn]) -> dict[str, str]:
    """The file's ``columns`` entry of a table (name → type text), in the catalog's order."""
    return {c.name: ColumnSpec(c.name, c.format_type, c.nullable, KINDS.get(c.kind, "base"), c.base).text
            for c in columns}


def _type_notes(name: str, src: SourceTable) -> list[Note]:
    """A note per column bronze stores as another type than its own (README "Type mapping")."""
    lines = type_notes(f"{src.schema}.{src.table}", [(c.name, c.type) for c in src.columns])
    return [Note(name, line) for line in lines]


def _key_notes(name: str, key: Sequence[str], columns: Sequence[CatalogColumn]) -> list[Note]:
    if not key:
        return [Note(name, NO_KEY)]
    if len(key) > 1:
        return [Note(name, COMPOSITE_KEY.format(key=", ".join(key)))]
    if len(key) == 1:
        col = next((c for c in columns if c.name == key[0]), None)
        if col is not None and not PgType.parse(col.format_type, col.kind, col.base).is_integer:
            return [Note(name, NOT_INTEGER_KEY.format(key=key[0]))]
    return []


def new_table(name: str, src: SourceTable, default_schema: str,
              incremental_rows: int) -> tuple[TableSpec, list[Note]]:
    """The entry of a table seen for the first time, with the defaults of the module docstring."""
    key = src.primary_key
    has_updated_at = any(c.name == "updated_at" for c in src.columns)
    skip = None if has_updated_at else NO_UPDATED_AT
    big = has_updated_at and bool(key) and src.rows > incremental_rows
    why = (f", updated_at: incremental by watermark (more than {incremental_rows:,} rows)" if big
           else ": full snapshot (no primary key)" if has_updated_at and not key
           else ": full load (MERGE of the whole table, soft deletes)" if has_updated_at else "")
    notes = [Note(name, f"{src.schema}.{src.table}: ≈{src.rows:,} rows{why}")]
    notes += _key_notes(name, key, src.columns) + _type_notes(name, src)
    spec = TableSpec(
        schema=None if src.schema == default_schema else src.schema,
        table=None if src.table == name else src.table,
        skip=skip,
        primary_key=key,
        load_pattern="incremental" if big else "full",
        cadence="hourly" if big else "daily",
        partitioning="daily" if big else "none",
        zorder_columns=key,
        columns=column_specs(src.columns),
    )
    return spec, notes


@dataclass
class Introspection:
    file: TablesFile
    notes: list[Note]
    added: list[str]
    refreshed: list[str]
    missing: list[str]  # tables of the file the source no longer has (kept; their loads will fail)


def introspect(dsn: str, source: SourceSpec, *, existing: TablesFile | None = None, name: str | None = None,
               incremental_rows: int = INCREMENTAL_ROWS) -> Introspection:
    """The tables file of ``source`` at ``dsn``; with ``existing``, that file refreshed (its overlay
    kept, its columns re-discovered, new matching tables added with defaults)."""
    default_schema = source.schemas[0]
    catalog, fks = read_source(dsn, source.schemas)
    tables: dict[str, TableSpec] = {}
    notes: list[Note] = []
    added, refreshed, missing = [], [], []
    by_source: dict[tuple[str, str], str] = {}
    for table_name, spec in (existing.tables if existing else {}).items():
        schema = spec.schema_ or (existing.source.schemas[0] if existing else default_schema)
        src = catalog.get((schema, spec.table or table_name))
        by_source[(schema, spec.table or table_name)] = table_name
        if src is None:
            tables[table_name] = spec
            missing.append(table_name)
            continue
        key = list(spec.primary_key) or src.primary_key
        has_updated_at = any(c.name == "updated_at" for c in src.columns)
        skip = spec.skip
        if skip is None or skip in _AUTO_SKIPS:
            skip = None if has_updated_at else NO_UPDATED_AT
        update: dict[str, object] = {"columns": column_specs(src.columns), "primary_key": key, "skip": skip,
                                     "zorder_columns": list(spec.zorder_columns) or key}
        if spec.skip == _NO_KEY_SKIP and not key:  # listed, not loaded, before: a full snapshot now
            update |= {"load_pattern": "full", "partitioning": "none", "cadence": "daily"}
        tables[table_name] = spec.model_copy(update=update)
        notes += _key_notes(table_name, key, src.columns) + _type_notes(table_name, src)
        refreshed.append(table_name)
    taken = set(tables)
    for (schema, table), src in sorted(catalog.items()):
        if (schema, table) in by_source or not matches(source.tables, schema, table) \
                or matches(source.exclude, schema, table):
            continue
        new_name = bronze_name(schema, table, taken)
        taken.add(new_name)
        by_source[(schema, table)] = new_name
        tables[new_name], table_notes = new_table(new_name, src, default_schema, incremental_rows)
        notes += table_notes
        added.append(new_name)
    for schema, table, column, parent_schema, parent_table, parent_column in fks:
        child, parent = by_source.get((schema, table)), by_source.get((parent_schema, parent_table))
        if child in added and parent is not None:
            spec = tables[child]
            fk = f"{column} -> {parent}.{parent_column}"
            if fk not in spec.foreign_keys:
                tables[child] = spec.model_copy(update={"foreign_keys": [*spec.foreign_keys, fk]})
    file = TablesFile(source=source, name=existing.name if existing else name and identifier(name),
                      tables=tables)
    return Introspection(file, notes, added, refreshed, missing)


def catalog_sql(schema: str, table: str) -> str:
    """The catalog query of :func:`discover_contract` (rows as :class:`CatalogColumn` fields)."""
    name = f"quote_ident({quote_literal(schema)}) || '.' || quote_ident({quote_literal(table)})"
    regclass = f"to_regclass({name})"
    return (
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typtype::text, base.spelling, "
        "NOT a.attnotnull, a.attidentity::text, a.attgenerated::text, "
        "array_position(i.indkey::int2[], a.attnum) - array_lower(i.indkey::int2[], 1) + 1 "
        "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        # a domain's base type, through domains over domains down to the type they all rest on
        "LEFT JOIN LATERAL (WITH RECURSIVE b(oid, typmod, depth) AS ("
        "  SELECT t.typbasetype, t.typtypmod, 1 UNION ALL "
        "  SELECT d.typbasetype, CASE WHEN d.typtypmod >= 0 THEN d.typtypmod ELSE b.typmod END, b.depth + 1 "
        "  FROM b JOIN pg_type d ON d.oid = b.oid WHERE d.typtype = 'd') "
        "SELECT format_type(b.oid, b.typmod) AS spelling FROM b ORDER BY b.depth DESC LIMIT 1"
        ") base ON t.typtype = 'd' "
        "LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary "
        f"WHERE a.attrelid = {regclass} AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
    )


def read_catalog(dsn: str, table: str, schema: str) -> list[CatalogColumn]:
    """The catalog rows of ``schema.table`` (an empty list when the table does not exist)."""
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(catalog_sql(schema, table))
        rows = cur.fetchall()
    return [CatalogColumn(name, fmt, kind, base, bool(nullable), identity or "", generated or "",
                          None if position is None else int(position))
            for name, fmt, kind, base, nullable, identity, generated, position in rows]


def discover_contract(
    dsn: str,
    table: str,
    schema: str,
    *,
    primary_key: Sequence[str] | None = None,
    load_pattern: LoadPattern = LoadPattern.FULL,
    cadence: Cadence = Cadence.DAILY,
    description: str | None = None,
) -> Contract:
    """The contract of the live table ``schema.table`` at ``dsn`` (see :func:`contract_from_catalog`)."""
    columns = read_catalog(dsn, table, schema)
    if not columns:
        raise LookupError(f"the source has no table {schema}.{table}")
    return contract_from_catalog(table, columns, primary_key=primary_key, load_pattern=load_pattern,
                                 cadence=cadence, description=description, schema=schema)
