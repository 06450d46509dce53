"""The monitoring report built from real control-table rows: PNG charts, HTML page, headline numbers."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import matplotlib.image as mpimg
import numpy as np
import pytest

from bronze_assets.contracts import CONTRACTS, LANDING_CONTRACTS
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.delta import control
from bronze_assets.lib.monitoring import RunStats, build_report
from bronze_assets.lib.monitoring.report import format_value
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import AS_OF, SeedDb, query
from bronze_assets_tests.test_ui_e2e import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

# the report lists every bronze table: the source tables' and the landing tables' (§2.6)
EVERY_TABLE = [*CONTRACTS.values(), *LANDING_CONTRACTS.values()]

START = datetime(2026, 10, 29, tzinfo=UTC)
TABLES = {"bz_products": 10_000, "bz_orders": 50_000, "bz_inventory": 100_000, "bz_customers": 25_000}
CHARTS = {"throughput", "error_rate", "quality", "processing_time", "storage_cost"}


def _write_history(root: str) -> dict[str, float]:
    """Three days of loads every 3 h for four tables (every 7th load fails); returns the expected sums."""
    rng = random.Random(42)
    audit, lineage, cost = [], [], []
    expect = {"records": 0, "seconds": 0.0, "loads": 0, "failed": 0, "cost": 0.0}
    first_start, last_end = datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC)
    latest_quality: dict[str, float] = {}
    latest_storage: dict[str, int] = {}
    n = 0
    for step in range(24):
        for table, rows in TABLES.items():
            n += 1
            start = START + timedelta(hours=3 * step, minutes=rng.randint(0, 20))
            seconds = round(rows / rng.uniform(4_000, 9_000), 2)
            end = start + timedelta(seconds=seconds)
            failed = n % 7 == 0
            records = 0 if failed else rng.randint(rows // 100, rows // 10)
            quality = None if failed else round(rng.uniform(91, 99.5), 2)
            details = json.dumps({"avg_quality_score": quality, "inserted": records}) if quality else None
            audit.append({
                "table_name": table, "operation_type": "LOAD", "start_timestamp": start, "end_timestamp": end,
                "records_affected": records, "status": control.FAILED if failed else control.SUCCESS,
                "error_message": "OperationalError: connection reset" if failed else None,
                "user_id": "dagster", "job_id": f"run-{n}", "details": details,
            })
            expect["loads"] += 1
            expect["failed"] += failed
            first_start, last_end = min(first_start, start), max(last_end, end)
            if failed:
                continue
            latest_quality[table] = quality
            lineage.append({
                "source_table": f"tests.{table[3:]}", "target_table": table, "transformation_type": "MERGE",
                "processing_timestamp": end, "records_processed": records,
                "processing_duration_seconds": seconds, "job_id": f"run-{n}", "pipeline_version": "1",
            })
            storage = rows * 60 + step * rows // 2
            compute = round(seconds / 3600 * 0.55, 6)
            cost.append({
                "table_name": table, "job_id": f"run-{n}", "recorded_at": end, "compute_seconds": seconds,
                "cost_rate_per_hour": 0.55, "compute_cost": compute, "storage_bytes": storage,
                "rows_processed": records,
            })
            latest_storage[table] = storage
            expect["records"] += records
            expect["seconds"] += seconds
            expect["cost"] += compute
    # rows the report must ignore: another operation type and a load still running
    audit.append({"table_name": "bz_orders", "operation_type": "OPTIMIZE", "status": control.FAILED,
                  "start_timestamp": START, "end_timestamp": START})
    audit.append({"table_name": "bz_orders", "operation_type": "LOAD", "status": control.IN_PROGRESS,
                  "start_timestamp": START + timedelta(days=3), "details": "not json"})
    control.append_rows(root, control.AUDIT_LOG, audit)
    control.append_rows(root, control.LINEAGE, lineage)
    control.append_rows(root, control.COST_TRACKING, cost)
    expect["quality"] = sum(latest_quality.values()) / len(latest_quality)
    expect["storage"] = sum(latest_storage.values())
    expect["wall_seconds"] = (last_end - first_start).total_seconds()
    return expect


def _pixels(path: Path) -> np.ndarray:
    image = mpimg.imread(path)
    assert image.ndim == 3
    return image[..., :3]


def _assert_chart(path: Path) -> np.ndarray:
    assert path.is_file() and path.suffix == ".png"
    pixels = _pixels(path)
    height, width = pixels.shape[:2]
    assert width >= 400 and height >= 300
    assert float(pixels.std()) > 0.02, f"{path.name} is blank"
    return pixels


def test_report_from_control_rows(tmp_path: Path) -> None:
    root = str(tmp_path / "bronze")
    expect = _write_history(root)
    empty = build_report(str(tmp_path / "nothing"), tmp_path / "empty")

    result = build_report(root, tmp_path / "report", runs=RunStats(active=2, failed=3, succeeded=40))

    assert set(result.plots) == CHARTS
    for name, path in result.plots.items():
        pixels = _assert_chart(path)
        assert path.parent == tmp_path / "report"
        assert not np.array_equal(pixels, _pixels(empty.plots[name])), f"{name} shows no data"

    h = result.headline
    assert h["tables"] == 4
    assert h["loads"] == expect["loads"] == 96 and h["failed_loads"] == expect["failed"] == 13
    assert h["error_rate"] == pytest.approx(13 / 96, abs=1e-4)
    assert h["records_processed"] == expect["records"]
    # wall time: first load start to last load end, idle hours between loads included
    assert h["wall_seconds"] == pytest.approx(expect["wall_seconds"], abs=0.1)
    assert h["records_per_minute"] == pytest.approx(expect["records"] / expect["wall_seconds"] * 60, abs=0.1)
    assert h["records_per_minute"] < expect["records"] / expect["seconds"] * 60 / 100
    assert h["avg_quality_score"] == pytest.approx(expect["quality"], abs=0.01)
    assert h["storage_bytes"] == expect["storage"]
    assert h["compute_cost"] == pytest.approx(expect["cost"], abs=1e-4)
    assert (h["runs_active"], h["runs_failed"], h["runs_succeeded"]) == (2, 3, 40)

    page = result.html.read_text()
    assert result.html == tmp_path / "report" / "report.html"
    for path in result.plots.values():
        assert f'src="{path.name}"' in page
    for key, value in h.items():
        assert format_value(key, value) in page, key
    assert "13.54%" in page and f"{expect['records']:,}" in page
    assert "Records per minute (wall time)" in page
    for table in TABLES:
        assert f"<td>{table}</td>" in page

    by_table = {row["table_name"]: row for row in result.tables}
    assert set(by_table) == set(TABLES)
    assert sum(row["loads"] for row in result.tables) == 96
    assert sum(row["records_processed"] for row in result.tables) == expect["records"]
    assert "| Error rate | 13.54% |" in result.markdown()


def test_report_on_empty_control_tables(tmp_path: Path) -> None:
    result = build_report(str(tmp_path / "bronze"), tmp_path / "out")
    assert set(result.plots) == CHARTS
    for path in result.plots.values():
        _assert_chart(path)
    assert result.headline["loads"] == 0 and result.headline["error_rate"] is None
    assert result.headline["records_per_minute"] is None and "runs_active" not in result.headline
    assert result.tables == []
    page = result.html.read_text()
    assert "no data yet" in page and all(f'src="{p.name}"' in page for p in result.plots.values())


def test_report_since_limits_the_rows(tmp_path: Path) -> None:
    root = str(tmp_path / "bronze")
    _write_history(root)
    last_day = build_report(root, tmp_path / "day", since=START + timedelta(days=2))
    assert last_day.headline["loads"] == 32  # steps 16–23, four tables
    assert last_day.headline["records_processed"] < build_report(root, tmp_path / "all").headline[
        "records_processed"]
    assert "rows since 2026-10-31" in last_day.html.read_text()


NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)
LAPTOP = {"width": 1366, "height": 768}


def _status_rows(page: str) -> list[str]:
    """The bronze tables of the report's status table, top to bottom."""
    table = re.search(r'<table id="status".*?</table>', page, re.S)
    assert table, "no status table"
    return re.findall(r'<tr class="[^"]*" data-table="([^"]+)"', table.group(0))


