"""DDL of the source tables, generated from the contracts (ARCHITECTURE §2.1)."""

from __future__ import annotations

from collections.abc import Iterable

from bronze_assets.contracts import Contract


def quote_ident(name: str) -> str:
    """Quote a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def create_table_sql(contract: Contract, schema: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` with the contract's columns, types and primary key."""
    cols = [f"    {quote_ident(c.name)} {c.type.value}" for c in contract.columns]
    pk = ", ".join(quote_ident(c) for c in contract.primary_key)
    cols.append(f"    PRIMARY KEY ({pk})")
    body = ",\n".join(cols)
    return f"CREATE TABLE IF NOT EXISTS {qualified(schema, contract.name)} (\n{body}\n)"


def create_schema_statements(contracts: Iterable[Contract], schema: str) -> list[str]:
    """Statements creating ``schema`` and every contract's table if missing."""
    return [f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"] + [
        create_table_sql(c, schema) for c in contracts
    ]


def drop_table_statements(contracts: Iterable[Contract], schema: str) -> list[str]:
    """Statements dropping every contract's table (only those; the schema is kept)."""
    return [f"DROP TABLE IF EXISTS {qualified(schema, c.name)}" for c in contracts]
