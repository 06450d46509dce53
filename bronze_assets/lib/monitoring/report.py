"""The static monitoring report: PNG charts plus ``report.html`` in one folder under the data dir.

The page leads with the per-table status ``bronze status`` prints (:func:`bronze_status`: freshness,
failed loads, check results; problems first), sized to fit a 1366×768 laptop screen; the headline
figures, the per-table figures and the charts follow.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bronze_assets.lib.delta.control import AUDIT_LOG, read_table
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.monitoring.metrics import RunStats, headline, load_frames, per_table
from bronze_assets.lib.monitoring.status import NEVER, STALE, TableStatus, _age, bronze_status

HTML_NAME = "report.html"
TITLES = {
    "throughput": "Throughput", "error_rate": "Error rate and runs", "quality": "Quality-score trend",
    "processing_time": "Processing-time trend", "storage_cost": "Storage and cost",
}
LABELS = {
    "tables": "Tables", "records_processed": "Records processed",
    "records_per_minute": "Records per minute (wall time)",
    "wall_seconds": "Wall time (first load start → last load end)",
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
    status: list[TableStatus] = field(default_factory=list)  # bronze_status(): problems first
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def markdown(self) -> str:
        """The headline numbers as a Markdown table."""
        rows = [f"| {LABELS.get(k, k)} | {format_value(k, v)} |" for k, v in self.headline.items()]
        return "\n".join(["| figure | value |", "|---|---|", *rows])


def default_report_dir(data_dir: Path) -> Path:
    """``$BRONZE_DATA_DIR/monitoring`` (./data/monitoring by default) for the data folder ``data_dir``."""
    return data_dir / "monitoring"


def build_report(
    storage: StorageLike,
    out_dir: str | Path | None = None,
    runs: RunStats | None = None,
    since: datetime | None = None,
    instance: Any = None,
    now: datetime | None = None,
) -> ReportResult:
    """Read the control tables in ``storage``; write the PNGs and ``report.html`` into ``out_dir``
    (default: under the storage's settings' data folder).

    ``runs`` are the Dagster run counts (None: shown as "no data yet"); ``since`` limits the rows of
    the figures and charts (not the status table, which is as of ``now``). ``instance`` is the Dagster
    instance the status table reads check results from (None: no check column data).
    Works on empty or missing control tables (every chart then says "no data yet").
    """
    from bronze_assets.lib.monitoring.plots import write_plots  # matplotlib: only for a report

    storage = as_storage(storage)
    out = Path(out_dir) if out_dir is not None else default_report_dir(storage.settings.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    audit_log = read_table(storage, AUDIT_LOG)  # read once: the charts and the status table
    frames = load_frames(storage, since, audit_log)
    status = bronze_status(storage, now=now, instance=instance, audit_log=audit_log)
    result = ReportResult(out, out / HTML_NAME, write_plots(frames, runs, out), headline(frames, runs),
                          per_table(frames), status)
    result.html.write_text(render_html(result, since), encoding="utf-8")
    return result


TABLE_FIGURES = "table_figures"  # the report's metadata entry of :func:`table_figures`


def table_figures(status: list[TableStatus]) -> dict[str, dict[str, Any]]:
    """Per bronze table, the figures the status table read from its log: rows, active rows, Delta
    version (None: no table) and its history table's versions, current rows and Delta version —
    so that a caller in the same process (``bronze demo``'s summary) need not open every table
    again (four requests or more each on an object store)."""
    return {s.table: {"rows": s.rows, "active": s.active, "delta_version": s.delta_version,
                      "history": s.history} for s in status}


def format_value(key: str, value: Any) -> str:
    """Human-readable rendering of one figure."""
    if value is None:
        return "–"
    if key == "error_rate":
        return f"{value:.2%}"
    if key == "wall_seconds":
        return f"{value:,.1f} s" if value < 60 else _age(value / 3600)
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


STATUS_COLUMNS = ("table", "state", "age / window", "last load (UTC)", "rows", "active", "deleted",
                  "version", "files", "checks", "last error")
ERROR_CHARS = 240  # longer errors are cut on the page (the full text is the cell's tooltip)


def _state(s: TableStatus) -> tuple[str, str]:
    """(label, css class) of one table's headline state, in the words ``bronze status`` uses."""
    if s.last_load_failed:
        return "FAILED", "failed"
    if s.freshness == STALE:
        return STALE, "stale"
    if s.freshness == NEVER:
        return NEVER, "never"
    if not s.healthy:  # e.g. NO SNAPSHOT: a daily table whose snapshot partition was never loaded
        return s.state, "stale"
    return s.freshness, "ok"


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M") if at else "–"


def _checks(s: TableStatus) -> str:
    esc = html.escape
    if not s.checks:
        return "–"
    bad = [f'<span class="chk-{esc(r)}">{esc(n)}: {esc(r)}</span>'
           for n, r in s.checks.items() if r != "passed"]
    return "<br>".join(bad) if bad else f'<span class="chk-passed">all {len(s.checks)} passed</span>'


def _error(s: TableStatus) -> str:
    esc = html.escape
    parts, full = [], []
    if s.last_error:
        prefix = f"{_when(s.last_failure)}: " if s.last_failure else ""
        recovered = "" if s.last_load_failed else " (a later load succeeded)"
        full.append(f"{prefix}{s.last_error}{recovered}")
        text = s.last_error if len(s.last_error) <= ERROR_CHARS else s.last_error[:ERROR_CHARS] + "…"
        parts.append(f"{esc(prefix)}{esc(text)}{esc(recovered)}")
    if s.failing_check:
        full.append(f"check {s.failing_check}")
        parts.append(f"check {esc(s.failing_check)}")
    if not parts:
        return "<td class=\"err\">–</td>"
    return f'<td class="err" title="{esc(chr(10).join(full))}">{"<br>".join(parts)}</td>'


def render_status(statuses: list[TableStatus]) -> str:
    """The status table (one row per bronze table, in ``bronze_status`` order: problems first)."""
    esc = html.escape
    rows = []
    for s in statuses:
        label, css = _state(s)
        rows.append(
            f'<tr class="{css}" data-table="{esc(s.table)}">'
            f'<td class="name">{esc(s.table)}<span class="cadence">{esc(s.cadence)}</span></td>'
            f'<td class="state">{esc(label)}</td>'
            f"<td>{esc(_age(s.age_hours))} / {esc(_age(s.freshness_window_hours))}</td>"
            f"<td>{esc(_when(s.last_success))}</td>"
            f"<td>{s.rows:,}</td><td>{s.active:,}</td><td>{s.deleted:,}</td>"
            f"<td>{'–' if s.delta_version is None else s.delta_version}</td><td>{s.files:,}</td>"
            f'<td class="checks">{_checks(s)}</td>{_error(s)}</tr>'
        )
    body = "".join(rows) or f'<tr><td colspan="{len(STATUS_COLUMNS)}">no bronze tables</td></tr>'
    head = "".join(f"<th>{esc(c)}</th>" for c in STATUS_COLUMNS)
    problems = [s.table for s in statuses if not s.healthy]
    summary = (f"{len(problems)} of {len(statuses)} tables need attention: {', '.join(problems)}" if problems
               else f"All {len(statuses)} tables are fresh and their last loads succeeded")
    return (f'<p class="summary {"bad" if problems else "good"}">{esc(summary)}</p>'
            f'<table id="status" class="status"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def render_html(result: ReportResult, since: datetime | None = None) -> str:
    """A self-contained static page; charts are linked by file name (same folder).

    The status table comes first; the page fits 1366 px wide without horizontal scrolling (compact
    type, long errors wrap, images shrink to the page width).
    """
    esc = html.escape
    head_rows = "".join(
        f"<tr><th>{esc(LABELS.get(k, k))}</th><td>{esc(format_value(k, v))}</td></tr>"
        for k, v in result.headline.items()
    )
    columns = ["table_name", "loads", "failed_loads", "records_processed", "records_per_minute",
               "avg_processing_seconds", "quality_score", "storage_bytes", "compute_cost"]
    headers = {"table_name": "table", "records_per_minute": "records / min (wall)",
               "avg_processing_seconds": "avg processing (s)", "quality_score": "quality score",
               "storage_bytes": "storage", "compute_cost": "cost (USD)"}
    table_rows = "".join(
        "<tr>" + "".join(f"<td>{esc(format_value(c, row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in result.tables
    ) or f'<tr><td colspan="{len(columns)}">no data yet</td></tr>'
    charts = "".join(
        f'<figure><figcaption>{esc(TITLES.get(name, name))}</figcaption><a href="{esc(path.name)}">'
        f'<img src="{esc(path.name)}" alt="{esc(TITLES.get(name, name))}"></a></figure>'
        for name, path in result.plots.items()
    )
    scope = f" — figures and charts from rows since {since.isoformat()}" if since else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Bronze monitoring report</title>
<style>
*, *::before, *::after {{ box-sizing: border-box; }}
body {{ font: 13px/1.35 system-ui, sans-serif; margin: .6rem 1rem; color: #222; }}
h1 {{ font-size: 1.25rem; margin: 0; }} h2 {{ font-size: 1.05rem; margin: 1.2rem 0 .4rem; }}
p {{ margin: .2rem 0 .5rem; }} .meta {{ color: #666; font-size: 12px; }}
table {{ border-collapse: collapse; margin-bottom: 1rem; }}
th, td {{ border: 1px solid #ccc; padding: .2rem .45rem; text-align: right; vertical-align: top; }}
th {{ background: #f4f4f4; }}
th:first-child, td:first-child {{ text-align: left; }}
table.status {{ width: 100%; font-size: 12px; }}
.status th {{ white-space: nowrap; text-align: left; }}
.status td {{ white-space: nowrap; }}
.status td.checks {{ text-align: left; }}
.status td.err {{ white-space: normal; text-align: left; overflow-wrap: anywhere; }}
.status td.err {{ min-width: 16rem; font-size: 11px; color: #7a1010; }}
.status td.state {{ font-weight: 600; text-align: left; }}
.status .cadence {{ display: block; color: #777; font-size: 10px; }}
.status tr.failed td {{ background: #fde2e2; }} .status tr.stale td {{ background: #fff1cc; }}
.status tr.never td {{ background: #eeeeee; }} .status tr.ok td.state {{ color: #17692b; }}
.chk-failed {{ color: #b00020; font-weight: 600; }} .chk-warn {{ color: #8a5a00; }}
.chk-passed {{ color: #17692b; }}
.summary.bad {{ color: #b00020; font-weight: 600; }} .summary.good {{ color: #17692b; }}
#tables th {{ overflow-wrap: anywhere; }}
.cols {{ display: flex; flex-wrap: wrap; gap: 0 1.5rem; align-items: flex-start; }}
figure {{ margin: .8rem 0; }} img {{ max-width: 100%; height: auto; border: 1px solid #eee; }}
figcaption {{ font-weight: 600; margin-bottom: .3rem; }}
</style></head><body>
<h1>Bronze monitoring report</h1>
<p class="meta">Generated {esc(result.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"))}{esc(scope)}</p>
<h2>Table status</h2>
{render_status(result.status)}
<div class="cols">
<section><h2>Headline</h2>
<table id="headline">{head_rows}</table></section>
<section><h2>Per table</h2>
<table id="tables"><tr>{"".join(f"<th>{esc(headers.get(c, c.replace('_', ' ')))}</th>" for c in columns)}</tr>
{table_rows}</table></section>
</div>
<h2>Charts</h2>
{charts}
</body></html>
"""
