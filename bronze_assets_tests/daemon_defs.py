"""Code location of the daemon test (test_dagster_daemon.py), loaded by ``dagster-daemon run -m``.

The real bronze assets and resources of four tables, the real schedule of ``bz_warehouses`` (its
monthly cron replaced by every minute, so the daemon ticks it during the test) and a sensor that,
on its first tick, requests at once: two loads of ``bz_suppliers`` (the pool must queue the
second), one of ``bz_customers`` (another table: not held back; the test kills its run worker,
and run retries must re-run it) and one of ``bz_returns`` (the test dropped its source table: an
asset failure, which must not be retried).
"""

from __future__ import annotations

from unittest import mock

import dagster as dg

from bronze_assets.contracts import CONTRACTS, Cadence
from bronze_assets.defs import schedules
from bronze_assets.defs.assets import build_bronze_asset
from bronze_assets.defs.partitions import partitions_def
from bronze_assets.defs.resources import build_resources

TABLES = ("warehouses", "suppliers", "customers", "returns")
SENSOR = "bronze_daemon_test_requests"
SCHEDULE = "bronze_monthly_full_schedule"
# run key -> bronze table
SENSOR_RUNS = {"suppliers-1": "bz_suppliers", "suppliers-2": "bz_suppliers", "customers": "bz_customers",
               "returns": "bz_returns"}


def _every_minute_schedule() -> dg.ScheduleDefinition:
    (group,) = [g for g in schedules.load_groups() if g.keys == ["bz_warehouses"]]
    with mock.patch.dict(schedules.CRON, {Cadence.MONTHLY: "* * * * *"}):
        schedule = schedules.build_schedule(group)
    assert schedule.name == SCHEDULE
    return schedule


@dg.sensor(name=SENSOR, minimum_interval_seconds=5, default_status=dg.DefaultSensorStatus.RUNNING,
           asset_selection=[CONTRACTS[t].bronze_table for t in TABLES if t != "warehouses"])
def _requests(context: dg.SensorEvaluationContext) -> list[dg.RunRequest]:
    first_day = partitions_def(CONTRACTS["returns"]).get_first_partition_key()
    return [dg.RunRequest(run_key=key, asset_selection=[dg.AssetKey(table)],
                          partition_key=first_day if table == "bz_returns" else None)
            for key, table in SENSOR_RUNS.items()]  # the run keys make every later tick a no-op


defs = dg.Definitions(
    assets=[build_bronze_asset(CONTRACTS[t]) for t in TABLES],
    schedules=[_every_minute_schedule()],
    sensors=[_requests],
    resources=build_resources(),
    # one process per run (no step subprocess): the six runs fit the test's time on two cores
    executor=dg.in_process_executor,
)
