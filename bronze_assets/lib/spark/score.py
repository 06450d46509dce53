"""The per-record score of ARCHITECTURE §3 as one Spark SQL column, interpreting the same rule
model (:mod:`bronze_assets.lib.quality.rules`) as the Polars score and the GX suite."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

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
    rules,
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


def violation(rule: Rule, unreadable: dict[str, Column]) -> Column:
    """True where a row breaks ``rule`` (an unreadable value is a schema failure, not a NULL)."""
    from pyspark.sql import functions as F

    col = F.col(f"`{rule.column}`")
    match rule.test:
        case NotNull():
            return col.isNull() & ~unreadable.get(rule.column, F.lit(False))
        case Matches(pattern):
            ok = col.rlike(java_regex(pattern))
        case InSet(values):
            ok = col.isin(list(values))
        case AtMost(value):
            ok = col <= F.lit(value)
        case Above(bound, strict):
            number = col.cast("double")
            ok = number > F.lit(bound) if strict else number >= F.lit(bound)
    return col.isNotNull() & ~ok


def score_column(contract: Contract, load_date: date, unreadable: dict[str, Column]) -> Column:
    """The §3 score (int) of every row; ``unreadable`` flags values that were present in the
    source but could not be stored (they score ``schema_fail`` and never count as NULL)."""
    from pyspark.sql import functions as F

    fail = F.lit(False)
    for flag in unreadable.values():
        fail = fail | flag
    penalty = F.when(fail, SCHEMA_FAIL_PENALTY).otherwise(0)
    counts: dict[Kind, Column] = {}
    for rule in rules(contract, load_date):
        flag = F.when(violation(rule, unreadable), 1).otherwise(0)
        counts[rule.kind] = counts.get(rule.kind, F.lit(0)) + flag
    for kind, count in counts.items():
        p = PENALTIES[kind]
        penalty = penalty + F.least(p.per_violation * count, F.lit(p.cap))
    return F.greatest(F.lit(0), F.lit(100) - penalty).cast("int")
