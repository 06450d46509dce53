"""Great Expectations suites generated from a table contract (never written per table).

Each expectation carries ``meta.rule``, the same rule id (``null:col``, ``format:col``,
``range:col``, ``unique:pk``) that the vectorised score uses, so the two can be compared.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from bronze_assets.contracts import (
    Comparison,
    Contract,
    NotAfterLoadDateRule,
    RangeRule,
    RegexRule,
    ValueSetRule,
)


def _gx() -> Any:
    import great_expectations as gx

    return gx


def build_suite(contract: Contract, load_date: date) -> Any:
    """The ``ExpectationSuite`` implied by the contract's §3 rules and its primary key.

    GX requires an active data context (``SuiteRunner`` creates an ephemeral one first).
    """
    gx = _gx()
    ex = gx.expectations
    suite = gx.ExpectationSuite(name=f"{contract.bronze_table}_contract")
    for column in contract.quality.required:
        meta = {"rule": f"null:{column}"}
        suite.add_expectation(ex.ExpectColumnValuesToNotBeNull(column=column, meta=meta))
    for rule in contract.quality.formats:
        meta = {"rule": f"format:{rule.column}"}
        if isinstance(rule, RegexRule):
            suite.add_expectation(ex.ExpectColumnValuesToMatchRegex(column=rule.column, regex=rule.pattern,
                                                                    meta=meta))
        elif isinstance(rule, ValueSetRule):
            suite.add_expectation(ex.ExpectColumnValuesToBeInSet(column=rule.column,
                                                                 value_set=list(rule.values), meta=meta))
    for rule in contract.quality.ranges:
        meta = {"rule": f"range:{rule.column}"}
        if isinstance(rule, NotAfterLoadDateRule):
            suite.add_expectation(ex.ExpectColumnValuesToBeBetween(column=rule.column, max_value=load_date,
                                                                   meta=meta))
        elif isinstance(rule, RangeRule):
            suite.add_expectation(ex.ExpectColumnValuesToBeBetween(
                column=rule.column, min_value=rule.bound, strict_min=rule.op is Comparison.GT, meta=meta))
    if len(contract.primary_key) == 1:
        pk = contract.primary_key[0]
        suite.add_expectation(ex.ExpectColumnValuesToBeUnique(column=pk, meta={"rule": f"unique:{pk}"}))
    else:
        meta = {"rule": "unique:" + ",".join(contract.primary_key)}
        suite.add_expectation(ex.ExpectCompoundColumnsToBeUnique(column_list=list(contract.primary_key),
                                                                 meta=meta))
    return suite
