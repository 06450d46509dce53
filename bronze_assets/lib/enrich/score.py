"""Per-record data-quality score of ARCHITECTURE §3, as vectorised Polars expressions.

``score = max(0, 100 − 40·schema_fail − min(10·nulls, 30) − min(5·format, 20) − min(2·range, 10))``;
a NULL counts only against the null rule, never as a format or range violation. The rules and
penalties come from :mod:`bronze_assets.lib.quality.rules` (shared with GX and Spark).
"""

from __future__ import annotations

from datetime import date

import polars as pl

from bronze_assets.contracts import Contract
from bronze_assets.lib.quality.rules import (
    PENALTIES,
    SCHEMA_FAIL_PENALTY,
    Above,
    AtMost,
    InSet,
    Kind,
    Matches,
    NotNull,
    Rule,
    rule_columns,
    rules,
)


def violation(rule: Rule, unreadable: dict[str, pl.Expr] | None = None) -> pl.Expr:
    """True where a record breaks ``rule``. ``unreadable`` flags values that were present but
    could not be read as the contract type: those are a schema failure, not a NULL."""
    col = pl.col(rule.column)
    match rule.test:
        case NotNull():
            return col.is_null() & ~(unreadable or {}).get(rule.column, pl.lit(False))
        case Matches(pattern):
            ok = col.str.contains(pattern)
        case InSet(values):
            ok = col.is_in(list(values))
        case AtMost(value):
            ok = col <= pl.lit(value)
        case Above(bound, strict):
            number = col.cast(pl.Float64)
            ok = number > bound if strict else number >= bound
    return col.is_not_null() & ~ok


def violations(contract: Contract, load_date: date, unreadable: dict[str, pl.Expr] | None = None
               ) -> dict[str, pl.Expr]:
    """{rule id: violation flag} for every rule of the contract."""
    return {r.id: violation(r, unreadable) for r in rules(contract, load_date)}


def score_columns(contract: Contract) -> list[str]:
    """The source columns :func:`score_expr` reads (besides the ``unreadable`` flags)."""
    return rule_columns(contract)


def score_expr(contract: Contract, load_date: date, unreadable: dict[str, pl.Expr] | None = None) -> pl.Expr:
    """The §3 score of every record as an Int32 expression.

    ``unreadable`` maps columns to flags of values that could not be read as the contract type
    (semi-structured input): such a record is a ``schema_fail`` (−40, once per record).
    """
    flags = list((unreadable or {}).values())
    fail = (pl.any_horizontal(flags) if flags else pl.lit(False)).cast(pl.Int32)
    penalty = SCHEMA_FAIL_PENALTY * fail
    by_kind: dict[Kind, list[pl.Expr]] = {}
    for rule in rules(contract, load_date):
        by_kind.setdefault(rule.kind, []).append(violation(rule, unreadable).cast(pl.Int32))
    for kind, found in by_kind.items():
        p = PENALTIES[kind]
        penalty = penalty + pl.min_horizontal(p.per_violation * pl.sum_horizontal(found), pl.lit(p.cap))
    return pl.max_horizontal(pl.lit(0), pl.lit(100) - penalty).cast(pl.Int32)
