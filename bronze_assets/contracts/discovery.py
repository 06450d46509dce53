"""A contract from a live table's catalog (ARCHITECTURE §2.10): columns in ordinal order, their
``format_type`` spellings parsed into :class:`~bronze_assets.contracts.types.PgType` (enums and
domains resolved through ``pg_type``), nullability and the primary key from its constraint.

The catalog is read by :func:`bronze_assets.lib.source.introspect.discover_contract` (one
query of ``catalog_sql`` there); :func:`contract_from_catalog` builds the contract from rows already
read, so a component that records the discovered columns in its YAML can rebuild the same
contract without a database. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bronze_assets.contracts.model import Cadence, Column, Contract, LoadPattern, Partitioning
from bronze_assets.contracts.types import PgType


@dataclass(frozen=True)
class CatalogColumn:
    """One column as the catalog describes it."""

    name: str
    format_type: str  # format_type(atttypid, atttypmod)
    kind: str  # pg_type.typtype: b base, e enum, d domain, c composite, r range, m multirange, p pseudo
    base: str | None  # a domain's base type, format_type(typbasetype, typtypmod)
    nullable: bool
    identity: str  # pg_attribute.attidentity: '' / 'a' always / 'd' by default
    generated: str  # pg_attribute.attgenerated: '' / 's' stored
    key_position: int | None  # position in the primary key (1-based), None if not part of it

    @property
    def type(self) -> PgType:
        return PgType.parse(self.format_type, self.kind, self.base)


def contract_from_catalog(
    table: str,
    columns: Sequence[CatalogColumn],
    *,
    primary_key: Sequence[str] | None = None,
    load_pattern: LoadPattern = LoadPattern.FULL,
    cadence: Cadence = Cadence.DAILY,
    description: str | None = None,
    schema: str = "tests",
) -> Contract:
    """The contract of ``table`` (in source ``schema``) from its catalog columns (in ordinal order:
    the §2.2 hash order).

    ``primary_key`` overrides the table's own; a table with neither loads as a full snapshot
    (``Contract.keyless``). The business
    overlay (rules, PII, partitioning …) is the caller's: the contract has none.
    """
    if not columns:
        raise LookupError(f"table {table!r} not found (or it has no columns)")
    in_key = sorted((c for c in columns if c.key_position is not None), key=lambda c: c.key_position or 0)
    key = tuple(primary_key) if primary_key is not None else tuple(c.name for c in in_key)
    return Contract(
        name=table,
        description=description or f"{table} (discovered from the catalog)",
        columns=tuple(Column(c.name, c.type, c.nullable) for c in columns),
        primary_key=key,
        load_pattern=load_pattern,
        cadence=cadence,
        partitioning=Partitioning.none(),
        zorder_columns=(),
        source_schema=schema,
    )
