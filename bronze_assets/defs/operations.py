"""Operations that keep the platform healthy: daily maintenance, monthly retention, the report.

* ``bronze_maintenance`` (daily, 03:30 UTC, between the hourly loads): OPTIMIZE + Z-ORDER on each
  table's contract columns and VACUUM retaining 168 h; files/bytes before and after and the
  24 h storage growth are recorded as an observation of each ``bz_*`` asset.
* ``bronze_retention`` (monthly): rows older than the retention period move to the archive.
* ``bronze_monitoring_report`` asset: an HTML page led by the ``bronze status`` table (with check
  results from the instance), then plots from the control tables, which are also embedded in the
  materialization metadata so the UI shows them.
"""


import base64
import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.edge import edge_settings
from bronze_assets.defs.resources import BronzeStorage
from bronze_assets.defs.schedules import schedule_status
from bronze_assets.lib.delta.control import SCHEMAS, audited
from bronze_assets.lib.delta.maintenance import DEFAULT_RETENTION_HOURS, maintain_table, storage_growth
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE
from bronze_assets.lib.delta.retention import apply_retention
from bronze_assets.lib.delta.writers import DeletionVectorsError, refuse_deletion_vectors
from bronze_assets.lib.monitoring.metrics import RunStats
from bronze_assets.lib.monitoring.report import TABLE_FIGURES, build_report, table_figures

REPORT_ASSET = "bronze_monitoring_report"


@dg.op(description="OPTIMIZE + Z-ORDER and VACUUM (168 h) every bronze and control table.")
def maintain_bronze_tables(context: dg.OpExecutionContext, bronze: BronzeStorage) -> dg.Output[int]:
    storage = bronze.storage()
    tables = [(c.bronze_table, c) for c in CONTRACTS.values()]
    tables += [(c.history_table, None) for c in CONTRACTS.values() if c.history]  # compacted, vacuumed
    tables += [(name, None) for name in [*SCHEMAS, QUARANTINE_TABLE]]
    done = 0
    for i, (table, contract) in enumerate(tables, 1):
        dt = storage.open(table)
        if dt is None:
            continue
        try:  # a Spark-owned table with deletion vectors is maintained on Spark: said, not failed
            refuse_deletion_vectors(dt, table, "OPTIMIZE/VACUUM", feature=True)
        except DeletionVectorsError as exc:
            context.log.warning(str(exc))
            continue
        with audited(storage, table, "MAINTENANCE", context.run.run_id) as entry:
            report = maintain_table(storage, table, contract, DEFAULT_RETENTION_HOURS,
                                    zorder_columns=None if contract else [], dt=dt)
            entry.records_affected = report.files_before - report.files_after_optimize
            entry.details = json.dumps(report.as_metadata(), default=str)
        meta = dict(report.as_metadata())
        growth = storage_growth(storage, table).growth
        meta["storage_growth_pct_24h"] = round(100 * growth, 2) if growth is not None else -1.0
        context.log.info(f"[{i}/{len(tables)}] {table}: {report.files_before} -> "
                         f"{report.files_after_optimize} files")
        if contract is not None:
            context.log_event(dg.AssetObservation(asset_key=table, metadata=meta))
        done += 1
    return dg.Output(done, metadata={"tables_maintained": done})


@dg.op(description="Move rows whose business date is older than the retention period to the archive.")
def apply_bronze_retention(context: dg.OpExecutionContext, bronze: BronzeStorage) -> dg.Output[int]:
    storage = bronze.storage()
    moved: dict[str, int] = {}
    for contract in CONTRACTS.values():
        try:
            result = apply_retention(contract, storage)
        except DeletionVectorsError as exc:  # a Spark-owned table: said, the others still archived
            context.log.warning(str(exc))
            continue
        if result.cutoff is not None:
            moved[contract.bronze_table] = result.moved
            context.log.info(f"{contract.bronze_table}: {result.moved:,} rows before {result.cutoff} moved")
    return dg.Output(sum(moved.values()), metadata={f"moved_{t}": n for t, n in moved.items()})


@dg.job(description="Daily table maintenance (OPTIMIZE Z-ORDER, VACUUM 168 h).")
def bronze_maintenance() -> None:
    maintain_bronze_tables()


@dg.job(description="Monthly retention: archive rows older than BRONZE_RETENTION_YEARS (7).")
def bronze_retention() -> None:
    apply_bronze_retention()


def _run_stats(instance: dg.DagsterInstance, since: datetime) -> RunStats:
    def count(status: dg.DagsterRunStatus) -> int:
        return len(instance.get_run_records(filters=dg.RunsFilter(statuses=[status], created_after=since)))

    return RunStats(active=count(dg.DagsterRunStatus.STARTED), failed=count(dg.DagsterRunStatus.FAILURE),
                    succeeded=count(dg.DagsterRunStatus.SUCCESS))


def _embedded(title: str, png: bytes) -> str:
    return f"**{title}**\n\n![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


@dg.asset(
    name=REPORT_ASSET,
    group_name="monitoring",
    kinds={"python", "html"},
    owners=["team:data-engineering"],
    description="Throughput, runs, error rate, quality and processing-time trends, storage and cost.",
)
def monitoring_report(context: dg.AssetExecutionContext, bronze: BronzeStorage) -> dg.MaterializeResult:
    since = datetime.now(UTC) - timedelta(days=30)
    runs = _run_stats(context.instance, datetime.now(UTC) - timedelta(hours=24))
    report = build_report(bronze.storage(), runs=runs, since=since, instance=context.instance)
    metadata: dict[str, object] = {
        "report": dg.MetadataValue.path(str(report.html)),
        "headline": dg.MetadataValue.md(report.markdown()),
    }
    for name, path in report.plots.items():
        metadata[f"plot_{name}"] = dg.MetadataValue.md(_embedded(name.replace("_", " "), path.read_bytes()))
    metadata |= {k: v for k, v in report.headline.items() if isinstance(v, int | float)}
    metadata["tables_unhealthy"] = sum(not s.healthy for s in report.status)
    metadata[TABLE_FIGURES] = dg.MetadataValue.json(table_figures(report.status))
    return dg.MaterializeResult(metadata=metadata)


@dg.definitions
def operations() -> dg.Definitions:
    report_job = dg.define_asset_job("bronze_monitoring", selection=[REPORT_ASSET])
    status = schedule_status(edge_settings())
    return dg.Definitions(
        assets=[monitoring_report],
        jobs=[bronze_maintenance, bronze_retention, report_job],
        schedules=[
            dg.ScheduleDefinition(job=bronze_maintenance, cron_schedule="30 3 * * *",
                                  execution_timezone="UTC", default_status=status),
            dg.ScheduleDefinition(job=bronze_retention, cron_schedule="0 5 2 * *",
                                  execution_timezone="UTC", default_status=status),
            dg.ScheduleDefinition(job=report_job, cron_schedule="15 * * * *",
                                  execution_timezone="UTC", default_status=status),
        ],
    )
