"""DDL of the source tables, generated from the contracts (ARCHITECTURE §2.1)."""

from __future__ import annotations

from collections.abc import Iterable

from bronze_assets.contracts import Contract, LoadPattern


def quote_ident(name: str) -> str:
    """Quote a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote a PostgreSQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def qualified(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def create_table_sql(contract: Contract, schema: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` with the contract's columns, types and primary key."""
    cols = [f"    {quote_ident(c.name)} {c.type.value}" for c in contract.columns]
    if contract.primary_key:
        cols.append(f"    PRIMARY KEY ({', '.join(quote_ident(c) for c in contract.primary_key)})")
    body = ",\n".join(cols)
    return f"CREATE TABLE IF NOT EXISTS {qualified(schema, contract.name)} (\n{body}\n)"


def create_index_statements(contracts: Iterable[Contract], schema: str,
                            concurrently: bool = False) -> list[str]:
    """An index on ``updated_at`` for every table loaded by watermark (incremental and batch):
    a scheduled run reads only the rows changed since the watermark, which without it is a
    full scan of the table (measured on 2 M rows: 210 ms → 7 ms per scan). ``concurrently``:
    built without blocking the table's writers (not in a transaction; not on a partitioned table)."""
    how = "CONCURRENTLY " if concurrently else ""
    return [f"CREATE INDEX {how}IF NOT EXISTS {quote_ident(c.source_name + '_updated_at')} "
            f"ON {qualified(schema, c.source_name)} (updated_at)"
            for c in contracts if c.load_pattern is not LoadPattern.FULL]


def create_schema_statements(contracts: Iterable[Contract], schema: str, indexes: bool = True) -> list[str]:
    """Statements creating ``schema``, every contract's table and (``indexes``) the recommended
    ``updated_at`` indexes, each if missing."""
    contracts = list(contracts)
    return [f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"] + [
        create_table_sql(c, schema) for c in contracts
    ] + (create_index_statements(contracts, schema) if indexes else [])


def drop_table_statements(contracts: Iterable[Contract], schema: str) -> list[str]:
    """Statements dropping every contract's table (only those; the schema is kept)."""
    return [f"DROP TABLE IF EXISTS {qualified(schema, c.name)}" for c in contracts]
