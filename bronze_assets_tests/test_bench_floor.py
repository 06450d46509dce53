"""benchmarks/bench_floor.py on a scale-0.01 source: the floor's streamed create writes the tables
the product's load writes, and its MERGE updates exactly the changed rows."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bronze_assets.contracts import CONTRACTS
from bronze_assets.settings import ENV_SOURCE_DSN, ENV_START_DATE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_floor
import bench_ingest


def test_floor_writes_the_products_tables_and_merges_the_changed_rows(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bronze_assets.lib.delta.storage import Storage
    from bronze_assets.lib.load.engine import LocalEngine
    from bronze_assets.lib.load.lifecycle import Lifecycle, LoadRequest
    from bronze_assets.settings import Settings, bronze_root

    monkeypatch.setenv(ENV_SOURCE_DSN, seeded)
    monkeypatch.setenv(ENV_START_DATE, datetime.now(UTC).date().isoformat())
    out = tmp_path / "floor"
    initial = bench_floor.phase_initial(out)["stages"]
    rows = initial["extract/serial"]["rows"]
    assert rows > 0
    assert all(figures["rows"] == rows for figures in initial.values())  # every stage saw every row

    settings = Settings.from_env()
    storage = Storage(bronze_root(), settings=settings)
    now = datetime.now(UTC)
    for contract in CONTRACTS.values():  # the product's load of each table (its lifecycle, no Dagster)
        window = bench_floor.initial_window(contract, settings, now)
        partition = None if window.start is None else (window.start, window.end)
        Lifecycle(LoadRequest(contract, partition), LocalEngine(storage), seeded, storage).run()
    dagster = bench_floor.phase_dagster(out)["stages"]["dagster"]  # a materialization per key and partition
    assert dagster["materializations"] >= sum(1 + c.history for c in CONTRACTS.values())
    same = bench_floor.phase_same(out)
    assert same["same"], same["differing_rows"]

    bench_ingest.phase_change()
    merged = bench_floor.phase_merge(out)["stages"]
    for mode in bench_floor.MODES:
        tables = merged[f"merge/{mode}"]["tables"]
        assert sum(t["rows"] for t in tables.values()) > 0
        for name, table in tables.items():  # a table of < 100 rows has no key divisible by 100
            assert table.get("rows_updated", 0) == table["rows"], (mode, name, table)
            assert table.get("rows_inserted", 0) == 0, (mode, name, table)
