"""Per-record data-quality score of ARCHITECTURE §3, as vectorised Polars expressions.

``score = max(0, 100 − 40·schema_fail − min(10·nulls, 30) − min(5·format, 20) − min(2·range, 10))``;
a NULL counts only against the null rule, never as a format or range violation.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from bronze_assets.contracts import (
    Comparison,
    Contract,
    NotAfterLoadDateRule,
    RangeRule,
    RegexRule,
    ValueSetRule,
)


def null_violations(contract: Contract, unreadable: dict[str, pl.Expr] | None = None) -> dict[str, pl.Expr]:
    """One boolean expression per required column: true where the value is NULL.

    ``unreadable`` flags values that were present but could not be read as the contract type
    (NULL after a per-record cast): those count as a schema failure, not as a NULL.
    """
    unreadable = unreadable or {}
    return {f"null:{c}": pl.col(c).is_null() & ~unreadable.get(c, pl.lit(False))
            for c in contract.quality.required}


def format_violations(contract: Contract) -> dict[str, pl.Expr]:
    """One boolean expression per format rule: true where a non-NULL value is malformed."""
    out: dict[str, pl.Expr] = {}
    for rule in contract.quality.formats:
        col = pl.col(rule.column)
        if isinstance(rule, RegexRule):
            ok = col.str.contains(rule.pattern)
        elif isinstance(rule, ValueSetRule):
            ok = col.is_in(list(rule.values))
        else:  # pragma: no cover - the contract type admits only these two
            raise TypeError(f"unknown format rule {rule!r}")
        out[f"format:{rule.column}"] = col.is_not_null() & ~ok
    return out


def range_violations(contract: Contract, load_date: date) -> dict[str, pl.Expr]:
    """One boolean expression per range rule: true where a non-NULL value is out of range."""
    out: dict[str, pl.Expr] = {}
    for rule in contract.quality.ranges:
        col = pl.col(rule.column)
        if isinstance(rule, NotAfterLoadDateRule):
            ok = col <= pl.lit(load_date)
        elif isinstance(rule, RangeRule):
            bound = pl.lit(rule.bound)
            ok = col.cast(pl.Float64) >= bound if rule.op is Comparison.GE else col.cast(pl.Float64) > bound
        else:  # pragma: no cover
            raise TypeError(f"unknown range rule {rule!r}")
        out[f"range:{rule.column}"] = col.is_not_null() & ~ok
    return out


def score_columns(contract: Contract) -> list[str]:
    """The source columns :func:`score_expr` reads (besides the ``unreadable`` flags)."""
    q = contract.quality
    names = {*q.required, *(r.column for r in q.formats), *(r.column for r in q.ranges)}
    return [c for c in contract.column_names if c in names]


def _count(exprs: dict[str, pl.Expr]) -> pl.Expr:
    if not exprs:
        return pl.lit(0, dtype=pl.Int32)
    return pl.sum_horizontal([e.cast(pl.Int32) for e in exprs.values()])


def score_expr(contract: Contract, load_date: date, unreadable: dict[str, pl.Expr] | None = None) -> pl.Expr:
    """The §3 score of every record as an Int32 expression.

    ``unreadable`` maps columns to flags of values that could not be read as the contract type
    (semi-structured input): such a record is a ``schema_fail`` (−40, once per record).
    """
    flags = list((unreadable or {}).values())
    fail = (pl.any_horizontal(flags) if flags else pl.lit(False)).cast(pl.Int32)
    nulls = _count(null_violations(contract, unreadable))
    formats = _count(format_violations(contract))
    ranges = _count(range_violations(contract, load_date))
    penalty = (
        40 * fail
        + pl.min_horizontal(10 * nulls, pl.lit(30))
        + pl.min_horizontal(5 * formats, pl.lit(20))
        + pl.min_horizontal(2 * ranges, pl.lit(10))
    )
    return pl.max_horizontal(pl.lit(0), pl.lit(100) - penalty).cast(pl.Int32)
