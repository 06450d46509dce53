"""Dagster partitions matching each bronze table's Delta layout (ARCHITECTURE §2.4)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import dagster as dg

from bronze_assets.contracts import Contract, PartitionKind

ENV_PARTITIONS_START = "BRONZE_PARTITIONS_START"
DEFAULT_PARTITIONS_START = "2020-01-01"


def partitions_start() -> str:
    """First partition date (``$BRONZE_PARTITIONS_START``, default 2020-01-01)."""
    return os.environ.get(ENV_PARTITIONS_START) or DEFAULT_PARTITIONS_START


def partitions_def(contract: Contract) -> dg.TimeWindowPartitionsDefinition | None:
    """Daily for load-date tables, monthly for business-date tables, none for dimensions.

    ``end_offset=1`` includes the current (still open) day or month, which the hourly and daily
    schedules keep refreshing.
    """
    kind = contract.partitioning.kind
    if kind is PartitionKind.DAILY_LOAD_DATE:
        return dg.DailyPartitionsDefinition(start_date=partitions_start(), end_offset=1, timezone="UTC")
    if kind is PartitionKind.MONTHLY_BUSINESS_DATE:
        return dg.MonthlyPartitionsDefinition(start_date=partitions_start(), end_offset=1, timezone="UTC")
    return None


def as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)