def _load(table: str, status: str, end: datetime, error: str | None = None) -> dict:
    return {"table_name": table, "operation_type": "LOAD", "start_timestamp": end - timedelta(minutes=2),
            "end_timestamp": end, "records_affected": 0 if error else 100, "status": status,
            "error_message": error, "user_id": "dagster", "job_id": f"run-{table}-{end:%H%M}"}


def test_report_leads_with_the_status_table_problems_first(tmp_path: Path) -> None:
    root = str(tmp_path / "bronze")
    long_error = "SchemaContractError: column email missing; " + "x" * 600
    rows = [_load(c.bronze_table, control.SUCCESS, NOW - timedelta(minutes=30)) for c in EVERY_TABLE
            if c.bronze_table not in {"bz_orders", "bz_returns", "bz_customers"}]
    rows += [
        _load("bz_orders", control.SUCCESS, NOW - timedelta(hours=5)),  # hourly: 2 h window, STALE
        _load("bz_customers", control.SUCCESS, NOW - timedelta(hours=1)),
        _load("bz_customers", control.FAILED, NOW - timedelta(minutes=10), long_error),  # FAILED
        _load("bz_products", control.FAILED, NOW - timedelta(hours=3), "OperationalError: reset"),
    ]  # bz_returns: never loaded
    control.append_rows(root, control.AUDIT_LOG, rows)

    result = build_report(root, tmp_path / "report", now=NOW)
    page = result.html.read_text()

    order = _status_rows(page)
    assert sorted(order) == sorted(c.bronze_table for c in EVERY_TABLE), "every bronze table is listed"
    assert order[:3] == ["bz_customers", "bz_orders", "bz_returns"], "stale / failed / never loaded first"
    assert order == [s.table for s in result.status]
    assert page.index('id="status"') < page.index('id="headline"') < page.index("<img")
    assert f"3 of {len(EVERY_TABLE)} tables need attention" in page
    row = {name: re.search(rf'data-table="{name}">(.*?)</tr>', page, re.S).group(1)  # type: ignore[union-attr]
           for name in order}
    assert "FAILED" in row["bz_customers"] and "SchemaContractError" in row["bz_customers"]
    err = re.search(r'<td class="err" title="([^"]*)">(.*?)</td>', row["bz_customers"], re.S)
    assert err
    title, shown = err.groups()
    assert long_error in title and "x" * 600 not in shown and shown.endswith("…"), "long errors are cut"
    assert "STALE" in row["bz_orders"] and "5.0 h / 2.0 h" in row["bz_orders"]
    assert "never loaded" in row["bz_returns"]
    assert "fresh" in row["bz_products"] and "a later load succeeded" in row["bz_products"]


