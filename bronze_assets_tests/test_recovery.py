"""Late commits are not lost behind the watermark; SIGKILL mid-write then re-run is exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.control import CHECKPOINTS, read_table
from bronze_assets.lib.delta.storage import open_table
from bronze_assets.lib.source.postgres import connect
from bronze_assets_tests.bronze_helpers import Bronze, active_hashes, source_hashes
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

pytestmark = pytest.mark.integration
FAR = datetime(2100, 1, 1, tzinfo=UTC)


def test_row_of_a_transaction_open_across_the_watermark_is_not_lost(seed_db: SeedDb, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", (datetime.now(UTC) + timedelta(days=1)).date().isoformat())
    fresh_dsn = seed_db(SeedOptions(scale=0, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    late = connect(fresh_dsn)  # transaction T1: starts now, commits after the next load
    with late.cursor() as cur:
        cur.execute("INSERT INTO tests.inventory VALUES (1, 1, 1, 10, now())")
        cur.execute("SELECT now()")
        (t1,) = cur.fetchone()
    time.sleep(0.05)
    query(fresh_dsn, "INSERT INTO tests.inventory VALUES (2, 1, 1, 20, now())")

    first = bronze.load_direct("inventory", (t1 - timedelta(hours=1), FAR), overlap=timedelta(0))
    assert first.inserted == 1, "only the committed row is visible"
    watermark = CommitLog.read(open_table(bronze.uri("inventory"))).watermark()
    assert watermark is not None and watermark < t1, "watermark capped below the open transaction"
    (row2_time,) = query(fresh_dsn, "SELECT updated_at FROM tests.inventory WHERE inventory_id = 2")[0]
    assert row2_time > t1, "an uncapped watermark (max updated_at seen) would have skipped row 1"

    late.commit()
    late.close()
    # the next load's own window starts after row 1's updated_at: only the watermark reaches it
    second = bronze.load_direct("inventory", (t1 + timedelta(milliseconds=1), FAR), overlap=timedelta(0))
    assert second.inserted == 1
    assert set(active_hashes(bronze.read("inventory"), "inventory_id")) == {1, 2}


LOAD_SCRIPT = """
import sys
from bronze_assets.contracts import CONTRACTS
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.settings import Settings
contract = CONTRACTS[sys.argv[3]]
root = Storage(sys.argv[2].rsplit("/", 1)[0], settings=Settings.from_env())
staged = extract_and_stage(contract, sys.argv[1], root)
BronzeMerger(contract, root).merge(staged)
print("finished")
"""


def _kill_when_new_parquet(dsn: str, uri: str, table: str, known: set[Path]) -> tuple[bool, int]:
    """Run a load in a child process and SIGKILL it as soon as it writes a new data file."""
    proc = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT, dsn, uri, table],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 120
    root = Path(uri)
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if root.exists() and set(root.rglob("*.parquet")) - known:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    versions = len(list((root / "_delta_log").glob("*.json"))) if (root / "_delta_log").exists() else 0
    return killed, versions


def test_sigkill_mid_write_then_rerun_is_exact(seed_db: SeedDb, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_STAGE_DIR", str(tmp_path / "stage"))
    monkeypatch.setenv("BRONZE_CDC_TARGET_FILE_MB", "1")  # many files: the kill lands mid-write
    fresh_dsn = seed_db(SeedOptions(scale=0.5, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    uri = bronze.uri("order_details")

    # 1) killed during the initial write: no commit, orphan files only
    killed, versions = _kill_when_new_parquet(fresh_dsn, uri, "order_details", set())
    assert killed and versions == 0, "the kill must land before the first commit"
    bronze.load_direct("order_details")
    frame = bronze.read("order_details")
    assert frame["order_detail_id"].n_unique() == frame.height
    assert active_hashes(frame, "order_detail_id") == source_hashes(fresh_dsn, "order_details")

    # 2) killed during a MERGE that rewrites a third of the rows
    query(fresh_dsn, "UPDATE tests.order_details SET quantity_ordered = quantity_ordered + 1, "
                     "updated_at = now() WHERE order_detail_id % 3 = 0")
    query(fresh_dsn, "DELETE FROM tests.order_details WHERE order_detail_id % 97 = 0")
    known = set(Path(uri).rglob("*.parquet"))
    killed, versions = _kill_when_new_parquet(fresh_dsn, uri, "order_details", known)
    assert killed and versions == 1, "the kill must land before the MERGE commit"
    result = bronze.load_direct("order_details")
    assert result.updated > 30_000 and result.soft_deleted > 900
    frame = bronze.read("order_details")
    assert frame["order_detail_id"].n_unique() == frame.height, "no duplicate keys"
    assert active_hashes(frame, "order_detail_id") == source_hashes(fresh_dsn, "order_details")
    again = bronze.load_direct("order_details")
    assert not again.committed, "a further re-run changes nothing"


CHUNKED_LOAD_SCRIPT = """
import sys
from bronze_assets.contracts import CONTRACTS
from bronze_assets.lib.delta.control import record_checkpoint
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.settings import Settings
dsn, root, table = sys.argv[1:4]
root = Storage(root, settings=Settings.from_env())
contract = CONTRACTS[table]
staged = extract_and_stage(contract, dsn, root)
BronzeMerger(contract, root).merge(staged, on_commit=lambda info: record_checkpoint(root, info, "killed-run"))
print("finished")
"""


@pytest.mark.parametrize("first_load", [True, False], ids=["initial-write", "merge"])
def test_killed_chunked_load_resumes_from_its_last_committed_chunk(
    seed_db: SeedDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_load: bool
) -> None:
    monkeypatch.setenv("BRONZE_STAGE_DIR", str(tmp_path / "stage"))
    monkeypatch.setenv("BRONZE_COMMIT_CHUNK_ROWS", "50")
    fresh_dsn = seed_db(SeedOptions(scale=0.1, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    log_dir = Path(bronze.uri("products")) / "_delta_log"
    base = 0
    if not first_load:
        bronze.load_direct("products")  # one version, then every row changes: a 20-chunk MERGE
        query(fresh_dsn, "UPDATE tests.products SET unit_price = unit_price + 1, updated_at = now()")
        base = bronze.version("products") + 1
    args = [sys.executable, "-c", CHUNKED_LOAD_SCRIPT, fresh_dsn, str(bronze.root), "products"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (log_dir / f"{base + 2:020d}.json").exists():  # three chunks committed
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    chunks_done = bronze.version("products") + 1 - base
    assert 3 <= chunks_done < 20, f"the kill must land mid-table ({chunks_done} chunks committed)"
    frame = bronze.read("products")
    killed_batch = frame.sort("update_timestamp")["batch_id"][-1]
    committed = frame.filter(pl.col("batch_id") == killed_batch).height
    assert committed == chunks_done * 50

    result = bronze.load_direct("products")
    assert result.resumed_batch_id == killed_batch
    assert result.rows_skipped_by_checkpoint == committed, "committed chunks are not written again"
    assert result.inserted + result.updated == 1000 - committed
    assert result.commits == -(-(1000 - committed) // 50)
    frame = bronze.read("products")
    assert frame["product_id"].n_unique() == frame.height == 1000, "no duplicate keys"
    assert active_hashes(frame, "product_id") == source_hashes(fresh_dsn, "products")
    checkpoints = read_table(str(bronze.root), CHECKPOINTS).to_pylist()
    mine = [c for c in checkpoints if c["batch_id"] == killed_batch]
    assert len(mine) >= chunks_done - 1 and all(c["status"] == "IN_PROGRESS" for c in mine)
