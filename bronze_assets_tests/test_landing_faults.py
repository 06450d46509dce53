"""Landing files exactly once under faults (ARCHITECTURE §2.6): a landing run in its own process
killed with SIGKILL before and after its commit, then run again; two runs at once. Afterwards
every record is in the table once, every file once in ``bz_landing_files`` and every bad line
once in ``bz_quarantine`` — with and without a primary key (appended records show a duplicate)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable

from bronze_assets.lib.delta.landing_ledger import LEDGER_TABLE
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE
from bronze_assets_tests.landing_runner import EVENTS, storage_at

ROOT = Path(__file__).resolve().parent.parent


def write(data: Path, name: str, lines: list[str | dict]) -> None:
    path = data / "landing" / EVENTS.name / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    os.utime(path, (time.time() - 60,) * 2)


def event(i: int) -> dict:
    return {"event_id": i, "shipment_id": 100 + i, "event_time": "2026-01-01T10:00:00Z",
            "status": "IN_TRANSIT", "location": f"hub {i}"}


def files(data: Path, first: int) -> int:
    """Two files of events ``first``.. with a bad line each; returns the number of good lines."""
    write(data, f"f{first}/a.jsonl", [event(first), "{cut", event(first + 1), event(first + 2)])
    write(data, f"f{first}/b.jsonl", [event(first + 3), event(first + 4), "nope"])
    return 5


def start(data: Path, kind: str, mode: str, marker: Path, other: Path | None = None) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "bronze_assets_tests.landing_runner", str(data), kind, mode, str(marker)]
    return subprocess.Popen([*args, *([str(other)] if other else [])], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(marker: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            out = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"the run ended before {marker.name}: {out[-3000:]}")
        assert time.monotonic() < deadline, f"no {marker.name} in {timeout} s"
        time.sleep(0.05)


def run(data: Path, kind: str) -> None:
    process = start(data, kind, "none", data / "unused")
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out.decode()[-3000:]


def assert_exactly_once(data: Path, events: int, file_count: int, bad_lines: int) -> None:
    storage = storage_at(data)
    table = DeltaTable(storage.uri(EVENTS.bronze_table)).to_pyarrow_table()
    ids = Counter(table.column("event_id").to_pylist())
    assert len(ids) == events and set(ids.values()) == {1}, ids
    paths = Counter(r["path"] for r in DeltaTable(storage.uri(LEDGER_TABLE)).to_pyarrow_table().to_pylist())
    assert len(paths) == file_count and set(paths.values()) == {1}, paths
    quarantine = DeltaTable(storage.uri(QUARANTINE_TABLE)).to_pyarrow_table()
    records = Counter(r["record"] for r in quarantine.to_pylist())
    assert len(records) == bad_lines and set(records.values()) == {1}, records


@pytest.mark.parametrize("kind", ["keyed", "keyless"])
@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_a_run_killed_before_or_after_its_commit_then_run_again_lands_everything_once(
        tmp_path: Path, kind: str, point: str) -> None:
    files(tmp_path, 1)
    run(tmp_path, kind)  # the table exists: the killed run MERGEs (keyed) or appends (keyless)
    files(tmp_path, 10)
    marker = tmp_path / "marker"
    process = start(tmp_path, kind, point, marker)
    wait_for(marker, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    storage = storage_at(tmp_path)
    landed = DeltaTable(storage.uri(EVENTS.bronze_table)).to_pyarrow_table().num_rows
    assert landed == (5 if point == "before_commit" else 10)  # the kill came where it should
    run(tmp_path, kind)
    assert_exactly_once(tmp_path, events=10, file_count=4, bad_lines=4)


@pytest.mark.parametrize("kind", ["keyed", "keyless"])
@pytest.mark.parametrize("table_exists", [False, True])
def test_two_runs_at_once_land_everything_once(tmp_path: Path, kind: str, table_exists: bool) -> None:
    """Both runs list the same files and stage them; they commit at the same moment: one lands
    the files, the other drops them before its commit (its MERGE conflicts or sees the ledger)."""
    if table_exists:
        files(tmp_path, 1)
        run(tmp_path, kind)
    files(tmp_path, 10)
    one, two = tmp_path / "one", tmp_path / "two"
    first, second = start(tmp_path, kind, "barrier", one, two), start(tmp_path, kind, "barrier", two, one)
    outputs = []
    for process in (first, second):
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0, out.decode()[-3000:]
        outputs.append(out.decode())
    (tmp_path / "outputs.txt").write_text("\n=====\n".join(outputs))
    runs = 2 if table_exists else 1
    assert_exactly_once(tmp_path, events=5 * runs, file_count=2 * runs, bad_lines=2 * runs)
