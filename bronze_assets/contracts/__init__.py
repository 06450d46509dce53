"""Table contracts: one typed :class:`Contract` per source table drives every pipeline step."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from bronze_assets.contracts.model import (
    ROW_KEY,
    Cadence,
    Column,
    Comparison,
    Contract,
    ForeignKey,
    LoadPattern,
    NotAfterLoadDateRule,
    Partitioning,
    PartitionKind,
    PgType,
    QualityRules,
    RangeRule,
    RegexRule,
    TypeChangePolicy,
    ValueSetRule,
)
from bronze_assets.contracts.tables import ALL, EXAMPLE, LANDING
from bronze_assets.contracts.types import TYPE_MAP, ReadMode, TypeFamily

CONTRACTS: dict[str, Contract] = {c.name: c for c in ALL}
LANDING_CONTRACTS: dict[str, Contract] = {c.name: c for c in LANDING}  # landing-zone tables (§2.6)


def get_contract(name: str) -> Contract:
    """Return the contract of source table or landing table ``name`` (a ``bz_`` prefix is accepted)."""
    key = name.removeprefix("bz_")
    known = CONTRACTS | LANDING_CONTRACTS
    try:
        return known[key]
    except KeyError:
        close = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=0.5)
        hint = f"did you mean {'bz_' if name.startswith('bz_') else ''}{close[0]}? " if close else ""
        raise KeyError(f"unknown table {name!r}; {hint}known tables: {', '.join(known)}") from None


def in_dependency_order(contracts: Iterable[Contract] | None = None) -> list[Contract]:
    """``contracts`` (default: the shipped example's ten tables, which ``bronze seed`` and ``bronze
    ddl`` create) ordered so that every foreign-key parent among them comes before its children."""
    chosen = {c.name: c for c in (EXAMPLE if contracts is None else contracts)}
    ordered: list[Contract] = []
    seen: set[str] = set()

    def visit(c: Contract) -> None:
        if c.name in seen:
            return
        seen.add(c.name)
        for fk in c.foreign_keys:
            if fk.parent_table != c.name and fk.parent_table in chosen:
                visit(chosen[fk.parent_table])
        ordered.append(c)

    for c in chosen.values():
        visit(c)
    return ordered


__all__ = [
    "CONTRACTS",
    "LANDING_CONTRACTS",
    "ROW_KEY",
    "TYPE_MAP",
    "Cadence",
    "Column",
    "Comparison",
    "Contract",
    "ForeignKey",
    "LoadPattern",
    "NotAfterLoadDateRule",
    "PartitionKind",
    "Partitioning",
    "PgType",
    "QualityRules",
    "RangeRule",
    "ReadMode",
    "RegexRule",
    "TypeChangePolicy",
    "TypeFamily",
    "ValueSetRule",
    "get_contract",
    "in_dependency_order",
]
