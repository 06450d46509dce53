"""Monitoring figures computed from the control tables (``bz_audit_log``, ``bz_data_lineage``,
``bz_cost_tracking``) plus the run counts the caller reads from the Dagster instance.

* throughput = Σ records_processed (lineage) per minute of wall time: from the first load's start to
  the last load's end in the window (``bz_audit_log`` start/end timestamps), so idle time between
  loads counts; per load, records over that load's own start→end wall time;
* error rate = FAILED / (SUCCESS + FAILED) over the ``LOAD`` rows of the audit log;
* quality = ``avg_quality_score`` from the audit row's ``details`` JSON (latest per table);
* storage = latest ``storage_bytes`` per table; cost = Σ ``compute_cost``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa

from bronze_assets.lib.delta import control
from bronze_assets.lib.delta.storage import StorageLike

LOAD_OPERATION = "LOAD"


@dataclass(frozen=True)
class RunStats:
    """Dagster run counts for the report window (read from the instance by the caller)."""

    active: int = 0
    failed: int = 0
    succeeded: int = 0


@dataclass
class Frames:
    """The control-table rows the report uses, one tidy frame each (``at`` = UTC timestamp)."""

    loads: pl.DataFrame  # table_name, at (end, else start), start, status, records, quality
    lineage: pl.DataFrame  # table_name, at, records, seconds (data), wall_seconds, rpm (wall)
    cost: pl.DataFrame  # table_name, at, storage_bytes, compute_cost


def load_frames(
    storage: StorageLike, since: datetime | None = None, audit_log: pa.Table | None = None) -> Frames:
    """Read the three control tables (rows at or after ``since`` when given); ``audit_log``: the
    audit log's rows when the caller has read them already."""

    def read(table: str) -> pl.DataFrame:
        rows = audit_log if table == control.AUDIT_LOG and audit_log is not None else \
            control.read_table(storage, table)
        return pl.from_arrow(rows)  # type: ignore[return-value]

    audit = read(control.AUDIT_LOG).filter(pl.col("operation_type") == LOAD_OPERATION)
    loads = audit.select(
        "table_name",
        pl.coalesce("end_timestamp", "start_timestamp").alias("at"),
        pl.col("start_timestamp").alias("start"),
        "status",
        pl.col("records_affected").fill_null(0).alias("records"),
        pl.Series("quality", [_quality(d) for d in audit["details"].to_list()], dtype=pl.Float64),
    )
    # a lineage row is written with its audit row: same table, processing_timestamp == end_timestamp
    starts = audit.filter(pl.col("end_timestamp").is_not_null()).select(
        "table_name", pl.col("end_timestamp").alias("at"), pl.col("start_timestamp").alias("start"),
    ).unique(subset=["table_name", "at"], keep="first")
    lineage = read(control.LINEAGE).select(
        pl.col("target_table").alias("table_name"),
        pl.col("processing_timestamp").alias("at"),
        pl.col("records_processed").fill_null(0).alias("records"),
        pl.col("processing_duration_seconds").alias("seconds"),
    ).join(starts, on=["table_name", "at"], how="left").with_columns(
        ((pl.col("at") - pl.col("start")).dt.total_microseconds() / 1e6).alias("wall_seconds"),
    ).drop("start").with_columns(
        pl.when(pl.col("wall_seconds") > 0).then(pl.col("records") / pl.col("wall_seconds") * 60)
        .alias("rpm"),
    )
    cost = read(control.COST_TRACKING).select(
        "table_name", pl.col("recorded_at").alias("at"), "storage_bytes", "compute_cost",
    )
    frames = [f.sort("at") for f in (loads, lineage, cost)]
    if since is not None:
        frames = [f.filter(pl.col("at") >= since) for f in frames]
    return Frames(*frames)


