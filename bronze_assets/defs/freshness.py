"""Freshness policies derived from each table's cadence (applied once, in definitions.py).

Hourly tables warn after 1 h and fail after 2 h (the "freshness > 2 hours" KPI); daily tables
fail after 26 h, weekly after 8 days, monthly after 32 days (one cadence plus slack for a
late or retried run).
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from bronze_assets.contracts import CONTRACTS, Cadence

WINDOWS: dict[Cadence, tuple[timedelta, timedelta | None]] = {  # (fail, warn)
    Cadence.HOURLY: (timedelta(hours=2), timedelta(hours=1)),
    Cadence.DAILY: (timedelta(hours=26), None),
    Cadence.WEEKLY: (timedelta(days=8), None),
    Cadence.MONTHLY: (timedelta(days=32), None),
}
_BY_TABLE = {c.bronze_table: c for c in CONTRACTS.values()}


def freshness_policy(cadence: Cadence) -> dg.FreshnessPolicy:
    fail, warn = WINDOWS[cadence]
    return dg.FreshnessPolicy.time_window(fail_window=fail, warn_window=warn)


def with_freshness(spec: dg.AssetSpec) -> dg.AssetSpec:
    """The spec with its contract's freshness policy (other assets are returned unchanged)."""
    contract = _BY_TABLE.get(spec.key.to_user_string())
    if contract is None:
        return spec
    return spec.replace_attributes(freshness_policy=freshness_policy(contract.cadence))
