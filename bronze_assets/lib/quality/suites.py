"""Great Expectations suites generated from a table contract (never written per table).

The suite interprets the rule model of :mod:`bronze_assets.lib.quality.rules`: each expectation
carries ``meta.rule``, the rule id the vectorised score uses, so the two can be compared; the
primary key adds ``unique:<pk>``.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from bronze_assets.contracts import Contract
from bronze_assets.lib.quality.rules import Above, AtMost, InSet, Matches, NotNull, Rule, rules


def _expectation(ex: Any, rule: Rule) -> Any:
    meta, column = {"rule": rule.id}, rule.column
    match rule.test:
        case NotNull():
            return ex.ExpectColumnValuesToNotBeNull(column=column, meta=meta)
        case Matches(pattern):
            return ex.ExpectColumnValuesToMatchRegex(column=column, regex=pattern, meta=meta)
        case InSet(values):
            return ex.ExpectColumnValuesToBeInSet(column=column, value_set=list(values), meta=meta)
        case AtMost(value):
            return ex.ExpectColumnValuesToBeBetween(column=column, max_value=value, meta=meta)
        case Above(bound, strict):
            return ex.ExpectColumnValuesToBeBetween(column=column, min_value=bound, strict_min=strict,
                                                    meta=meta)


def build_suite(contract: Contract, load_date: date) -> Any:
    """The ``ExpectationSuite`` implied by the contract's §3 rules and its primary key.

    GX requires an active data context (``SuiteRunner`` creates an ephemeral one first).
    """
    import great_expectations as gx

    ex = gx.expectations
    suite = gx.ExpectationSuite(name=f"{contract.bronze_table}_contract")
    for rule in rules(contract, load_date):
        suite.add_expectation(_expectation(ex, rule))
    # a keyless table (no primary key) has no uniqueness to expect: its rows may repeat
    if len(contract.primary_key) == 1:
        pk = contract.primary_key[0]
        suite.add_expectation(ex.ExpectColumnValuesToBeUnique(column=pk, meta={"rule": f"unique:{pk}"}))
    elif contract.primary_key:
        meta = {"rule": "unique:" + ",".join(contract.primary_key)}
        suite.add_expectation(ex.ExpectCompoundColumnsToBeUnique(column_list=list(contract.primary_key),
                                                                 meta=meta))
    return suite
