"""Schedules per cadence and freshness policies per asset, read from the loaded definitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import dagster as dg
import pytest

from bronze_assets.contracts import CONTRACTS
from bronze_assets.definitions import defs
from bronze_assets.defs.schedules import (
    MAX_RUNTIME_SECONDS,
    build_schedule,
    load_groups,
)

TICK = datetime(2026, 3, 1, 0, 5, tzinfo=UTC)  # first hour of a month: open vs closed windows differ


@pytest.fixture(scope="module")
def repo() -> dg.RepositoryDefinition:
    with pytest.MonkeyPatch.context() as env:  # daily partitions start at the go-live day
        env.setenv("BRONZE_START_DATE", "2026-01-01")
        return defs().get_repository_def()


def _tick(repo: dg.RepositoryDefinition, name: str, when: datetime) -> dg.RunRequest:
    schedule = repo.get_schedule_def(name)
    instance = dg.DagsterInstance.ephemeral()
    ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=when, repository_def=repo)
    result = schedule.evaluate_tick(ctx)
    (request,) = result.run_requests
    return request


EXPECTED = {  # schedule -> (cron, assets, partition key for TICK)
    "bronze_hourly_by_day_schedule": ("5 * * * *", {"bz_inventory", "bz_order_details", "bz_stock_levels"},
                                      "2026-03-01"),
    "bronze_hourly_by_month_schedule": ("5 * * * *", {"bz_orders"}, "2026-03-01"),
    "bronze_daily_by_day_closed_window_schedule": ("30 1 * * *", {"bz_returns"}, "2026-02-28"),
    "bronze_daily_by_month_closed_window_schedule": ("30 1 * * *", {"bz_shipments"}, "2026-02-01"),
    "bronze_daily_full_schedule": ("30 1 * * *", {"bz_products", "bz_customers"}, None),
    "bronze_weekly_full_schedule": ("0 2 * * 1", {"bz_suppliers"}, None),
    "bronze_monthly_full_schedule": ("0 3 1 * *", {"bz_warehouses"}, None),
}


def test_one_schedule_per_cadence_and_layout_covering_every_table_once(repo: dg.RepositoryDefinition) -> None:
    schedules = {s.name: s for s in repo.schedule_defs if (s.name.startswith("bronze_") and "_by_" in s.name)
                 or s.name.endswith("_full_schedule")}
    assert set(schedules) == set(EXPECTED)
    covered: list[str] = []
    for name, (cron, assets, _) in EXPECTED.items():
        schedule = schedules[name]
        assert schedule.cron_schedule == cron and schedule.execution_timezone == "UTC"
        assert schedule.default_status is dg.DefaultScheduleStatus.STOPPED
        job = repo.get_job(schedule.job_name)
        keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
        assert keys == assets
        # the load's checks run with it; the reconciliation (it reads the source) only daily
        graph = job.asset_layer.asset_graph
        checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
        assert {name for _, name in checks} >= {"schema_contract", "quality_score", "key_uniqueness"}
        assert {table for table, _ in checks} == assets and "reconciliation" not in {n for _, n in checks}
        assert job.tags["dagster/max_runtime"] == str(MAX_RUNTIME_SECONDS)
        covered += keys
    assert sorted(covered) == sorted(c.bronze_table for c in CONTRACTS.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tick_requests_the_right_partition(repo: dg.RepositoryDefinition, name: str) -> None:
    request = _tick(repo, name, TICK)
    assert request.partition_key == EXPECTED[name][2]
    assert request.tags["dagster/max_runtime"] == "3600"
    later = _tick(repo, name, TICK + timedelta(days=20))
    assert later.run_key != request.run_key, "each tick is its own run"


def test_incremental_tick_mid_day_refreshes_the_open_day(repo: dg.RepositoryDefinition) -> None:
    request = _tick(repo, "bronze_hourly_by_day_schedule", datetime(2026, 5, 17, 13, 5, tzinfo=UTC))
    assert request.partition_key == "2026-05-17"


def test_schedules_start_running_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_SCHEDULES_RUNNING", "1")
    assert all(build_schedule(g).default_status is dg.DefaultScheduleStatus.RUNNING for g in load_groups())


WINDOWS = {"hourly": (timedelta(hours=2), timedelta(hours=1)), "daily": (timedelta(hours=26), None),
           "weekly": (timedelta(days=8), None), "monthly": (timedelta(days=32), None)}


def test_every_asset_has_its_cadence_freshness_window(repo: dg.RepositoryDefinition) -> None:
    for contract in CONTRACTS.values():
        key = dg.AssetKey(contract.bronze_table)
        policy = repo.assets_defs_by_key[key].specs_by_key[key].freshness_policy
        assert isinstance(policy, dg.FreshnessPolicy), contract.bronze_table
        fail, warn = WINDOWS[contract.cadence.value]
        assert policy.fail_window.to_timedelta() == fail
        assert (policy.warn_window.to_timedelta() if policy.warn_window else None) == warn


def test_load_jobs_run_their_tables_on_threads_parents_first(repo: dg.RepositoryDefinition) -> None:
    """Every load job runs its steps on threads of the run's process (no process per step), two
    at once, a child table's step after its parents' in the same run (its referential check)."""
    from bronze_assets.defs.schedules import LOAD_STEP_THREADS, load_executor, load_step
    from bronze_assets.defs.threaded_executor import ThreadedExecutor

    for group in load_groups():
        assert repo.get_job(group.name).executor_def.name == "bronze_threads", group.name
    parent, child = CONTRACTS["orders"], CONTRACTS["order_details"]
    assert any(fk.parent_table == "orders" for fk in child.foreign_keys)
    definition = load_executor([child, parent, CONTRACTS["products"]])
    executor = definition.executor_creation_fn(  # type: ignore[misc]
        SimpleNamespace(executor_config={"retries": {"enabled": {}}}))
    assert isinstance(executor, ThreadedExecutor) and executor.max_concurrent == LOAD_STEP_THREADS
    assert executor.after[load_step(child)] == {load_step(parent), load_step(CONTRACTS["products"])}
    assert executor.after[load_step(parent)] == frozenset()  # customers is not in this run
