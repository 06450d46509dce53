"""Dagster partitions matching each bronze table's Delta layout (ARCHITECTURE §2.4 v2)."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from bronze_assets.contracts import Contract, PartitionKind
from bronze_assets.defs.edge import edge_settings
from bronze_assets.settings import Settings


def partitions_def(contract: Contract, settings: Settings | None = None,
                   ) -> dg.TimeWindowPartitionsDefinition | None:
    """Daily from ``$BRONZE_START_DATE`` for load-date tables (the first partition is the initial
    snapshot), monthly from ``$BRONZE_PARTITIONS_START`` for business-date tables, none for
    dimensions. ``end_offset=1`` includes the open day or month, which the schedules refresh.
    ``settings``: the definitions' (default: :func:`edge_settings`)."""
    kind, settings = contract.partitioning.kind, settings or edge_settings()
    if kind is PartitionKind.DAILY_LOAD_DATE:
        return dg.DailyPartitionsDefinition(
            start_date=settings.go_live().isoformat(), end_offset=1, timezone="UTC")
    if kind is PartitionKind.MONTHLY_BUSINESS_DATE:
        return dg.MonthlyPartitionsDefinition(
            start_date=settings.partitions_start.isoformat(), end_offset=1, timezone="UTC")
    return None


def as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)
