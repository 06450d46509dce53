"""``bronze demo``: seed the embedded source if empty and materialize every bronze asset."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from bronze_assets.contracts import CONTRACTS, Contract, PartitionKind
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.demo.seed import seed_source, source_row_counts
from bronze_assets.lib.delta.merge import open_table
from bronze_assets.lib.source.ddl import qualified, quote_ident
from bronze_assets.lib.source.postgres import connect
from bronze_assets.settings import SOURCE_SCHEMA


@dataclass
class TableSummary:
    """One line of the demo's report."""

    table: str
    rows_read: int
    bronze_rows: int
    active_rows: int
    versions: int
    avg_score: float | None
    seconds: float


def first_data_time(dsn: str, contract: Contract) -> datetime | None:
    """Earliest time that selects a partition holding data (None when the table is empty)."""
    p = contract.partitioning
    column = "updated_at" if p.kind is PartitionKind.DAILY_LOAD_DATE else p.business_date_column
    sql = (
        f"SELECT least(min({quote_ident(column or '')})::timestamptz, min(updated_at)) "
        f"FROM {qualified(SOURCE_SCHEMA, contract.name)}"
    )
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        (value,) = cur.fetchone()
    return value


def partition_range(
    parts: dg.TimeWindowPartitionsDefinition, earliest: datetime, now: datetime
) -> tuple[str, str] | None:
    """(first, last) partition keys covering ``earliest`` up to the current partition."""
    keys = parts.get_partition_keys(current_time=now)
    if not keys:
        return None
    first = parts.get_partition_key_for_timestamp(max(earliest, parts.start).timestamp())
    return (first if first in keys else keys[0]), keys[-1]


def materialize_all(
    definitions: dg.Definitions,
    dsn: str,
    instance: dg.DagsterInstance,
    *,
    now: datetime | None = None,
    on_run: Callable[[str], None] | None = None,
    with_checks: bool = True,
) -> dict[str, dict[str, object]]:
    """Materialize every bronze asset: one run per partitioning, over all partitions with data.

    Returns the output metadata of each asset (a range run publishes the same for every key).
    """
    now = now or datetime.now(UTC)
    groups: dict[object, list[dg.AssetsDefinition]] = defaultdict(list)
    for asset in definitions.assets or []:
        assert isinstance(asset, dg.AssetsDefinition)
        if asset.key.to_user_string().startswith("bz_"):
            groups[asset.partitions_def].append(asset)
    metadata: dict[str, dict[str, object]] = {}
    for parts, assets in groups.items():
        tags: dict[str, str] = {}
        if parts is not None:
            assert isinstance(parts, dg.TimeWindowPartitionsDefinition)
            starts = [first_data_time(dsn, CONTRACTS[a.key.path[-1].removeprefix("bz_")]) for a in assets]
            starts = [s for s in starts if s is not None]
            if not starts:
                continue
            bounds = partition_range(parts, min(starts), now)
            if bounds is None:
                continue
            tags = {ASSET_PARTITION_RANGE_START_TAG: bounds[0], ASSET_PARTITION_RANGE_END_TAG: bounds[1]}
        names = ", ".join(sorted(a.key.to_user_string() for a in assets))
        if on_run:
            detail = ""
            if parts is not None and tags:
                keys = parts.get_partition_keys(current_time=now)
                lo, hi = tags[ASSET_PARTITION_RANGE_START_TAG], tags[ASSET_PARTITION_RANGE_END_TAG]
                count = keys.index(hi) - keys.index(lo) + 1
                detail = (f" [{lo} … {hi}]: one run, {count * len(assets):,} partition "
                          f"materializations for Dagster to record")
            on_run(f"materializing {names}{detail}")
        selection = dg.AssetSelection.assets(*assets)
        if not with_checks:
            selection = selection.without_checks()
        result = dg.materialize(assets, instance=instance, resources=definitions.resources, tags=tags,
                                selection=selection)
        for event in result.get_asset_materialization_events():
            key = event.asset_key.to_user_string()
            if key not in metadata:
                metadata[key] = {k: v.value for k, v in event.materialization.metadata.items()}
    return metadata


def run_demo(scale: float = 1.0, on_progress: Callable[[str], None] | None = None) -> list[TableSummary]:
    """Seed the source if it is empty, load every bronze table, and summarise the result."""
    from bronze_assets.definitions import defs
    from bronze_assets.defs.operations import REPORT_ASSET
    from bronze_assets.defs.resources import BronzeStorage
    from bronze_assets.lib.source.postgres import resolve_source_dsn

    say = on_progress or (lambda _msg: None)
    dsn = resolve_source_dsn()
    if sum(source_row_counts(dsn).values()) == 0:
        say(f"seeding the source at scale {scale:g} …")
        report = seed_source(dsn, SeedOptions(scale=scale))
        say(f"seeded {report.total_rows:,} rows in {report.seconds:.1f} s")
    definitions = defs()
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    metadata = materialize_all(definitions, dsn, instance, on_run=say)
    say(f"all bronze assets materialized in {time.perf_counter() - started:.1f} s")
    report = next((a for a in definitions.assets or [] if isinstance(a, dg.AssetsDefinition)
                   and a.key.to_user_string() == REPORT_ASSET), None)
    if report is not None:
        result = dg.materialize([report], resources={"bronze": BronzeStorage()}, instance=instance)
        html = result.get_asset_materialization_events()[0].materialization.metadata["report"].value
        say(f"monitoring report: {html}")
    storage = BronzeStorage()
    summaries = []
    for contract in CONTRACTS.values():
        meta = metadata.get(contract.bronze_table, {})
        dt = open_table(storage.table_uri(contract.bronze_table), storage.storage_options or None)
        total = active = versions = 0
        if dt is not None:
            import pyarrow.compute as pc

            status = dt.to_pyarrow_dataset().to_table(columns=["record_status"])["record_status"]
            total, active = len(status), int(pc.sum(pc.equal(status, "ACTIVE")).as_py() or 0)
            versions = dt.version() + 1
        summaries.append(TableSummary(
            contract.bronze_table, int(meta.get("rows_read", 0) or 0), total, active, versions,
            meta.get("avg_quality_score"), float(meta.get("duration_seconds", 0.0) or 0.0),  # type: ignore[arg-type]
        ))
    return summaries


def format_summary(rows: list[TableSummary]) -> str:
    head = (f"{'table':<18} {'read':>9} {'bronze':>9} {'active':>9} {'versions':>8} "
            f"{'avg score':>9} {'seconds':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        score = f"{r.avg_score:.2f}" if r.avg_score is not None else "-"
        lines.append(f"{r.table:<18} {r.rows_read:>9,} {r.bronze_rows:>9,} {r.active_rows:>9,} "
                     f"{r.versions:>8} {score:>9} {r.seconds:>8.2f}")
    return "\n".join(lines)
