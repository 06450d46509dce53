"""Freshness windows per cadence: how old a table's last load may be (fail, and warn where set).

Hourly tables warn after 1 h and fail after 2 h (the "freshness > 2 hours" KPI); daily tables
fail after 26 h, weekly after 8 days, monthly after 32 days (one cadence plus slack for a
late or retried run).
"""

from __future__ import annotations

from datetime import timedelta

from bronze_assets.contracts.model import Cadence

WINDOWS: dict[Cadence, tuple[timedelta, timedelta | None]] = {  # (fail, warn)
    Cadence.HOURLY: (timedelta(hours=2), timedelta(hours=1)),
    Cadence.DAILY: (timedelta(hours=26), None),
    Cadence.WEEKLY: (timedelta(days=8), None),
    Cadence.MONTHLY: (timedelta(days=32), None),
}
