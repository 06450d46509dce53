"""The commit log is read once per load (lib/delta/commit_log.py, CommitLog): every question a load
asks of its table's history (CDC position, watermark, hash version, first load, committed batch,
interrupted batch) is answered from one ``history`` read, and a question about the whole history
of a log longer than the read reads the rest."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake

from bronze_assets.defs.schedules import CHANGES_ONLY_TAG
from bronze_assets.lib.delta.commit_log import (
    BATCH_KEY,
    BATCH_TIME_KEY,
    FIRST_PAGE,
    PARTITIONS_KEY,
    WATERMARK_KEY,
    CommitLog,
)
from bronze_assets.lib.delta.control import AUDIT_LOG, COST_TRACKING, LINEAGE, read_table
from bronze_assets.lib.delta.log_checkpoint import checkpoint_current, latest_checkpoint, worth_a_checkpoint
from bronze_assets.lib.monitoring.status import bronze_status
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import query

pytestmark = pytest.mark.integration

TODAY = datetime.now(UTC).date()


@pytest.fixture
def history_reads(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """The ``limit`` of every ``DeltaTable.history`` call made while the test runs."""
    calls: list[int | None] = []
    original = DeltaTable.history

    def counted(self: DeltaTable, limit: int | None = None) -> list:
        calls.append(limit)
        return original(self, limit)

    monkeypatch.setattr(DeltaTable, "history", counted)
    return calls


@pytest.mark.parametrize("table", ["products", "inventory"])  # a full load; a CDC tick
def test_an_unchanged_reload_reads_the_commit_history_once(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str,
        history_reads: list[int | None]) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", (TODAY - timedelta(days=1)).isoformat())
    b = Bronze(seeded, tmp_path / "bronze")
    partition = None if table == "products" else TODAY.isoformat()
    b.materialize(table, partition)
    version = b.version(table)
    rows = {t: read_table(b.storage(), t).num_rows for t in (AUDIT_LOG, LINEAGE, COST_TRACKING)}
    history_reads.clear()
    meta = b.materialize(table, partition, tags={CHANGES_ONLY_TAG: "true"})
    assert meta["rows_inserted"] == meta["rows_updated"] == meta["rows_soft_deleted"] == 0
    assert b.version(table) == version, "an unchanged load commits nothing"
    assert history_reads == [FIRST_PAGE], "one read of the table's latest commits, none deeper"
    added = {t: read_table(b.storage(), t).num_rows - n for t, n in rows.items()}
    # the full load read its rows (lineage and cost); the CDC tick read none: its audit row only
    moved = 1 if meta["rows_read"] else 0
    assert added == {AUDIT_LOG: 1, LINEAGE: moved, COST_TRACKING: moved}, meta["rows_read"]
    # the next runs open the table from a checkpoint at its version (when reading its commits
    # since the last one costs more), written once
    latest = latest_checkpoint(b.storage(), f"bz_{table}")
    assert latest == version if worth_a_checkpoint(None, version) else latest is None, (version, latest)
    assert not checkpoint_current(b.storage(), f"bz_{table}", b.table(table))


def test_a_daily_full_load_reads_only_its_latest_commits(
        seeded: str, tmp_path: Path, history_reads: list[int | None]) -> None:
    """A full load plans no window from the log (no watermark, no first load): however many
    days it has committed, a load reads the first page of its history and no deeper, and after
    its commit only that commit (its metrics); ``bronze status`` reads none of it."""
    b = Bronze(seeded, tmp_path / "bronze")
    for day in range(FIRST_PAGE + 3):  # a commit a day (a product changed each day)
        query(seeded, f"UPDATE tests.products SET unit_price = unit_price + 1 WHERE product_id = {day + 1}")
        b.materialize("products")
    assert b.version("products") == FIRST_PAGE + 2
    history_reads.clear()
    query(seeded, "UPDATE tests.products SET unit_price = unit_price + 1 WHERE product_id = 1")
    meta = b.materialize("products")
    assert meta["rows_updated"] == 1
    # the log's first page, then the one commit the load made (its engine metrics)
    assert history_reads == [FIRST_PAGE, 1], history_reads
    history_reads.clear()
    (status,) = [s for s in bronze_status(b.storage()) if s.table == "bz_products"]
    assert status.watermark is None and history_reads == [], "no watermark to look for"


def test_a_checkpoint_is_written_when_it_reads_less_than_the_commits_since() -> None:
    assert not worth_a_checkpoint(None, 4), "5 commits read twice (10 GETs) < a checkpoint (11)"
    assert worth_a_checkpoint(None, 5)
    assert worth_a_checkpoint(9, 10), "after a checkpoint, every commit since is two GETs more"
    assert not worth_a_checkpoint(10, 10)


def _commit(uri: str, meta: dict[str, str]) -> None:
    write_deltalake(uri, pa.table({"k": pa.array([1], pa.int64())}), mode="append",
                    commit_properties=CommitProperties(custom_metadata=meta))


def test_a_partial_log_reads_the_rest_for_whole_history_questions(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    for day in range(1, 6):
        first = date(2025, 1, day)
        _commit(uri, {BATCH_KEY: f"b{day}", BATCH_TIME_KEY: f"2025-01-0{day}T00:00:00+00:00",
                      PARTITIONS_KEY: f"{first.isoformat()}/{(first + timedelta(days=1)).isoformat()}"})
    dt = DeltaTable(uri)
    partial, whole = CommitLog.read(dt, 2), CommitLog.read(dt, None)
    assert not partial.complete and len(partial.entries) == 2 and whole.complete
    assert partial.loaded_ranges() == whole.loaded_ranges() and len(whole.loaded_ranges()) == 5
    assert partial.first_load_time() == whole.first_load_time() == datetime(2025, 1, 1, tzinfo=UTC)
    assert partial.latest(2) == whole.latest(2)
    assert partial.committed_batch_ids() == whole.committed_batch_ids() == {f"b{i}" for i in range(1, 6)}
    assert CommitLog.current(dt, partial) is partial, "read at the table's version: reused"
    _commit(uri, {BATCH_KEY: "b6"})
    assert "b6" in CommitLog.current(DeltaTable(uri), partial).committed_batch_ids(), "changed: read again"
    assert CommitLog.read(None) == CommitLog() and CommitLog().watermark() is None


def test_a_question_the_first_page_does_not_answer_reads_deeper_once(
        tmp_path: Path, history_reads: list[int | None]) -> None:
    uri = str(tmp_path / "t")
    _commit(uri, {BATCH_KEY: "b0", WATERMARK_KEY: "2025-01-01T00:00:00+00:00"})
    for n in range(FIRST_PAGE + 2):  # later commits without a watermark (e.g. maintenance)
        _commit(uri, {"note": str(n)})
    history_reads.clear()
    commits = CommitLog.read(DeltaTable(uri))
    assert not commits.complete and history_reads == [FIRST_PAGE]
    assert commits.watermark() == datetime(2025, 1, 1, tzinfo=UTC)
    assert commits.hash_version() == 1 and commits.watermark() is not None  # b0 recorded no hash version
    assert history_reads == [FIRST_PAGE, 4 * FIRST_PAGE], "one deeper read (four times as deep), once"
    assert commits.latest(3) == CommitLog.read(DeltaTable(uri), None).latest(3)
    assert len(commits.latest()) == FIRST_PAGE + 3
