"""PNG charts of the monitoring figures.

Built with matplotlib's object API (``Figure`` + ``savefig``, which renders PNG on the Agg canvas):
no pyplot, no global backend switch, safe in threads and headless workers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.dates as mdates
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bronze_assets.lib.monitoring.metrics import Frames, RunStats

SIZE = (10, 5)  # inches; at DPI 100 → 1000×500 px
DPI = 100
NO_DATA = "no data yet"


def _figure(ncols: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _no_data(ax: Axes, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, NO_DATA, ha="center", va="center", fontsize=18, color="0.4", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _per_table_lines(ax: Axes, frame: pl.DataFrame, column: str, title: str, ylabel: str) -> None:
    data = frame.drop_nulls(column)
    if data.is_empty():
        _no_data(ax, title)
        return
    for (name,), rows in data.group_by("table_name", maintain_order=True):
        ax.plot(rows["at"].to_list(), rows[column].to_list(), marker="o", markersize=3, label=str(name))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.legend(fontsize=7, ncols=2, loc="best")


def throughput(frames: Frames, ax: Axes) -> None:
    _per_table_lines(ax, frames.lineage, "rpm", "Records per minute of wall time (per load: start → end)",
                     "records / wall-clock min")


def quality(frames: Frames, ax: Axes) -> None:
    _per_table_lines(ax, frames.loads, "quality", "Average data-quality score per load", "score (0–100)")
    if not frames.loads.drop_nulls("quality").is_empty():
        ax.set_ylim(top=100.5)


def processing_time(frames: Frames, ax: Axes) -> None:
    _per_table_lines(ax, frames.lineage, "seconds", "Processing time per load", "seconds")


def error_rate(frames: Frames, ax: Axes) -> None:
    title = "Load error rate"
    loads = frames.loads.filter(pl.col("status").is_in(["SUCCESS", "FAILED"]))
    if loads.is_empty():
        _no_data(ax, title)
        return
    span = loads["at"].max() - loads["at"].min()
    every, width = ("1h", 1 / 24) if span.total_seconds() <= 48 * 3600 else ("1d", 1.0)
    buckets = (
        loads.with_columns(pl.col("at").dt.truncate(every).alias("bucket"))
        .group_by("bucket").agg((pl.col("status") == "FAILED").mean().alias("rate"), pl.len().alias("n"))
        .sort("bucket")
    )
    ax.bar(buckets["bucket"].to_list(), (buckets["rate"] * 100).to_list(), width=width * 0.8,
           align="edge", color="tab:red")
    ax.set_title(f"{title} per {'hour' if every == '1h' else 'day'}")
    ax.set_ylabel("% of loads failed")
    ax.set_ylim(0, max(5.0, float(buckets["rate"].max()) * 110))
    ax.grid(axis="y", alpha=0.3)
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def runs(stats: RunStats | None, ax: Axes) -> None:
    title = "Dagster runs"
    if stats is None:
        _no_data(ax, title)
        return
    labels, values = ["active", "failed", "succeeded"], [stats.active, stats.failed, stats.succeeded]
    bars = ax.bar(labels, values, color=["tab:blue", "tab:red", "tab:green"])
    ax.bar_label(bars)
    ax.set_title(title)
    ax.set_ylim(0, max([*values, 1]) * 1.2)


def storage(frames: Frames, ax: Axes) -> None:
    title = "Storage per table (latest)"
    latest = (
        frames.cost.drop_nulls("storage_bytes")
        .group_by("table_name", maintain_order=True).agg(pl.col("storage_bytes").last())
        .sort("table_name")
    )
    if latest.is_empty():
        _no_data(ax, title)
        return
    ax.barh(latest["table_name"].to_list(), (latest["storage_bytes"] / 1e6).to_list(), color="tab:blue")
    ax.set_title(title)
    ax.set_xlabel("MB")
    ax.invert_yaxis()


def cost(frames: Frames, ax: Axes) -> None:
    title = "Compute cost per table"
    total = (frames.cost.drop_nulls("compute_cost")
             .group_by("table_name").agg(pl.col("compute_cost").sum()).sort("table_name"))
    if total.is_empty():
        _no_data(ax, title)
        return
    ax.barh(total["table_name"].to_list(), total["compute_cost"].to_list(), color="tab:orange")
    ax.set_title(title)
    ax.set_xlabel("USD")
    ax.invert_yaxis()


def write_plots(frames: Frames, stats: RunStats | None, out_dir: Path) -> dict[str, Path]:
    """Write every chart as ``<name>.png`` into ``out_dir``; returns name → path."""
    charts: dict[str, list[Callable[[Axes], None]]] = {
        "throughput": [lambda ax: throughput(frames, ax)],
        "error_rate": [lambda ax: error_rate(frames, ax), lambda ax: runs(stats, ax)],
        "quality": [lambda ax: quality(frames, ax)],
        "processing_time": [lambda ax: processing_time(frames, ax)],
        "storage_cost": [lambda ax: storage(frames, ax), lambda ax: cost(frames, ax)],
    }
    paths: dict[str, Path] = {}
    for name, drawers in charts.items():
        fig, axes = _figure(len(drawers))
        for draw, ax in zip(drawers, axes, strict=True):
            draw(ax)
        paths[name] = out_dir / f"{name}.png"
        fig.savefig(paths[name])
    return paths
