"""Compare a source table's live columns and types with its contract (the schema gate)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bronze_assets.contracts import Contract, TypeChangePolicy
from bronze_assets.lib.source.ddl import quote_literal


@dataclass
class SchemaDrift:
    """How the live source table differs from the contract."""

    table: str
    missing: list[str] = field(default_factory=list)
    changed: list[tuple[str, str, str]] = field(default_factory=list)  # column, expected, found
    added: list[tuple[str, str]] = field(default_factory=list)  # column, type
    rescued: list[tuple[str, str, str]] = field(default_factory=list)  # read per record (policy rescue)
    source: str = ""  # schema.table in the source (default: tests.<table>)

    @property
    def breaking(self) -> bool:
        """A missing column or a changed type: the batch cannot be read as the contract says."""
        return bool(self.missing or self.changed)

    def describe(self) -> str:
        parts = [f"column {c} is missing (expected {t})" for c, t in self._missing_types()]
        parts += [f"column {c} has type {found}, expected {want}" for c, want, found in self.changed]
        parts += [f"column {c} has type {found}, expected {want}: read per record, unreadable values "
                  f"quarantined" for c, want, found in self.rescued]
        parts += [f"new column {c} ({t})" for c, t in self.added]
        where = self.source or f"tests.{self.table}"
        return f"{where}: " + "; ".join(parts) if parts else f"{where}: matches"

    def _missing_types(self) -> list[tuple[str, str]]:
        from bronze_assets.contracts import CONTRACTS

        contract = CONTRACTS.get(self.table)
        return [(c, contract.column(c).type.value if contract else "?") for c in self.missing]


def live_columns_sql(contract: Contract, schema: str | None = None) -> str:
    """Columns and declared types (``format_type``, e.g. ``numeric(10,2)``) of the live table."""
    return (
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON a.attrelid = c.oid JOIN pg_namespace n ON c.relnamespace = n.oid "
        f"WHERE n.nspname = {quote_literal(schema or contract.source_schema)} "
        f"AND c.relname = {quote_literal(contract.source_name)} "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
    )


def compare(contract: Contract, live: list[tuple[str, str]]) -> SchemaDrift:
    """The drift between the contract and the live ``(column, type)`` list."""
    found = dict(live)
    drift = SchemaDrift(contract.name, source=contract.source_ref)
    for column in contract.columns:
        if column.name not in found:
            drift.missing.append(column.name)
        elif found[column.name] != column.type.value:
            change = (column.name, column.type.value, found[column.name])
            rescue = contract.on_type_change is TypeChangePolicy.RESCUE
            (drift.rescued if rescue else drift.changed).append(change)
    known = set(contract.column_names)
    drift.added = [(c, t) for c, t in live if c not in known]
    return drift