@pytest.mark.integration
@pytest.mark.e2e
def test_report_with_real_loads_fits_a_laptop_screen(seed_db: SeedDb, tmp_path: Path) -> None:
    """Real loads and check results; the page in headless Chromium at 1366×768 (screenshot saved)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run `sudo apt-get install -y chromium` "
                    "(scripts/install-system-deps.sh, called by `make test`, does it when it can)")
    from playwright.sync_api import expect, sync_playwright

    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))
    b = Bronze(fresh_dsn, tmp_path / "bronze")
    instance = dg.DagsterInstance.ephemeral()
    for table in ("products", "warehouses", "orders", "customers"):
        assert dg.materialize([b.assets[f"bz_{table}"]], resources=b.resources, instance=instance).success
    query(fresh_dsn, "ALTER TABLE tests.customers RENAME COLUMN email TO email_address")
    assert not dg.materialize([b.assets["bz_customers"]], resources=b.resources, instance=instance,
                              raise_on_error=False).success

    result = build_report(str(b.root), tmp_path / "report", instance=instance)
    page_html = result.html.read_text()
    order = _status_rows(page_html)
    assert len(order) == len(EVERY_TABLE) and order[0] == "bz_customers", order
    assert "schema_contract: failed" in page_html and "all 3 passed" in page_html  # bz_warehouses' checks
    status = {s.table: s for s in result.status}
    assert f"<td>{status['bz_products'].rows:,}</td>" in page_html and status["bz_products"].rows > 0

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=LAPTOP)
            page.goto(result.html.as_uri())
            table = page.locator("#status")
            expect(table).to_be_visible()
            page.screenshot(path=shot)
            scroll_width, inner_width = page.evaluate(
                "[document.documentElement.scrollWidth, window.innerWidth]")
            assert scroll_width <= inner_width, f"horizontal scrollbar: {scroll_width} > {inner_width}"
            box = table.bounding_box()
            assert box is not None
            assert box["y"] >= 0 and box["y"] + box["height"] <= LAPTOP["height"], f"below the fold: {box}"
            assert box["x"] >= 0 and box["x"] + box["width"] <= LAPTOP["width"], box
            assert page.locator("#status tbody tr").count() == len(EVERY_TABLE)
            assert page.locator("#status tbody tr").first.get_attribute("data-table") == "bz_customers"
        finally:
            browser.close()
    assert shot.is_file() and shot.stat().st_size > 10_000
