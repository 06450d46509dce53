"""Helpers for ingestion tests: run bronze assets against a test source and read Delta back."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake

from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.assets import build_bronze_asset
from bronze_assets.defs.resources import BronzeStorage, PostgresSource, build_resources
from bronze_assets.lib.delta.commit_log import BATCH_KEY
from bronze_assets.lib.delta.merge_result import MergeResult
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.delta.query import read_snapshot
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.settings import Settings
from bronze_assets_tests.conftest import query
from bronze_assets_tests.test_contracts import SPEC_COLUMNS


def bronze_frame(uri: str | Path, version: int | None = None) -> pl.DataFrame:
    """A Delta table's rows (at ``version``) as bronze reads them: through DataFusion, deletion
    vectors applied (``to_pyarrow_table()`` refuses a table that may have them: the Spark engine's)."""
    frame = pl.from_arrow(read_snapshot(DeltaTable(str(uri), version=version)))
    assert isinstance(frame, pl.DataFrame)
    return frame


def env_storage(root: Path | str) -> Storage:
    """``root`` with the settings of the environment now, as the ``bronze`` resource reads them (a
    bare path would get the default settings: its PII master key under ./data, not the test's)."""
    return Storage(str(root), settings=Settings.from_env())


class Bronze:
    """A bronze root wired to one source DSN."""

    def __init__(self, dsn: str, root: Path) -> None:
        self.dsn, self.root = dsn, root
        self.resources = build_resources(PostgresSource(dsn=dsn), BronzeStorage(root=str(root)))
        self.assets = {c.bronze_table: build_bronze_asset(c) for c in CONTRACTS.values()}

    def storage(self) -> Storage:
        """The root with the settings of the environment now (as the ``bronze`` resource reads them)."""
        return env_storage(self.root)

    def definitions(self) -> dg.Definitions:
        return dg.Definitions(assets=list(self.assets.values()), resources=self.resources)

    def materialize(self, table: str, partition: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Materialize ``bz_<table>`` (one partition or unpartitioned); returns its metadata."""
        name = f"bz_{table}"
        result = dg.materialize([self.assets[name]], resources=self.resources, partition_key=partition,
                                **kwargs)
        assert result.success
        (event,) = [e for e in result.get_asset_materialization_events()
                    if e.asset_key.to_user_string() == name]
        return {k: v.value for k, v in event.materialization.metadata.items()}

    def uri(self, table: str) -> str:
        return str(self.root / f"bz_{table}")

    def table(self, table: str) -> DeltaTable:
        return DeltaTable(self.uri(table))

    def read(self, table: str) -> pl.DataFrame:
        frame = pl.from_arrow(self.table(table).to_pyarrow_dataset().to_table())
        assert isinstance(frame, pl.DataFrame)
        return frame

    def load_direct(
        self, table: str, partition: tuple[datetime, datetime] | None = None, **kwargs: Any
    ) -> MergeResult:
        """One load through the library (no Dagster run), e.g. for all-table checks."""
        contract = CONTRACTS[table]
        storage = self.storage()
        staged = extract_and_stage(contract, self.dsn, storage, partition=partition, **kwargs)
        try:
            return BronzeMerger(contract, storage).merge(staged)
        finally:
            staged.cleanup()

    def version(self, table: str) -> int:
        return self.table(table).version()


def spec_hash_sql(table: str, where: str = "", version: int = 2) -> str:
    """§2.2 record_hash (v2: length-prefixed) written straight from the spec's column list
    (independent of the code). Run it in a session pinned as §2.2 says (``query`` does)."""
    cols = [p.split()[0] for p in SPEC_COLUMNS[table].split(", ")]
    if version == 1:
        rendered = ", ".join(f"coalesce({c}::text, '\\N')" for c in cols)
    else:
        rendered = ", ".join(f"coalesce(length({c}::text) || ':' || {c}::text, '\\N')" for c in cols)
    sql = f"SELECT {cols[0]}, md5(concat_ws(E'\\x1f', {rendered})) FROM tests.{table}"
    return f"{sql} WHERE {where}" if where else sql


def source_hashes(dsn: str, table: str, where: str = "", version: int = 2) -> dict[int, str]:
    """{primary key: §2.2 hash} of the source rows (the session is pinned, see test_source)."""
    return dict(query(dsn, spec_hash_sql(table, where, version)))


def active_hashes(frame: pl.DataFrame, pk: str) -> dict[int, str]:
    active = frame.filter(pl.col("record_status") == "ACTIVE")
    return dict(zip(active[pk].to_list(), active["record_hash"].to_list(), strict=True))


def orders_frame(root: Path) -> pl.DataFrame:
    return bronze_frame(root / "bz_orders")


def assert_table_exact(dsn: str, root: Path, table: str) -> None:
    """bz_<table> equals the source: every source key ACTIVE with the spec hash, every other DELETED."""
    pk = CONTRACTS[table].primary_key[0]
    frame = bronze_frame(root / f"bz_{table}")
    source = source_hashes(dsn, table)
    assert active_hashes(frame, pk) == source
    gone = frame.filter(pl.col("record_status") != "ACTIVE")
    assert set(gone["record_status"]) <= {"DELETED"}
    assert not set(gone[pk]) & set(source)
    assert frame[pk].n_unique() == frame.height  # never a duplicate


def assert_orders_exact(dsn: str, root: Path) -> None:
    """bz_orders equals the source (see :func:`assert_table_exact`)."""
    assert_table_exact(dsn, root, "orders")


def rewrite_as_v1(b: Bronze, table: str, pk: str) -> pl.DataFrame:
    """Rewrite ``table`` of ``b`` as a table an earlier version wrote: its rows with the v1
    record_hash of their source rows, in a commit without ``bronze.hash_version``; returns the
    rows as they were (v2)."""
    v2 = b.read(table)
    v1 = source_hashes(b.dsn, table, version=1)
    legacy = v2.with_columns(pl.col(pk).replace_strict(v1, return_dtype=pl.String).alias("record_hash"))
    write_deltalake(b.uri(table), legacy.to_arrow(), mode="overwrite",
                    commit_properties=CommitProperties(custom_metadata={BATCH_KEY: "written-by-v1"}))
    return v2


def at_once(*runs: Callable[[], object]) -> None:
    """Each of ``runs`` in a thread of its own, released together; an error in any fails the test."""
    barrier = threading.Barrier(len(runs))
    errors: list[BaseException] = []

    def released(run: Callable[[], object]) -> None:
        barrier.wait(timeout=30)
        try:
            run()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=released, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def interrupt_while_locked(dsn: str, resources: dict[str, Any], deadline: float = 60,
                           grace: float = 20) -> tuple[bool, dg.ExecuteInProcessResult]:
    """Run bz_warehouses' asset on the load jobs' threaded executor while another session holds an
    ACCESS EXCLUSIVE lock on its source table, and send this process a SIGINT (a Ctrl-C) once a
    statement waits for that lock (within ``deadline`` s). The lock is released ``grace`` s after
    the interrupt at the latest. Returns whether the run ended before the lock was released, and
    the run's result."""
    import psycopg2  # here: test_quality imports these helpers where the validation service blocks it

    from bronze_assets.defs import threaded_executor as te

    holder = psycopg2.connect(dsn)
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE tests.warehouses IN ACCESS EXCLUSIVE MODE")  # until the transaction ends
    released, done = threading.Event(), threading.Event()

    def interrupt_then_release() -> None:
        try:
            until = time.monotonic() + deadline
            while time.monotonic() < until and not done.is_set():
                if query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")[0][0]:
                    os.kill(os.getpid(), signal.SIGINT)
                    done.wait(grace)  # the run should end meanwhile, the lock still held
                    return
                time.sleep(0.1)
        finally:
            released.set()
            holder.close()

    definitions = dg.Definitions(assets=[build_bronze_asset(CONTRACTS["warehouses"])], resources=resources,
                                 jobs=[dg.define_asset_job("j", selection=dg.AssetSelection.all())])
    watcher = threading.Thread(target=interrupt_then_release)
    watcher.start()
    try:
        with pytest.raises((KeyboardInterrupt, dg.DagsterExecutionInterruptedError)):
            result = te.execute_in_process(definitions.resolve_job_def("j"), te.threaded_executor(2),
                                           instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
            assert not result.success
            raise KeyboardInterrupt
        ended_before_release = not released.is_set()
    finally:
        done.set()
        watcher.join()
    return ended_before_release, result
