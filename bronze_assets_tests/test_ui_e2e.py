"""The Dagster UI in a real browser: Debian's headless Chromium driven by Playwright (no browser downloads).

A webserver on workspace.yaml serves a small seeded source. The browser finds the ten bronze assets
on the lineage graph and their checks on each asset's Checks tab, materializes ``bz_warehouses``
with the asset page's Materialize button and follows the run to success. Screenshots land in
``test-artifacts/`` (``dagit_e2e.png`` is the lineage graph after the run; ``$BRONZE_TEST_ARTIFACTS``
moves the folder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from deltalake import DeltaTable
from playwright.sync_api import Page, expect, sync_playwright

from bronze_assets.contracts import CONTRACTS, LANDING_CONTRACTS
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.settings import ENV_BRONZE_ROOT, ENV_DATA_DIR, ENV_SOURCE_DSN
from bronze_assets_tests.conftest import AS_OF, SeedDb, query
from bronze_assets_tests.webserver import ROOT, XDIST_GROUP, Webserver, running_webserver

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.xdist_group(XDIST_GROUP)]

CHROMIUM = Path("/usr/bin/chromium")
# Headless and quiet: without the background-networking switches Chromium keeps calling out to
# Google services, which a closed network answers with nothing but timeouts.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Tall enough for the lineage graph to fit all ten asset nodes (it only renders what is in view).
VIEWPORT = {"width": 1600, "height": 2600}
UI_TIMEOUT_MS = 90_000
RUN_TIMEOUT_MS = 300_000
ARTIFACTS = Path(os.environ.get("BRONZE_TEST_ARTIFACTS") or ROOT / "test-artifacts")

ASSETS = [f"bz_{t}" for t in ("products", "suppliers", "warehouses", "inventory", "orders", "order_details",
                              "shipments", "returns", "stock_levels", "customers")]
CHECKS = ["schema_contract", "quality_score", "key_uniqueness", "referential_integrity", "reconciliation"]
# the bronze graph also shows the history tables (written by their table's step) and the landing tables
GROUP_ASSETS = [*ASSETS, *(c.history_table for c in CONTRACTS.values() if c.history),
                *(c.bronze_table for c in LANDING_CONTRACTS.values())]
NO_FOREIGN_KEYS = {"bz_products", "bz_warehouses", "bz_customers"}  # no referential_integrity check
TARGET = "bz_warehouses"  # unpartitioned: the Materialize button launches one run, no partition dialog


GROUP_LINEAGE = "/locations/bronze_assets.definitions/asset-groups/bronze/lineage"  # the bronze group's graph


def expected_checks(asset: str) -> list[str]:
    return [c for c in CHECKS if not (c == "referential_integrity" and asset in NO_FOREIGN_KEYS)]


def test_ui_shows_assets_and_checks_and_materializes_from_the_browser(seed_db: SeedDb, tmp_path: Path
                                                                      ) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run `sudo apt-get install -y chromium` "
                    "(scripts/install-system-deps.sh, called by `make test`, does it when it can)")
    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))
    env = {ENV_SOURCE_DSN: fresh_dsn, ENV_BRONZE_ROOT: str(tmp_path / "bronze"),
           ENV_DATA_DIR: str(tmp_path / "data")}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("dagit_e2e*.png"):
        old.unlink()

    with running_webserver(tmp_path / "dagster_home", env) as web, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            try:
                run_id = drive_the_ui(page, web)
            except BaseException as exc:
                page.screenshot(path=ARTIFACTS / "dagit_e2e_failure.png", full_page=True)
                exc.add_note(f"screenshot: {ARTIFACTS / 'dagit_e2e_failure.png'}\n"
                             f"webserver log tail:\n{web.log_tail()}")
                raise
        finally:
            browser.close()
        run = web.graphql(
            "query($id: ID!) { runOrError(runId: $id) { ... on Run { status assetSelection { path } "
            "tags { key value } } } }", {"id": run_id})["runOrError"]

    assert run["status"] == "SUCCESS"
    assert run["assetSelection"] == [{"path": [TARGET]}]
    assert {"key": "dagster/from_ui", "value": "true"} in run["tags"]
    landed = DeltaTable(str(tmp_path / "bronze" / TARGET)).to_pyarrow_dataset().count_rows()
    (source_rows,) = query(fresh_dsn, "SELECT count(*) FROM tests.warehouses")[0]
    assert landed == source_rows > 0


def drive_the_ui(page: Page, web: Webserver) -> str:
    """Every step a person would take in the UI; returns the id of the run launched by the click."""
    # The lineage graph: one node per bronze asset, each with its number of checks.
    page.goto(f"{web.url}{GROUP_LINEAGE}")
    graph = page.locator("svg foreignObject")
    for asset in ASSETS:
        node = graph.filter(has=page.get_by_text(asset, exact=True))
        expect(node).to_be_visible()
        expect(node).to_contain_text(f"0 / {len(expected_checks(asset))} Passed")
    expect(graph).to_have_count(len(GROUP_ASSETS))

    # Each asset's Checks tab lists its checks by name.
    for asset in ASSETS:
        page.goto(f"{web.url}/assets/{asset}?view=checks")
        names = expected_checks(asset)
        expect(page.get_by_text(f"Checks ({len(names)})", exact=True)).to_be_visible()
        for name in names:
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        if asset == "bz_orders":
            page.screenshot(path=ARTIFACTS / "dagit_e2e_checks.png")

    # Materialize one asset with the asset page's button and follow the run it launched.
    page.goto(f"{web.url}/assets/{TARGET}")
    expect(page.get_by_text("Never materialized", exact=True).first).to_be_visible()
    page.locator("button", has_text=re.compile(r"^Materialize$")).click()
    toast = page.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}$"))
    dialog = page.get_by_role("dialog")
    expect(toast.or_(dialog).first).to_be_visible()
    if dialog.count() and dialog.first.is_visible():  # a launch dialog (partitions, config): confirm it
        dialog.first.locator("button", has_text=re.compile(r"^(Launch|Materialize)")).last.click()
        expect(toast).to_be_visible()
    notifications = page.get_by_role("region", name=re.compile(r"^Notifications"))
    notifications.get_by_role("link", name="View", exact=True).click()  # the toast's link to the run
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)
    outcome = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(outcome).to_be_visible(timeout=RUN_TIMEOUT_MS)
    page.screenshot(path=ARTIFACTS / "dagit_e2e_run.png")
    assert outcome.inner_text() == "Success", f"run {run_id} ended {outcome.inner_text()}"

    # The asset now shows a materialization and passed checks: on its page and on the graph.
    page.goto(f"{web.url}/assets/{TARGET}?view=checks")
    n = len(expected_checks(TARGET))  # the button runs every check of the asset, reconciliation too
    expect(page.get_by_text("Succeeded", exact=True)).to_have_count(n)
    page.goto(f"{web.url}{GROUP_LINEAGE}")
    node = graph.filter(has=page.get_by_text(TARGET, exact=True))
    expect(node).to_contain_text(f"{n} / {n} Passed")
    expect(node).to_contain_text("Materialized")
    expect(graph).to_have_count(len(GROUP_ASSETS))
    page.screenshot(path=ARTIFACTS / "dagit_e2e.png", full_page=True)
    return run_id
