"""``bronze demo``: every partition of every asset materialized in one ranged run per partitions
definition, recorded on a real (SQLite) instance, with one progress line per table and Dagster's
event stream in a log file instead of the terminal."""

from __future__ import annotations

import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.partitions import partitions_def
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.demo.run import DAGSTER_SETTINGS, LOG_FILE, TableProgress, materialize_all, run_demo
from bronze_assets.demo.seed import seed_source
from bronze_assets.settings import ENV_SOURCE_DSN, data_dir
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import AS_OF

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def short_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Six daily (2026-10-28 … 11-02) and three monthly (2026-09 … 11) partitions at NOW."""
    monkeypatch.setenv("BRONZE_START_DATE", "2026-10-28")
    monkeypatch.setenv("BRONZE_PARTITIONS_START", "2026-09-01")


def test_every_partition_is_materialized_with_one_run_per_partitions_definition(
    fresh_dsn: str, tmp_path: Path, short_partitions: None, capfd: pytest.CaptureFixture[str]
) -> None:
    seed_source(fresh_dsn, SeedOptions(scale=0.01, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    progress: list[TableProgress] = []
    log = Records()
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:  # SQLite, as the UI
        metadata = materialize_all(bronze.definitions(), fresh_dsn, instance, now=NOW,
                                   on_table=progress.append, log_handler=log)

        assert set(metadata) == {c.bronze_table for c in CONTRACTS.values()}
        assert all(int(m["rows_read"]) > 0 for m in metadata.values())  # type: ignore[call-overload]
        runs = instance.get_runs()
        assert len(runs) == 3 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        ranges = {(r.tags.get("dagster/asset_partition_range_start"),
                   r.tags.get("dagster/asset_partition_range_end")) for r in runs}
        assert ranges == {(None, None), ("2026-10-28", "2026-11-02"), ("2026-09-01", "2026-11-01")}
        for contract in CONTRACTS.values():
            parts = partitions_def(contract)
            key = dg.AssetKey(contract.bronze_table)
            if parts is None:
                assert instance.get_latest_materialization_event(key) is not None
            else:  # what the UI shows: every partition of the definition, none failed
                assert instance.get_materialized_partitions(key) == set(parts.get_partition_keys(NOW))

    assert sorted(p.table for p in progress) == sorted(c.bronze_table for c in CONTRACTS.values())
    assert all(p.ok and p.rows > 0 and p.seconds > 0 for p in progress)
    counts = {p.table: p.partitions for p in progress}
    assert counts["bz_inventory"] == 6 and counts["bz_orders"] == 3 and counts["bz_products"] == 0
    # Dagster's events went to the log handler, not to the terminal
    assert sum(r.levelno == logging.DEBUG for r in log.records) > 100
    out, err = capfd.readouterr()
    assert "ASSET_MATERIALIZATION" not in out + err and "DEBUG" not in out + err
    assert not any(k in os.environ for k in DAGSTER_SETTINGS), "the Dagster switches are scoped to the runs"


def test_run_demo_prints_one_line_per_table_and_logs_the_rest(
    fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_partitions: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", home)  # the UI's instance settings
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(ENV_SOURCE_DSN, fresh_dsn)
    messages: list[str] = []

    summaries = run_demo(scale=0.01, on_progress=messages.append)

    assert [s.table for s in summaries] == [c.bronze_table for c in CONTRACTS.values()]
    assert all(s.bronze_rows > 0 and s.rows_read > 0 for s in summaries)
    table_lines = [m for m in messages if m.startswith("  bz_")]
    assert sorted(m.split()[0] for m in table_lines) == sorted(s.table for s in summaries)
    assert messages[0].startswith("seeding") and any(m.startswith("monitoring report:") for m in messages)
    assert len(messages) == len(table_lines) + 5  # seeding, seeded, loading, materialized, report
    _, err = capfd.readouterr()
    assert "PreviewWarning" not in err and "DEBUG" not in err and "ASSET_MATERIALIZATION" not in err
    log = (data_dir() / LOG_FILE).read_text()
    assert "ASSET_MATERIALIZATION" in log and "RUN_SUCCESS" in log
    with dg.DagsterInstance.get() as instance:  # the runs landed in $DAGSTER_HOME
        assert len(instance.get_runs()) == 4  # dimensions, daily, monthly, monitoring report
