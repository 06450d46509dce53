"""A reconciliation run (ARCHITECTURE §2.8): every table compared with its source in one source
snapshot, the mismatches recorded in ``bz_reconciliation`` and one audit row per table."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import polars as pl
from deltalake import DeltaTable

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.control import audited
from bronze_assets.lib.delta.query import table_rows
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.load.plan import DEFAULT_OVERLAP
from bronze_assets.lib.reconcile import keyless
from bronze_assets.lib.reconcile.bisect import BronzeSide, classify, differing_ranges
from bronze_assets.lib.reconcile.bronze_side import BronzeTable, pending_since
from bronze_assets.lib.reconcile.deep import altered_rows
from bronze_assets.lib.reconcile.keys import unsupported_key
from bronze_assets.lib.reconcile.ledger import record_mismatches
from bronze_assets.lib.reconcile.memo import Memo, state_token
from bronze_assets.lib.reconcile.model import (
    NOT_LOADED,
    SOURCE_CHANGED,
    SOURCE_MISSING,
    UNSUPPORTED,
    Reconciliation,
    TableReconciliation,
)
from bronze_assets.lib.reconcile.source_side import SourceSnapshot, SourceTable

RECONCILE = "RECONCILE"
BronzeSideFactory = Callable[[Contract, DeltaTable], BronzeSide]
BronzeSideChooser = Callable[[Contract], BronzeSideFactory]  # per table: which bronze reader


def reconcile_table(contract: Contract, snapshot: SourceSnapshot, storage: StorageLike, *, deep: bool = False,
                    overlap: timedelta = DEFAULT_OVERLAP, bronze_side: BronzeSideFactory = BronzeTable,
                    ) -> TableReconciliation:
    """Compare ``bz_<table>`` with its source table in ``snapshot``."""
    started = time.perf_counter()
    storage = as_storage(storage)
    report = TableReconciliation(contract.bronze_table, contract.source_ref)
    try:
        _compare(report, contract, snapshot, storage, deep, overlap, bronze_side)
    finally:
        report.seconds = time.perf_counter() - started
    return report


def _compare(report: TableReconciliation, contract: Contract, snapshot: SourceSnapshot, storage: StorageLike,
             deep: bool, overlap: timedelta, bronze_side: BronzeSideFactory) -> None:
    unsupported = unsupported_key(contract)
    if unsupported:
        report.state, report.problem = UNSUPPORTED, unsupported
        return
    storage = as_storage(storage)
    dt = storage.open_shared(contract.bronze_table)
    if dt is None:
        from bronze_assets.lib.monitoring.status import commands

        report.state = NOT_LOADED
        report.problem = f"{contract.bronze_table} has never been loaded (no Delta table at " \
                         f"{storage.uri(contract.bronze_table)})"
        report.action = commands(contract, datetime.now(UTC), storage.settings)[0]
        return
    source = snapshot.table(contract)
    drift = source.drift()
    if drift is None:
        report.state = SOURCE_MISSING
        report.problem = (f"the source has no table {contract.source_ref} (dropped or renamed?); "
                          f"{contract.bronze_table} keeps what it loaded")
        report.action = (f"re-create {contract.source_ref} in the source, or take the table out of its "
                         f"tables file (bronze init --refresh)")
        return
    if drift.breaking:
        report.state, report.problem = SOURCE_CHANGED, drift.describe()
        report.action = "bronze init --refresh records the source's columns in the table's tables file"
        return
    report.pending_since = pending_since(dt, overlap.total_seconds())
    if contract.keyless:
        theirs, ours = keyless.source_rows(source), keyless.bronze_rows(dt)
        report.source_rows, report.bronze_active_rows = theirs.height, keyless.active_rows(ours)
        report.mismatches = classify(theirs, ours, report.pending_since, report)
    else:
        memo = None
        if (source.by_key and bronze_side is BronzeTable  # the Spark reader keeps full passes
                and snapshot.hashes_tids and snapshot.server is not None):
            memo = Memo(storage, contract, state_token(contract, source.catalog_token()))
        _compare_by_key(report, source, bronze_side(contract, dt), memo)
    if deep:
        altered, report.deep_rows, report.deep_note = altered_rows(contract, dt, storage)
        report.mismatches += altered


def _compare_by_key(report: TableReconciliation, source: SourceTable, bronze: BronzeSide,
                    memo: Memo | None = None) -> None:
    """Bisect the key (or hash position) range by bucket counts and checksums, then compare the
    differing leaves key by key (with bronze's rows of those keys found elsewhere)."""
    s_lo, s_hi, s_rows = source.key_range()
    b_lo, b_hi, b_rows = bronze.key_range()
    bounds = [v for v in (s_lo, s_hi, b_lo, b_hi) if v is not None]
    if bounds:
        lo, hi = min(bounds), max(bounds)
        leaves = differing_ranges(source, bronze, lo, hi, max(s_rows, b_rows) or hi - lo + 1, report, memo)
        if leaves:
            theirs, ours = source.rows(leaves), bronze.rows(leaves)
            unmatched = theirs.get_column("key").filter(~theirs.get_column("key").is_in(ours.get_column("key")
                                                                                          .implode()))
            if unmatched.len():
                ours = pl.concat([ours, bronze.others(unmatched)])
            report.mismatches = classify(theirs, ours, report.pending_since, report)


def reconcile(contracts: Sequence[Contract], dsn: str, storage: StorageLike, *, deep: bool = False,
              run_id: str | None = None, job_id: str | None = None, overlap: timedelta = DEFAULT_OVERLAP,
              bronze_side: BronzeSideChooser | None = None, parallelism: int = 2) -> Reconciliation:
    """Reconcile ``contracts`` in one source snapshot; record the mismatches and audit each table.
    ``bronze_side`` picks the bronze reader per contract (default: DataFusion). Up to
    ``parallelism`` tables are compared at once, largest first, over as many source connections
    sharing the run's exported snapshot; a pass over a whole table is split into block ranges that
    any free connection takes, so the source hashes on every backend to the end of the run."""
    storage = as_storage(storage)
    run = Reconciliation(run_id or str(uuid.uuid4()), datetime.now(UTC), deep=deep)

    def one(contract: Contract, snapshot: SourceSnapshot) -> TableReconciliation:
        with audited(storage, contract.bronze_table, RECONCILE, job_id) as entry:
            side = bronze_side(contract) if bronze_side is not None else BronzeTable
            report = reconcile_table(contract, snapshot, storage, deep=deep, overlap=overlap,
                                     bronze_side=side)
            record_mismatches(storage, run.run_id, report, run.started)
            entry.records_affected = len(report.faults)
            entry.details = json.dumps({"run_id": run.run_id, "state": report.state, "deep": deep,
                                        "counts": report.counts, "problem": report.problem})
        return report

    workers = max(1, parallelism)
    with SourceSnapshot(dsn, workers) as snapshot:
        if workers == 1 or len(contracts) == 1:
            run.tables = [one(c, snapshot) for c in contracts]
            return run
        largest_first = sorted(contracts, key=lambda c: -_bronze_rows(storage, c))
        with ThreadPoolExecutor(workers, thread_name_prefix="reconcile") as pool:
            reports = dict(zip([c.bronze_table for c in largest_first],
                               pool.map(lambda c: one(c, snapshot), largest_first), strict=True))
        run.tables = [reports[c.bronze_table] for c in contracts]
    return run


def _bronze_rows(storage: StorageLike, contract: Contract) -> int:
    dt = as_storage(storage).open_shared(contract.bronze_table)
    return 0 if dt is None else table_rows(dt)


__all__ = ["RECONCILE", "BronzeSideChooser", "SourceTable", "reconcile", "reconcile_table"]
