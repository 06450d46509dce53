"""Delta time travel for bronze tables: history, a dry-run diff, and an audited restore."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl
from deltalake import CommitProperties, DeltaTable

from bronze_assets.contracts import Contract, get_contract
from bronze_assets.lib.delta.commit_log import BATCH_KEY, CHUNK_KEY, commit_history
from bronze_assets.lib.delta.control import OPERATION_KEY, audited
from bronze_assets.lib.delta.history import SEEDED_BY_KEY, HistoryWriter
from bronze_assets.lib.delta.protection import PiiHook, require_hook
from bronze_assets.lib.delta.query import read_columns
from bronze_assets.lib.delta.storage import Storage, StorageLike, as_storage
from bronze_assets.lib.delta.writers import refuse_deletion_vectors
from bronze_assets.lib.enrich.metadata import FORGOTTEN


class TimeTravelError(ValueError):
    """A history/restore request that cannot be served (message says why and what to do)."""


def contract_for(table: str) -> Contract:
    try:
        return get_contract(table)
    except KeyError as exc:
        raise TimeTravelError(exc.args[0]) from None


def _open(storage: Storage, table: str) -> DeltaTable:
    dt = storage.open(table)
    if dt is None:
        uri = storage.uri(table)
        raise TimeTravelError(f"{table} has not been loaded yet (no Delta table at {uri}): run `dagster "
                              f"asset materialize -m bronze_assets.definitions --select {table}` or `bronze "
                              f"demo`, or point BRONZE_ROOT at the bronze root that holds it")
    return dt


def _metric(metrics: dict[str, Any], *names: str) -> Any:
    """The first of ``names`` the commit's metrics have (delta-rs and delta-spark spell them apart)."""
    return next((metrics[n] for n in names if n in metrics), None)


