"""Monitoring: KPI figures from the control tables, PNG charts and a static HTML report."""

from bronze_assets.lib.monitoring.metrics import RunStats, load_frames
from bronze_assets.lib.monitoring.report import ReportResult, build_report, default_report_dir

__all__ = ["ReportResult", "RunStats", "build_report", "default_report_dir", "load_frames"]
