"""Sensors: late changes to closed months of business-date tables trigger their partitions."""

from datetime import datetime, timedelta

import dagster as dg

from bronze_assets.contracts import CONTRACTS, Contract, PartitionKind
from bronze_assets.defs.partitions import as_utc, partitions_def
from bronze_assets.defs.resources import PostgresSource
from bronze_assets.lib.load import DEFAULT_OVERLAP, next_month
from bronze_assets.lib.source.changes import changed_months


def changed_partitions_sensor_name(contract: Contract) -> str:
    return f"{contract.bronze_table}_changed_partitions"


def build_changed_partitions_sensor(contract: Contract, overlap: timedelta = DEFAULT_OVERLAP):
    """Request a run for every month whose source rows changed since the cursor (a watermark).

    The first tick only records the watermark: history is loaded by backfills. Later ticks
    re-read ``overlap`` before the watermark, which is capped below open source transactions,
    so late commits are seen; re-running an unchanged month is free (MERGE by key and hash).
    """
    parts = partitions_def(contract)
    job = dg.define_asset_job(
        f"{contract.bronze_table}_changed_partitions_job",
        selection=[contract.bronze_table],
    )

    @dg.sensor(
        name=changed_partitions_sensor_name(contract),
        job=job,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Re-loads months of {contract.bronze_table} whose source rows changed.",
    )
    def _sensor(context: dg.SensorEvaluationContext, source: PostgresSource):
        now = datetime.now().astimezone()
        dsn = source.resolved_dsn()
        if not context.cursor:
            _, cap = changed_months(dsn, contract, as_utc(now), next_month(as_utc(now)))
            context.update_cursor(cap.isoformat())
            return dg.SkipReason(f"watermark initialised at {cap.isoformat()}")
        since = datetime.fromisoformat(context.cursor) - overlap
        months, cap = changed_months(dsn, contract, since, next_month(as_utc(now)))
        valid = set(parts.get_partition_keys(current_time=now)) if parts else set()
        requests = []
        for month in months:
            key = month.isoformat()
            if key in valid:
                requests.append(dg.RunRequest(run_key=f"{key}@{cap.isoformat()}", partition_key=key))
            else:
                context.log.warning(f"{contract.bronze_table}: changed rows in {key} have no partition")
        return dg.SensorResult(run_requests=requests, cursor=cap.isoformat())

    return _sensor


@dg.definitions
def sensors() -> dg.Definitions:
    monthly = [c for c in CONTRACTS.values() if c.partitioning.kind is PartitionKind.MONTHLY_BUSINESS_DATE]
    return dg.Definitions(sensors=[build_changed_partitions_sensor(c) for c in monthly])
