"""The static monitoring report: PNG charts plus ``report.html`` in one folder under the data dir."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bronze_assets.lib.monitoring.metrics import RunStats, headline, load_frames, per_table
from bronze_assets.lib.monitoring.plots import write_plots
from bronze_assets.settings import data_dir

HTML_NAME = "report.html"
TITLES = {
    "throughput": "Throughput", "error_rate": "Error rate and runs", "quality": "Quality-score trend",
    "processing_time": "Processing-time trend", "storage_cost": "Storage and cost",
}
LABELS = {
    "tables": "Tables", "records_processed": "Records processed", "records_per_minute": "Records per minute",
    "loads": "Loads", "failed_loads": "Failed loads", "error_rate": "Error rate",
    "avg_quality_score": "Avg quality score (latest per table)",
    "avg_processing_seconds": "Avg processing time (s)",
    "storage_bytes": "Storage", "compute_cost": "Compute cost (USD)", "runs_active": "Active runs",
    "runs_failed": "Failed runs", "runs_succeeded": "Succeeded runs",
}


@dataclass
class ReportResult:
    """Where the report went and its numbers (``headline`` is flat, ready for Dagster metadata)."""

    out_dir: Path
    html: Path
    plots: dict[str, Path]
    headline: dict[str, float | int | None]
    tables: list[dict[str, Any]] = field(default_factory=list)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def markdown(self) -> str:
        """The headline numbers as a Markdown table."""
        rows = [f"| {LABELS.get(k, k)} | {format_value(k, v)} |" for k, v in self.headline.items()]
        return "\n".join(["| figure | value |", "|---|---|", *rows])


def default_report_dir() -> Path:
    """``$BRONZE_DATA_DIR/monitoring`` (./data/monitoring by default)."""
    return data_dir() / "monitoring"


def build_report(
    root: str,
    out_dir: str | Path | None = None,
    runs: RunStats | None = None,
    since: datetime | None = None,
    storage_options: dict[str, str] | None = None,
) -> ReportResult:
    """Read the control tables under ``root``; write the PNGs and ``report.html`` into ``out_dir``.

    ``runs`` are the Dagster run counts (None: shown as "no data yet"); ``since`` limits the rows.
    Works on empty or missing control tables (every chart then says "no data yet").
    """
    out = Path(out_dir) if out_dir is not None else default_report_dir()
    out.mkdir(parents=True, exist_ok=True)
    frames = load_frames(root, since, storage_options)
    result = ReportResult(out, out / HTML_NAME, write_plots(frames, runs, out), headline(frames, runs),
                          per_table(frames))
    result.html.write_text(render_html(result, since), encoding="utf-8")
    return result


def format_value(key: str, value: Any) -> str:
    """Human-readable rendering of one figure."""
    if value is None:
        return "–"
    if key == "error_rate":
        return f"{value:.2%}"
    if key == "storage_bytes":
        return _bytes(value)
    if key == "compute_cost":
        return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


def render_html(result: ReportResult, since: datetime | None = None) -> str:
    """A self-contained static page; charts are linked by file name (same folder)."""
    esc = html.escape
    head_rows = "".join(
        f"<tr><th>{esc(LABELS.get(k, k))}</th><td>{esc(format_value(k, v))}</td></tr>"
        for k, v in result.headline.items()
    )
    columns = ["table_name", "loads", "failed_loads", "records_processed", "records_per_minute",
               "avg_processing_seconds", "quality_score", "storage_bytes", "compute_cost"]
    table_rows = "".join(
        "<tr>" + "".join(f"<td>{esc(format_value(c, row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in result.tables
    ) or f'<tr><td colspan="{len(columns)}">no data yet</td></tr>'
    charts = "".join(
        f'<figure><figcaption>{esc(TITLES.get(name, name))}</figcaption><a href="{esc(path.name)}">'
        f'<img src="{esc(path.name)}" alt="{esc(TITLES.get(name, name))}"></a></figure>'
        for name, path in result.plots.items()
    )
    scope = f" — rows since {since.isoformat()}" if since else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Bronze monitoring report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ font-weight: 600; margin-bottom: .3rem; }}
</style></head><body>
<h1>Bronze monitoring report</h1>
<p>Generated {esc(result.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"))}{esc(scope)}</p>
<h2>Headline</h2>
<table id="headline">{head_rows}</table>
<h2>Per table</h2>
<table id="tables"><tr>{"".join(f"<th>{esc(c)}</th>" for c in columns)}</tr>{table_rows}</table>
<h2>Charts</h2>
{charts}
</body></html>
"""
