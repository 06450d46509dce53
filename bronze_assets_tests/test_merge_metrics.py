"""Each load surfaces its engine's own MERGE metrics and the write amplification (rows rewritten ÷
rows changed) in the materialization metadata (both engines: see test_spark_pipes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bronze_assets.lib.monitoring.status import as_json, bronze_status
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import query

pytestmark = pytest.mark.integration


def test_merge_metrics_and_rewrite_ratio_in_the_metadata(seeded: str, tmp_path: Path) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    first = b.materialize("products")
    rows = first["rows_read"]
    assert (first["merge_rows_inserted"], first["merge_rows_written"]) == (rows, rows)
    assert first["merge_files_added"] >= 1 and first["merge_files_removed"] == 0
    assert first["rewrite_ratio"] == 1.0

    query(seeded, "UPDATE tests.products SET unit_price = unit_price + 1, updated_at = now() "
                  "WHERE product_id IN (1, 2)")
    query(seeded, "DELETE FROM tests.products WHERE product_id = 3")
    query(seeded, "INSERT INTO tests.products VALUES (990001, 'new', 'x', 1.00, 'ABC-123', now())")
    changed = b.materialize("products")
    assert (changed["rows_updated"], changed["rows_soft_deleted"], changed["rows_inserted"]) == (2, 1, 1)
    # the engine's view: a soft delete is an update of the row; every untouched row of a rewritten
    # file is copied
    history = b.table("products").history(1)[0]["operationMetrics"]
    assert changed["merge_rows_updated"] == history["num_target_rows_updated"] == 3
    assert changed["merge_rows_inserted"] == history["num_target_rows_inserted"] == 1
    assert changed["merge_rows_copied"] == history["num_target_rows_copied"] == rows - 3
    assert changed["merge_rows_written"] == rows + 1
    assert changed["merge_files_removed"] == history["num_target_files_removed"] >= 1
    assert changed["rewrite_ratio"] == round((rows + 1) / 4, 2)

    # the last successful load's MERGE in `bronze status --json`
    statuses = json.loads(as_json(bronze_status(tmp_path / "bronze")))["tables"]
    (status,) = [s for s in statuses if s["table"] == "bz_products"]
    merge = status["last_merge"]
    assert merge["engine"] == "local" and merge["updated"] == 2 and merge["soft_deleted"] == 1
    assert merge["engine_metrics"]["rows_copied"] == rows - 3
    assert merge["rewrite_ratio"] == changed["rewrite_ratio"]

    again = b.materialize("products")
    assert again["committed"] is False and again["merge_rows_written"] == 0
    assert "rewrite_ratio" not in again, "nothing changed: no ratio"