def history(storage: StorageLike, table: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Commits of ``table`` newest first: version, timestamp, operation, batch id and row metrics."""
    rows = []
    for h in commit_history(_open(as_storage(storage), table), limit):
        metrics = h.get("operationMetrics") or {}
        rows.append({
            "version": h.get("version"),
            "timestamp": datetime.fromtimestamp(h["timestamp"] / 1000, UTC).isoformat(timespec="seconds"),
            "operation": h.get(OPERATION_KEY) or h.get("operation"),
            "batch_id": h.get(BATCH_KEY),
            "rows_inserted": _metric(metrics, "num_target_rows_inserted", "numTargetRowsInserted",
                                     "num_added_rows", "numOutputRows"),
            "rows_updated": _metric(metrics, "num_target_rows_updated", "numTargetRowsUpdated",
                                    "num_updated_rows"),
            "rows_deleted": _metric(metrics, "num_target_rows_deleted", "numTargetRowsDeleted",
                                    "num_deleted_rows"),
        })
    return rows


@dataclass
class RestorePlan:
    """What a restore to ``target_version`` changes, per primary key."""

    table: str
    current_version: int
    target_version: int
    keys_removed: int  # in the current version, not in the target
    keys_restored: int  # in the target, not in the current version
    rows_changed: int  # both, with a different hash or status
    rows_unchanged: int
    history_table: str | None = None  # the contract's history table, when it has one
    history_version: int | None = None  # the history version holding the target's loads (None: none does)

    def describe(self) -> str:
        text = (f"{self.table}: restore version {self.current_version} -> {self.target_version}: "
                f"{self.keys_removed:,} keys removed, {self.keys_restored:,} keys restored, "
                f"{self.rows_changed:,} rows changed, {self.rows_unchanged:,} unchanged")
        if self.history_table is not None:
            text += (f"; {self.history_table} -> version {self.history_version}"
                     if self.history_version is not None
                     else f"; {self.history_table} re-seeded from the restored rows (it holds no version "
                          f"as old as the target)")
        return text


def _effective(entries: list[dict[str, Any]], start: int) -> Iterator[dict[str, Any]]:
    """The commits whose changes a table holds at version ``start``, newest first: a RESTORE
    stands for the version it restored (its later commits are undone)."""
    by_version = {int(e["version"]): e for e in entries if e.get("version") is not None}
    version = start
    while version >= 0:
        entry = by_version.get(version)
        version -= 1
        if entry is None:
            continue
        if str(entry.get("operation", "")).upper() == "RESTORE":
            restored = (entry.get("operationParameters") or {}).get("version")
            if restored is not None:
                version = int(restored)
                continue
        yield entry


def matching_history_version(bronze: DeltaTable, history_dt: DeltaTable, target: int) -> int | None:
    """The version of the history table that holds exactly the loads ``bronze`` holds at version
    ``target``: the newest of its effective commits whose batch chunk (or, for its seed, batch)
    the target holds. None when the history holds none (it began after the target)."""
    chunks, batches = set(), set()
    for entry in _effective(commit_history(bronze), target):
        if entry.get(BATCH_KEY) is not None:
            chunks.add((entry[BATCH_KEY], entry.get(CHUNK_KEY)))
            batches.add(entry[BATCH_KEY])
    for entry in _effective(commit_history(history_dt), history_dt.version()):
        if (entry.get(BATCH_KEY), entry.get(CHUNK_KEY)) in chunks or entry.get(SEEDED_BY_KEY) in batches:
            return int(entry["version"])
    return None


def _version_for(dt: DeltaTable, version: int | None, timestamp: datetime | None) -> int:
    if (version is None) == (timestamp is None):
        raise TimeTravelError("give exactly one of --version or --timestamp")
    if version is not None:
        if not 0 <= version <= dt.version():
            raise TimeTravelError(f"version {version} does not exist (0..{dt.version()})")
        return version
    assert timestamp is not None
    moment = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)
    chosen = None
    for h in dt.history():
        if datetime.fromtimestamp(h["timestamp"] / 1000, UTC) <= moment:
            chosen = max(chosen or -1, int(h["version"]))
    if chosen is None:
        oldest = min(datetime.fromtimestamp(h["timestamp"] / 1000, UTC) for h in dt.history())
        raise TimeTravelError(f"no version of the table is as old as {moment.isoformat()}: the oldest "
                              f"version still in the log is from {oldest.isoformat()} (valid: --timestamp "
                              f"{oldest.isoformat()} or later, or --version 0..{dt.version()})")
    return chosen


def plan_restore(storage: StorageLike, contract: Contract, version: int | None = None,
                 timestamp: datetime | None = None) -> RestorePlan:
    """Compare the current version with the target one by key, hash and status (a dry run)."""
    storage = as_storage(storage)
    dt = _open(storage, contract.bronze_table)
    target = _version_for(dt, version, timestamp)
    cols = [*contract.merge_key, "record_hash", "record_status"]

    def frame(v: int) -> pl.DataFrame:
        uri = storage.uri(contract.bronze_table)
        table = DeltaTable(uri, version=v, storage_options=storage.delta_options)
        out = pl.from_arrow(read_columns(table, cols))
        assert isinstance(out, pl.DataFrame)
        return out

    now, then = frame(dt.version()), frame(target)
    pk = list(contract.merge_key)
    both = now.join(then, on=pk, how="inner", suffix="_t")
    changed = both.filter((pl.col("record_hash") != pl.col("record_hash_t"))
                          | (pl.col("record_status") != pl.col("record_status_t"))).height
    history_dt = storage.open(contract.history_table) if contract.history else None
    return RestorePlan(
        table=contract.bronze_table, current_version=dt.version(), target_version=target,
        keys_removed=now.join(then, on=pk, how="anti").height,
        keys_restored=then.join(now, on=pk, how="anti").height,
        rows_changed=changed, rows_unchanged=both.height - changed,
        history_table=contract.history_table if history_dt is not None else None,
        history_version=matching_history_version(dt, history_dt, target) if history_dt is not None else None,
    )


def restore(storage: StorageLike, contract: Contract, version: int | None = None,
            timestamp: datetime | None = None, dry_run: bool = False,
            pii: PiiHook | None = None) -> RestorePlan:
    """Restore the table to a version (delta-rs RESTORE, a new commit); audited unless a dry run.

    A table with a data subject needs its PII hook (``governance.pii.pii_protection``): subjects
    erased since that version stay erased."""
    storage = as_storage(storage)
    plan = plan_restore(storage, contract, version, timestamp)
    if dry_run:
        return plan
    pii = require_hook(contract, pii, "restore")  # before anything is restored
    refuse_deletion_vectors(_open(storage, contract.bronze_table), contract.bronze_table, "restore")
    with audited(storage, contract.bronze_table, "RESTORE") as entry:
        history_dt = storage.open(contract.history_table) if plan.history_table is not None else None
        before = history_dt.version() if history_dt is not None else None
        if history_dt is not None and plan.history_version is not None and plan.history_version != before:
            history_dt.restore(plan.history_version)  # first: a history that cannot be restored stops it
        dt = _open(storage, contract.bronze_table)
        try:
            dt.restore(plan.target_version)
        except BaseException:
            if history_dt is not None and history_dt.version() != before:
                history_dt.restore(before)  # both tables as they were
            raise
        reapplied = _reapply_erasures(dt, contract, pii)
        if history_dt is not None and plan.history_version is None:  # it began after the target
            HistoryWriter(contract, storage).seed(f"restore-{uuid.uuid4()}", datetime.now(UTC), replace=True)
        elif history_dt is not None:
            _reapply_history_erasures(history_dt, contract, pii)
        entry.records_affected = plan.keys_removed + plan.keys_restored + plan.rows_changed
        entry.details = json.dumps(asdict(plan) | {"erasures_reapplied": reapplied})
    return plan


def _reapply_history_erasures(dt: DeltaTable, contract: Contract, pii: PiiHook | None) -> None:
    """A restored history never shows an erased person's personal columns (NULL in every version)."""
    ids = _erased_ids(contract, pii)
    if ids:
        dt.update(updates={c: "NULL" for c in contract.pii_columns},
                  predicate=f"{contract.data_subject} IN ({ids})",
                  commit_properties=CommitProperties(custom_metadata={OPERATION_KEY: "ERASURE"}))


def _erased_ids(contract: Contract, pii: PiiHook | None) -> str:
    """The erased subjects of ``contract`` as a SQL list ('' when none)."""
    if contract.data_subject is None or pii is None:
        return ""
    return ", ".join(str(int(s)) if s.isdigit() else "'" + s.replace("'", "''") + "'"
                     for s in pii.erased_subjects())


def _reapply_erasures(dt: DeltaTable, contract: Contract, pii: PiiHook | None) -> int:
    """A restore never revives an erased person: subjects with a shredded key stay FORGOTTEN."""
    ids = _erased_ids(contract, pii)
    if not ids:
        return 0
    dt.update_incremental()
    updates = {c: "NULL" for c in contract.pii_columns} | {"record_status": f"'{FORGOTTEN}'"}
    metrics = dt.update(updates=updates, predicate=f"{contract.data_subject} IN ({ids}) "
                                                   f"AND record_status <> '{FORGOTTEN}'",
                        commit_properties=CommitProperties(custom_metadata={OPERATION_KEY: "ERASURE"}))
    return int(metrics.get("num_updated_rows", 0))
