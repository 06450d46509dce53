"""Freshness policies derived from each table's cadence (the asset factory applies them), with the
windows of :mod:`bronze_assets.contracts.freshness`."""

from __future__ import annotations

import dagster as dg

from bronze_assets.contracts import Cadence
from bronze_assets.contracts.freshness import WINDOWS

__all__ = ["WINDOWS", "freshness_policy"]


def freshness_policy(cadence: Cadence) -> dg.FreshnessPolicy:
    fail, warn = WINDOWS[cadence]
    return dg.FreshnessPolicy.time_window(fail_window=fail, warn_window=warn)
