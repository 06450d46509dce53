"""Schedules per load cadence (ARCHITECTURE §2.5), derived from the contracts (the
``BronzeTables`` component builds those of its tables).

One partitioned asset job per (cadence, partitions definition) and one schedule per job. Which
partition a tick loads follows the load pattern: incremental tables refresh the partition that
contains the tick (the open day or month), batch tables load the window that just closed
(the partition of the tick minus one day), full loads have no partitions. Whether schedules
start running is a setting: ``BRONZE_SCHEDULES_RUNNING=1`` (default: shipped stopped, so a
laptop checkout does not start loading by itself). Scheduled runs read only the rows changed
since the table's watermark (``bronze/changes_only``); backfills and manual runs re-read their
partitions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from bronze_assets.contracts import CONTRACTS, Cadence, Contract, LoadPattern
from bronze_assets.defs.edge import edge_settings
from bronze_assets.defs.partitions import partitions_def
from bronze_assets.defs.threaded_executor import threaded_executor
from bronze_assets.settings import Settings

MAX_RUNTIME_SECONDS = 3600  # KPI: an end-to-end run over 1 h is critical; Dagster stops it
RUN_TAGS = {"dagster/max_runtime": str(MAX_RUNTIME_SECONDS)}
# A scheduled tick keeps bronze up to date: once a table has a watermark it reads only what
# changed since (plus the key sweep); a backfill or a manual run re-reads its partitions.
CHANGES_ONLY_TAG = "bronze/changes_only"
SCHEDULED_TAGS = {**RUN_TAGS, CHANGES_ONLY_TAG: "true"}


def reads_changes_only(tags: dict[str, str]) -> bool:
    """Whether a run with ``tags`` reads only the rows changed since the watermark: runs of a
    schedule or sensor (ours, or a user's) unless they are part of a backfill or say otherwise."""
    if "dagster/backfill" in tags:
        return False
    explicit = tags.get(CHANGES_ONLY_TAG)
    if explicit is not None:
        return explicit.lower() in ("1", "true", "yes")
    return "dagster/schedule_name" in tags or "dagster/sensor_name" in tags

CRON: dict[Cadence, str] = {
    Cadence.HOURLY: "5 * * * *",
    Cadence.DAILY: "30 1 * * *",
    Cadence.WEEKLY: "0 2 * * 1",
    Cadence.MONTHLY: "0 3 1 * *",
}
BATCH_LAG = timedelta(days=1)  # a batch tick loads the window that closed before it
LOAD_STEP_THREADS = 2  # tables a load run loads at once (the two cores; README Performance)
LOAD_STEPS_BESIDE_WRITES = 1  # one more table read while a table's MERGE runs (README Performance)


def schedule_status(settings: Settings) -> dg.DefaultScheduleStatus:
    """Whether bronze's schedules start running (``BRONZE_SCHEDULES_RUNNING``) or stopped."""
    running = settings.schedules_running
    return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED


@dataclass(frozen=True)
class LoadGroup:
    """Contracts loaded together: same cadence, same partitions definition, same pattern rule."""

    cadence: Cadence
    partition_kind: str
    lagged: bool  # batch: the partition of (tick - 1 day); otherwise the partition of the tick
    contracts: tuple[Contract, ...]
    prefix: str = ""  # a tables file's name: its jobs and schedules are bronze_<prefix>_…

    @property
    def name(self) -> str:
        layout = {"daily": "by_day", "monthly": "by_month"}.get(self.partition_kind, "full")
        prefix = f"{self.prefix}_" if self.prefix else ""
        return f"bronze_{prefix}{self.cadence.value}_{layout}" + ("_closed_window" if self.lagged else "")

    @property
    def keys(self) -> list[str]:
        return [c.bronze_table for c in self.contracts]


def load_groups(contracts: Sequence[Contract] | None = None, prefix: str = "") -> list[LoadGroup]:
    """Group the contracts (default: every table) by cadence, partition kind and whether their
    window lags the tick; ``prefix`` names the groups of one tables file."""
    groups: dict[tuple[Cadence, str, bool], list[Contract]] = defaultdict(list)
    for c in list(CONTRACTS.values()) if contracts is None else contracts:
        lagged = c.load_pattern is LoadPattern.BATCH and c.cadence is not Cadence.HOURLY
        groups[(c.cadence, c.partitioning.kind.value, lagged)].append(c)
    return [LoadGroup(cad, kind, lag, tuple(cs), prefix) for (cad, kind, lag), cs in sorted(groups.items())]


def load_step(contract: Contract) -> str:
    """The step (op) of a run that loads ``contract``'s table."""
    return f"load_{contract.bronze_table}"


def load_executor(contracts: Sequence[Contract]) -> dg.ExecutorDefinition:
    """The executor of a load job: its tables' steps on threads of the run's process, two at once
    (a step spends most of its time in native code that releases the GIL: the COPY's decoding,
    DuckDB, delta-rs), where Dagster's default multiprocess executor starts a process per step,
    each importing Dagster and bronze again; a table's step after its parents' in the same run
    (its referential check reads them); while a table's output is written (its MERGE) one more
    table is read (the hourly by-day run's third table reads beside the two MERGEs)."""
    in_run = {c.bronze_table: load_step(c) for c in contracts}
    after = {load_step(c): frozenset(in_run[f"bz_{fk.parent_table}"] for fk in c.foreign_keys
                                     if f"bz_{fk.parent_table}" in in_run and f"bz_{fk.parent_table}" !=
                                     c.bronze_table) for c in contracts}
    return threaded_executor(LOAD_STEP_THREADS, after=after, beside_writes=LOAD_STEPS_BESIDE_WRITES)


def build_job(group: LoadGroup, settings: Settings | None = None) -> dg.UnresolvedAssetJobDefinition:
    """The group's load job: its assets with the checks the load runs (their ``check_specs``:
    schema, score, keys, references), not the ``reconciliation`` check, which reads the source and
    runs on its own daily schedule (:func:`build_reconciliation_schedule`, ARCHITECTURE §2.8), on
    :func:`load_executor`."""
    from bronze_assets.defs.checks import check_specs

    return dg.define_asset_job(
        group.name,
        selection=dg.AssetSelection.assets(*group.keys).without_checks() | dg.AssetSelection.checks(
            *[spec.key for contract in group.contracts for spec in check_specs(contract)]),
        partitions_def=partitions_def(group.contracts[0], settings),
        tags=RUN_TAGS,
        description=f"{group.cadence.value} load of {', '.join(group.keys)}",
        executor_def=load_executor(group.contracts),
    )


def partition_for_tick(group: LoadGroup, tick: datetime, settings: Settings | None = None) -> str | None:
    """The partition key a tick at ``tick`` loads (None for unpartitioned groups)."""
    parts = partitions_def(group.contracts[0], settings)
    if parts is None:
        return None
    when = tick - BATCH_LAG if group.lagged else tick
    return parts.get_partition_key_for_timestamp(when.timestamp())


def build_schedule(group: LoadGroup, settings: Settings | None = None) -> dg.ScheduleDefinition:
    """The schedule of ``group``; ``settings``: the definitions' (default: :func:`edge_settings`)."""
    settings = settings or edge_settings()
    job = build_job(group, settings)

    @dg.schedule(
        name=f"{group.name}_schedule",
        cron_schedule=CRON[group.cadence],
        job=job,
        execution_timezone="UTC",
        default_status=schedule_status(settings),
        description=f"{group.cadence.value} load of {', '.join(group.keys)}",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        tick = context.scheduled_execution_time
        key = partition_for_tick(group, tick, settings)
        return dg.RunRequest(run_key=f"{group.name}@{tick.isoformat()}", partition_key=key,
                             tags=SCHEDULED_TAGS)

    return _schedule


RECONCILIATION_CRON = "0 4 * * *"  # daily, after the 03:30 maintenance and between hourly loads


def build_reconciliation_schedule(contracts: Sequence[Contract], prefix: str = "",
                                  settings: Settings | None = None) -> dg.ScheduleDefinition:
    """One daily run of the ``reconciliation`` check of every table of a tables file (ARCHITECTURE
    §2.8): the checks alone, no load."""
    from bronze_assets.lib.reconcile.check import RECONCILIATION

    name = f"bronze_{prefix + '_' if prefix else ''}reconciliation"
    job = dg.define_asset_job(
        name, selection=dg.AssetSelection.checks(
            *[dg.AssetCheckKey(dg.AssetKey(c.bronze_table), RECONCILIATION) for c in contracts]),
        tags=RUN_TAGS, description=f"daily reconciliation of {', '.join(c.bronze_table for c in contracts)} "
                                   f"with the source")
    return dg.ScheduleDefinition(
        name=f"{name}_schedule", job=job, cron_schedule=RECONCILIATION_CRON, execution_timezone="UTC",
        default_status=schedule_status(settings or edge_settings()),
        description="daily reconciliation check of every table with its source")
