"""One rule model for the per-record score (ARCHITECTURE §3) and the GX suite.

A contract's quality rules become a flat list of :class:`Rule` s, each with a unique id
(``null:col``, ``format:col``, ``range:col``; a second rule of one kind on one column gets
``#2``), a penalty kind and a test. Three interpreters read this one list: the Polars score
(:mod:`bronze_assets.lib.enrich.score`), the Spark SQL score (:mod:`bronze_assets.lib.spark.score`)
and the GX suite (:mod:`bronze_assets.lib.quality.suites`); the penalties live here only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from bronze_assets.contracts import (
    Comparison,
    Contract,
    NotAfterLoadDateRule,
    RangeRule,
    RegexRule,
    ValueSetRule,
)


class Kind(StrEnum):
    """The §3 penalty a violation counts against."""

    NULL = "null"
    FORMAT = "format"
    RANGE = "range"


@dataclass(frozen=True)
class Penalty:
    per_violation: int
    cap: int


SCHEMA_FAIL_PENALTY = 40  # once per record with a value that could not be read as its type
PENALTIES: dict[Kind, Penalty] = {
    Kind.NULL: Penalty(10, 30),
    Kind.FORMAT: Penalty(5, 20),
    Kind.RANGE: Penalty(2, 10),
}


@dataclass(frozen=True)
class NotNull:
    """The value is present."""


@dataclass(frozen=True)
class Matches:
    """A present value matches ``pattern`` (Rust/RE2 syntax; anchored by the pattern itself)."""

    pattern: str


@dataclass(frozen=True)
class InSet:
    """A present value is one of ``values`` (case-sensitive)."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class AtMost:
    """A present value is not after ``value`` (a business date and the load date)."""

    value: date


@dataclass(frozen=True)
class Above:
    """A present value is ``> bound`` (``strict``) or ``>= bound``."""

    bound: float
    strict: bool


Test = NotNull | Matches | InSet | AtMost | Above


@dataclass(frozen=True)
class Rule:
    """One check on one column: a violation counts against ``kind``'s penalty. Only
    :class:`NotNull` looks at NULLs; every other test passes a NULL."""

    id: str
    kind: Kind
    column: str
    test: Test


def _test(rule: object, load_date: date) -> tuple[Kind, Test]:
    if isinstance(rule, RegexRule):
        return Kind.FORMAT, Matches(rule.pattern)
    if isinstance(rule, ValueSetRule):
        return Kind.FORMAT, InSet(tuple(rule.values))
    if isinstance(rule, NotAfterLoadDateRule):
        return Kind.RANGE, AtMost(load_date)
    if isinstance(rule, RangeRule):
        return Kind.RANGE, Above(rule.bound, strict=rule.op is Comparison.GT)
    raise TypeError(f"unknown quality rule {rule!r}")  # pragma: no cover - the contract type admits these


def rules(contract: Contract, load_date: date) -> list[Rule]:
    """The contract's §3 rules for a load on ``load_date``, ids unique."""
    q = contract.quality
    found: list[tuple[Kind, str, Test]] = [(Kind.NULL, c, NotNull()) for c in q.required]
    for rule in (*q.formats, *q.ranges):
        kind, test = _test(rule, load_date)
        found.append((kind, rule.column, test))
    seen: Counter[str] = Counter()
    out = []
    for kind, column, test in found:
        base = f"{kind.value}:{column}"
        seen[base] += 1
        out.append(Rule(base if seen[base] == 1 else f"{base}#{seen[base]}", kind, column, test))
    return out


def rule_columns(contract: Contract) -> list[str]:
    """The source columns the rules read, in contract order."""
    q = contract.quality
    names = {*q.required, *(r.column for r in q.formats), *(r.column for r in q.ranges)}
    return [c for c in contract.column_names if c in names]
