"""The per-record score of ARCHITECTURE §3 as one Spark SQL column, from the contract's rules
(the same rules :mod:`bronze_assets.lib.enrich.score` turns into Polars expressions)."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from bronze_assets.contracts import (
    Comparison,
    Contract,
    NotAfterLoadDateRule,
    RangeRule,
    RegexRule,
    ValueSetRule,
)

if TYPE_CHECKING:
    from pyspark.sql import Column


def java_regex(pattern: str) -> str:
    """A contract pattern (Rust/RE2 syntax, as Polars runs it) for Java's regex engine: Unicode
    character classes like Rust's (``(?U)``), and a final ``$`` that means the end of the text
    (Java's ``$`` also matches before a final line break)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + "\\z"
    return "(?U)" + pattern


def _count(flags: list[Column]) -> Column:
    from pyspark.sql import functions as F

    total = F.lit(0)
    for flag in flags:
        total = total + F.when(flag, 1).otherwise(0)
    return total


def score_column(contract: Contract, load_date: date, unreadable: dict[str, Column]) -> Column:
    """The §3 score (int) of every row; ``unreadable`` flags values that were present in the
    source but could not be stored (they score ``schema_fail`` and never count as NULL)."""
    from pyspark.sql import functions as F

    def col(name: str) -> Column:
        return F.col(f"`{name}`")

    fail = F.lit(False)
    for flag in unreadable.values():
        fail = fail | flag
    nulls = [col(c).isNull() & ~unreadable.get(c, F.lit(False)) for c in contract.quality.required]
    formats = []
    for rule in contract.quality.formats:
        if isinstance(rule, RegexRule):
            ok = col(rule.column).rlike(java_regex(rule.pattern))
        elif isinstance(rule, ValueSetRule):
            ok = col(rule.column).isin(list(rule.values))
        else:  # pragma: no cover - the contract type admits only these two
            raise TypeError(f"unknown format rule {rule!r}")
        formats.append(col(rule.column).isNotNull() & ~ok)
    ranges = []
    for rule in contract.quality.ranges:
        if isinstance(rule, NotAfterLoadDateRule):
            ok = col(rule.column) <= F.lit(load_date)
        elif isinstance(rule, RangeRule):
            value = col(rule.column).cast("double")
            ok = value >= F.lit(rule.bound) if rule.op is Comparison.GE else value > F.lit(rule.bound)
        else:  # pragma: no cover
            raise TypeError(f"unknown range rule {rule!r}")
        ranges.append(col(rule.column).isNotNull() & ~ok)
    penalty = (F.when(fail, 40).otherwise(0) + F.least(10 * _count(nulls), F.lit(30))
               + F.least(5 * _count(formats), F.lit(20)) + F.least(2 * _count(ranges), F.lit(10)))
    return F.greatest(F.lit(0), F.lit(100) - penalty).cast("int")
