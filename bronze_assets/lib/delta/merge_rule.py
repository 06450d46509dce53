"""The MERGE rule (ARCHITECTURE §2.3, with §2.2's one-time re-hash of v1 tables), written once for
every engine.

A plan joins each staged key with the target's row for it; the rule says what happens to the key:
insert, update, re-hash (a v1 row whose content is unchanged: only its ``record_hash`` becomes
the v2 one), or nothing (unchanged, or FORGOTTEN: never written again). Each engine evaluates the
rule over its own column expressions (Polars on the local engine, Spark SQL columns on Spark);
both combine booleans with ``&``, ``|`` and ``~``, so the rule is this code, not a copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from bronze_assets.lib.enrich.metadata import ACTIVE, DELETED, FORGOTTEN

INSERT, UPDATE, REHASH, DELETE = "I", "U", "H", "D"  # a plan row's operation

E = TypeVar("E")  # an engine's boolean column expression


@dataclass(frozen=True)
class PlanTerms(Generic[E]):
    """What the rule reads of one staged key joined with the target (booleans, never NULL)."""

    is_new: E  # the target has no row with the key
    status: Callable[[str], E]  # whether the target row's status is this one (False for a new key)
    hash_differs: E  # the staged v2 hash is not the target's (an unknown hash counts as different)
    v1_hash_equal: E | None  # migrating a v1 table: the staged row's v1 hash equals the target's
    rewrite_unchanged: E  # rewrite unchanged rows too (a new source column fills them in)
    false: E  # the engine's constant False


@dataclass(frozen=True)
class Decision(Generic[E]):
    """The rule's answer for a key: the operations in order (the first whose condition holds),
    and whether the key is FORGOTTEN (counted as skipped, never written)."""

    operations: tuple[tuple[E, str], ...]
    forgotten: E


def decide(terms: PlanTerms[E]) -> Decision[E]:
    """Classify a staged key (§2.3): new → insert; FORGOTTEN → nothing; content changed (or the key
    was DELETED and is back) → update; a v1 row equal under v1 → re-hash only; else nothing."""
    forgotten = terms.status(FORGOTTEN)
    rehash = terms.false if terms.v1_hash_equal is None \
        else terms.status(ACTIVE) & terms.hash_differs & terms.v1_hash_equal
    changed = ~terms.is_new & ~forgotten & ~rehash & (
        terms.hash_differs | terms.status(DELETED) | terms.rewrite_unchanged)
    return Decision(((terms.is_new, INSERT), (changed, UPDATE), (rehash, REHASH)), forgotten)
