"""``bronze demo``: every partition of every asset materialized in one ranged run per partitions
definition, recorded on a real (SQLite) instance, with one progress line per table and Dagster's
event stream in a log file instead of the terminal."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS, LANDING_CONTRACTS, get_contract
from bronze_assets.defs import threaded_executor
from bronze_assets.defs.partitions import partitions_def
from bronze_assets.defs.resources import BronzeStorage
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.demo.run import (
    DAGSTER_SETTINGS,
    LOG_FILE,
    SourceShape,
    TableProgress,
    _step_pool,
    format_summary,
    materialize_all,
    run_at_once,
    run_demo,
    step_cost,
    table_summary,
)
from bronze_assets.lib.source.dsn import dsn_parts
from bronze_assets.lib.stop import stop_point
from bronze_assets.settings import ENV_SOURCE_DSN, data_dir
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

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
    seed_db: SeedDb, tmp_path: Path, short_partitions: None, capfd: pytest.CaptureFixture[str]
) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
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

    summaries = run_demo(scale=0.01, on_progress=messages.append, seed_external=True)  # not the embedded one

    landing = [c.bronze_table for c in LANDING_CONTRACTS.values()]  # the seeded event files
    assert [s.table for s in summaries] == [c.bronze_table for c in CONTRACTS.values()] + landing
    assert all(s.bronze_rows > 0 and s.rows_read > 0 for s in summaries)
    table_lines = [m for m in messages if m.startswith("  bz_")]
    assert sorted(m.split()[0] for m in table_lines) == sorted(s.table for s in summaries)
    assert messages[0].startswith("seeding") and any(m.startswith("monitoring report:") for m in messages)
    # seeding, seeded, landing files written, loading, materialized, report
    assert len(messages) == len(table_lines) + 6
    _, err = capfd.readouterr()
    assert "PreviewWarning" not in err and "DEBUG" not in err and "ASSET_MATERIALIZATION" not in err
    log = (data_dir() / LOG_FILE).read_text()
    assert "ASSET_MATERIALIZATION" in log and "RUN_SUCCESS" in log
    with dg.DagsterInstance.get() as instance:  # the runs landed in $DAGSTER_HOME
        assert len(instance.get_runs()) == 5  # dimensions, daily, monthly, reconciliation, report
    # the reconciliation checks (a landing table has no source table to reconcile with)
    assert [s.reconciled for s in summaries] == ["equal"] * len(CONTRACTS) + [None] * len(landing)
    # the history tables (one current version per key after a first load) and the check's outcome
    histories = {s.table: s.history for s in summaries if s.history is not None}
    assert set(histories) == {c.bronze_table for c in CONTRACTS.values() if c.history}
    assert all(h.rows == h.current == s.active_rows and h.versions >= 1
               for s in summaries if (h := s.history) is not None)
    # the figures the summary took from the report's status table are those the tables' logs hold
    storage = BronzeStorage().storage()
    contracts = {c.bronze_table: c for c in [*CONTRACTS.values(), *LANDING_CONTRACTS.values()]}
    assert [(s.bronze_rows, s.active_rows, s.versions, s.history) for s in summaries] == \
        [table_summary(storage, contracts[s.table]) for s in summaries]
    text = format_summary(summaries)
    assert all(f"  {h.table} " in text for h in histories.values())
    assert f"reconciliation check: {len(CONTRACTS)} of {len(CONTRACTS)} tables equal their source" in text


def test_demo_loads_every_table_it_can_and_marks_the_failures(
    seed_db: SeedDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_partitions: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    query(fresh_dsn, "DROP TABLE tests.returns")  # one table the source no longer has
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    monkeypatch.setenv(ENV_SOURCE_DSN, fresh_dsn)

    result = CliRunner().invoke(main, ["demo"])

    assert result.exit_code == 1
    _, err = capfd.readouterr()
    assert "Traceback" not in result.output + err and "Stack Trace" not in result.output + err
    assert "FAILED" in next(line for line in err.splitlines() if line.startswith("  bz_returns"))
    summary = [line.split() for line in result.output.splitlines() if line.startswith("bz_")]
    rows = {cells[0]: cells[7] for cells in summary}  # the status column
    tables = [*CONTRACTS.values(), *LANDING_CONTRACTS.values()]  # a landing table with no files: ok
    assert rows == {c.bronze_table: "FAILED" if c.name == "returns" else "ok" for c in tables}
    (reason,) = [line for line in result.output.splitlines() if line.startswith("  bz_returns:")]
    assert "no table tests.returns" in reason and "bronze ddl" in reason
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    assert all(bronze.read(c.name).height > 0 for c in CONTRACTS.values() if c.name != "returns")
    assert "STEP_UP_FOR_RETRY" not in (data_dir() / LOG_FILE).read_text()  # a missing table is not retried


def test_demo_seeds_only_the_embedded_server_unless_told(
    fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_SOURCE_DSN, fresh_dsn)  # an empty database that is not the embedded one
    result = CliRunner().invoke(main, ["demo", "--scale", "0"])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert f"db={dsn_parts(fresh_dsn)['db']} user=postgres" in line and "--seed-external" in line
    assert query(fresh_dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'tests'") == [(0,)]


def test_one_ctrl_c_stops_the_demo(seed_db: SeedDb, tmp_path: Path) -> None:
    """SIGINT to the demo's process group, as a terminal sends it, in the middle of the load."""
    fresh_dsn = seed_db(SeedOptions(scale=0.05, as_of=AS_OF))
    env = {**os.environ, ENV_SOURCE_DSN: fresh_dsn, "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "BRONZE_START_DATE": "2026-10-28", "BRONZE_PARTITIONS_START": "2026-09-01"}
    (tmp_path / "dagster_home").mkdir()
    demo = subprocess.Popen(
        [str(Path(sys.executable).parent / "bronze"), "demo"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,  # its own process group, like a shell job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # (pytest workers may ignore it)
    lines: list[str] = []
    stopped = None
    assert demo.stderr is not None
    for line in demo.stderr:
        lines.append(line)
        if line.startswith("  bz_"):  # the first table is in: the others are loading
            os.killpg(demo.pid, signal.SIGINT)
            stopped = time.perf_counter()
            break
    assert stopped is not None, "".join(lines)
    rest, out = demo.stderr.read(), demo.communicate(timeout=120)[0]
    seconds = time.perf_counter() - stopped
    lines += rest.splitlines(keepends=True)

    assert demo.returncode == 130 and seconds < 30
    assert lines[-1].startswith("bronze demo: interrupted") and "Traceback" not in "".join(lines) + out
    assert sum(line.startswith("  bz_") for line in lines) < len(CONTRACTS), "it stopped"
    assert out == ""  # no summary
    log = (tmp_path / "data" / LOG_FILE).read_text()
    assert "STEP_UP_FOR_RETRY" not in log and "RUN_SUCCESS" not in log
    time.sleep(1)
    with pytest.raises(ProcessLookupError):  # nothing of the demo is left (GX worker, log tails)
        os.killpg(demo.pid, 0)


def test_a_ctrl_c_during_the_runs_returns_once_every_run_has_ended() -> None:
    """Ctrl-C (a real SIGINT) while one of the demo's runs still executes on its thread (the two
    others have ended): the runs are told to stop, and :func:`run_at_once` returns only once that
    one has ended too (it takes 0.5 s to stop), no run left executing behind the demo. Before, a
    KeyboardInterrupt raised in the main thread while it joined the run's thread marked that
    thread as ended while it ran (python/cpython#90882), and the demo exited beside it."""
    pool = threaded_executor.StepPool(2)
    ended: list[int] = []
    all_in = threading.Barrier(4)

    def run(i: int) -> None:
        all_in.wait(20)
        deadline = time.monotonic() + 20
        while i == 0 and not pool.interrupted and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5 if i == 0 else 0)  # stopping takes a while
        ended.append(i)

    def ctrl_c() -> None:
        all_in.wait(20)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # (pytest workers may ignore it)
    sender = threading.Thread(target=ctrl_c)
    try:
        sender.start()
        assert run_at_once([partial(run, i) for i in range(3)], pool) is True
    finally:
        sender.join()
        signal.signal(signal.SIGINT, previous)
    assert sorted(ended) == [0, 1, 2] and pool.interrupted
    assert not [t for t in threading.enumerate() if t.name.startswith("demo run")]
    stop_point()  # the stop is lifted for the next runs


def _pool_schedule(pool: threaded_executor.StepPool, steps: list[str]) -> tuple[list[str], list[set[str]]]:
    """The steps started in order, and each set of steps running at once, when every step starts
    as soon as the pool lets it, writes its output at once (a thread beside it) and the oldest
    running step ends first."""
    pool.arrive(steps, queue.Queue())
    pool.wait(steps)
    pending, running, started, together = list(steps), [], [], []
    while pending or running:
        for step in sorted(pending, key=pool.rank):
            if pool.ready(step) and pool.start(step):
                pending.remove(step)
                running.append(step)
                started.append(step)
                pool.output_out(step)
        together.append(set(running))
        pool.end(running.pop(0))
    return started, together


# source tables' (bytes, rows) as the catalog gives them after seeding at scale 10 and 30
SHAPES = {
    10: {"customers": (22_609_920, 250_000), "products": (9_699_328, 100_000),
         "suppliers": (1_138_688, 10_000), "warehouses": (40_960, 500), "orders": (39_976_960, 500_000),
         "shipments": (36_143_104, 450_000), "order_details": (140_640_256, 2_000_000),
         "inventory": (62_324_736, 1_000_000), "stock_levels": (31_260_672, 500_000),
         "returns": (3_825_664, 50_000)},
    30: {"customers": (68_550_656, 750_000), "products": (28_966_912, 300_000),
         "suppliers": (3_538_944, 30_000), "warehouses": (106_496, 1_500), "orders": (119_013_376, 1_500_000),
         "shipments": (107_970_560, 1_350_000), "order_details": (421_396_480, 5_999_958),
         "inventory": (186_843_136, 3_000_000), "stock_levels": (93_454_336, 1_500_000),
         "returns": (12_255_232, 150_000)},
}
LARGE = {"bz_orders", "bz_shipments", "bz_order_details", "bz_inventory", "bz_stock_levels"}


@pytest.mark.parametrize("scale", [10, 30])
def test_the_demo_runs_pool_starts_the_heaviest_table_first_then_two_large_tables_at_once(scale: int) -> None:
    """The steps' weights follow their memory: a commit chunk of rows, an encrypted table's wider
    (its history seed hands delta-rs 4,096-row pieces: flat, not counted). A step too heavy to run
    beside another as heavy starts first (bz_customers at scale 30, whose 750k rows fill a chunk),
    then the longest steps first: at scale 10 (bz_customers' 250k rows are half a chunk) the most
    rows, bz_order_details, beside bz_customers, whose rows cost five plain ones (keyed,
    encrypted, written twice) and which left last ran alone at the end. Never three large tables
    at once, and bz_customers beside no large table at scale 30 (one at scale 10)."""
    runs = [{c.bronze_table: f"load_{c.bronze_table}" for c in group}
            for group in (list(CONTRACTS.values()), list(LANDING_CONTRACTS.values()))]
    shapes = {f"bz_{name}": SourceShape(*shape) for name, shape in SHAPES[scale].items()}
    pool = _step_pool(runs, False, shapes)
    started, together = _pool_schedule(pool, [step for run in runs for step in run.values()])
    tables = [[step.removeprefix("load_") for step in s] for s in together]
    if scale == 30:
        assert started[0] == "load_bz_customers"
    else:
        assert started[:2] == ["load_bz_order_details", "load_bz_customers"]
    assert [s for s in started if s.removeprefix("load_") in LARGE][:2] == \
        ["load_bz_order_details", "load_bz_inventory"]  # then the most rows first
    assert max(len(set(t) & LARGE) for t in tables) == 2  # two at once, never three
    assert max(len(set(t) & LARGE) for t in tables if "bz_customers" in t) == (0 if scale == 30 else 1)
    assert sorted(started) == sorted(step for run in runs for step in run.values())


def test_a_long_step_is_not_left_for_the_end() -> None:
    """An encrypted table with history costs more per row than a plain one, and a history table
    more than a plain one: the order goes by that cost, not by rows alone."""
    customers, products, orders = (get_contract(f"bz_{n}") for n in ("customers", "products", "orders"))
    shape = SourceShape(10_000_000, 100_000)
    assert step_cost(customers, shape) > step_cost(products, shape) > step_cost(orders, shape) == 100_000
    assert step_cost(orders, None) == 0


def test_materialize_all_without_a_bronze_table_runs_nothing() -> None:
    """Definitions holding no bronze table: no run, nothing materialized (the runs' pool of no step)."""
    with dg.DagsterInstance.ephemeral() as instance:
        assert materialize_all(dg.Definitions(), "postgresql://nobody@/none?host=/nonexistent", instance,
                               with_checks=False) == {}