def _quality(details: str | None) -> float | None:
    if not details:
        return None
    try:
        value = json.loads(details).get("avg_quality_score")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _finished(loads: pl.DataFrame) -> pl.DataFrame:
    return loads.filter(pl.col("status").is_in([control.SUCCESS, control.FAILED]))


def wall_seconds(loads: pl.DataFrame) -> float | None:
    """Seconds from the first finished load's start to the last one's end (None without loads)."""
    finished = _finished(loads).drop_nulls("start")
    if finished.is_empty():
        return None
    return (finished["at"].max() - finished["start"].min()).total_seconds()  # type: ignore[operator]


def headline(frames: Frames, runs: RunStats | None = None) -> dict[str, float | int | None]:
    """The headline numbers (None where there is no data yet)."""
    lin, finished = frames.lineage, _finished(frames.loads)
    wall = wall_seconds(frames.loads)
    records = int(lin["records"].sum() or 0)
    failed = finished.filter(pl.col("status") == control.FAILED).height
    latest_quality = _latest(frames.loads.drop_nulls("quality"), "quality")
    latest_storage = _latest(frames.cost.drop_nulls("storage_bytes"), "storage_bytes")
    tables = set(frames.loads["table_name"]) | set(lin["table_name"]) | set(frames.cost["table_name"])
    numbers: dict[str, float | int | None] = {
        "tables": len(tables - {None}),
        "records_processed": records,
        "records_per_minute": round(records / wall * 60, 1) if wall else None,
        "wall_seconds": round(wall, 1) if wall is not None else None,
        "loads": finished.height,
        "failed_loads": failed,
        "error_rate": round(failed / finished.height, 4) if finished.height else None,
        "avg_quality_score": _round(latest_quality["quality"].mean(), 2),
        "avg_processing_seconds": _round(lin["seconds"].mean(), 2),
        "storage_bytes": int(latest_storage["storage_bytes"].sum()) if latest_storage.height else None,
        "compute_cost": _round(frames.cost["compute_cost"].sum(), 4) if frames.cost.height else None,
    }
    if runs is not None:
        numbers |= {"runs_active": runs.active, "runs_failed": runs.failed, "runs_succeeded": runs.succeeded}
    return numbers


def per_table(frames: Frames) -> list[dict[str, Any]]:
    """One row of figures per table, sorted by name."""
    finished = _finished(frames.loads)
    loads = finished.group_by("table_name").agg(
        pl.len().alias("loads"), (pl.col("status") == control.FAILED).sum().alias("failed_loads"),
    )
    lineage = frames.lineage.group_by("table_name").agg(
        pl.col("records").sum().alias("records_processed"),
        pl.col("seconds").mean().round(2).alias("avg_processing_seconds"),
    )
    wall = _finished(frames.loads).drop_nulls("start").group_by("table_name").agg(
        ((pl.col("at").max() - pl.col("start").min()).dt.total_microseconds() / 1e6).alias("wall"),
    )
    lineage = lineage.join(wall, on="table_name", how="left").with_columns(
        pl.when(pl.col("wall") > 0).then(pl.col("records_processed") / pl.col("wall") * 60).round(1)
        .alias("records_per_minute"),
    ).drop("wall")
    quality = _latest(frames.loads.drop_nulls("quality"), "quality").rename({"quality": "quality_score"})
    storage = _latest(frames.cost.drop_nulls("storage_bytes"), "storage_bytes")
    cost = frames.cost.group_by("table_name").agg(pl.col("compute_cost").sum().round(4))
    names = pl.concat([f.select("table_name") for f in (loads, lineage, quality, storage, cost)]).unique()
    out = names.drop_nulls()
    for frame in (loads, lineage, quality, storage, cost):
        out = out.join(frame, on="table_name", how="left")
    return out.sort("table_name").to_dicts()


def _latest(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """The last value of ``column`` per table (frames are sorted by ``at``)."""
    return frame.group_by("table_name", maintain_order=True).agg(pl.col(column).last())


def _round(value: Any, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)
