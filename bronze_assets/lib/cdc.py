"""Log-based CDC loads: the first load reads the table in the snapshot its new replication slot
exported; every later load reads the slot from the position bronze recorded with its last commit,
re-reads the changed keys' current rows in one snapshot and MERGEs them (a key the source no
longer has becomes DELETED). So a load costs the change, not the table, and a row committed late
by a long transaction arrives with its commit.

Exactly once: the position (``bronze.cdc_lsn``) is written with the last Delta commit of the
batch, and the slot is told only after that commit. A run killed anywhere re-reads from the
recorded position (re-reading a key twice changes nothing), so bronze ends exact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.control import audited
from bronze_assets.lib.delta.merge import (
    CDC_LSN_KEY,
    CDC_RELID_KEY,
    BronzeMerger,
    MergeResult,
    latest_cdc_position,
)
from bronze_assets.lib.delta.staging import StagedBatch
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.lib.source import replication
from bronze_assets.lib.source.replication import ChangeSet, SlotState, lsn_text
from bronze_assets.settings import env

log = logging.getLogger(__name__)

SNAPSHOT, STREAM = "snapshot", "stream"


class CdcSlotLostError(RuntimeError):
    """Bronze holds changes up to a log position after which the source's slot can no longer
    give every change (slot gone or lost, table re-created or out of its publication)."""


@dataclass
class CdcRead:
    """What a CDC load reads, up to log position ``lsn``: every row in the slot's exported
    snapshot (``snapshot``), or the keys the stream names (``stream``; None after a TRUNCATE:
    the whole table again). ``relid`` is the source table's OID, recorded with the position."""

    mode: str
    lsn: int
    relid: int | None
    keys: list[int] | None = None
    snapshot_id: str | None = None
    changes: ChangeSet | None = None

    @property
    def all_rows(self) -> bool:
        return self.mode == SNAPSHOT

    @property
    def in_run_partition(self) -> bool:
        """Whether new keys land in the run's partition (§2.4); a TRUNCATE's re-read files rows
        as a whole-table load does."""
        return self.all_rows or self.keys is not None

    @property
    def final_metadata(self) -> dict[str, str]:
        """The commit metadata that records the position (with the batch's last commit)."""
        relid = {CDC_RELID_KEY: str(self.relid)} if self.relid is not None else {}
        return {CDC_LSN_KEY: str(self.lsn)} | relid

    def metadata(self, slot: SlotState | None = None) -> dict[str, Any]:
        """What the asset shows of the read and of the slot's health."""
        meta: dict[str, Any] = {"load_pattern": "cdc", "cdc_mode": self.mode, "cdc_lsn": lsn_text(self.lsn)}
        if self.changes is not None:
            meta |= {"cdc_transactions": self.changes.transactions, "cdc_changes": self.changes.changes,
                     "cdc_keys_changed": len(self.changes.keys), "cdc_stream_complete": self.changes.complete}
        if slot is not None:
            meta |= {"slot_wal_status": slot.wal_status or "-",
                     "slot_retained_wal_bytes": slot.retained_wal_bytes if slot.retained_wal_bytes is not None
                     else -1,
                     "slot_confirmed_lsn": lsn_text(slot.confirmed_flush_lsn) if slot.confirmed_flush_lsn
                     else "-"}
            if slot.current_lsn is not None:  # WAL the source wrote past what this load holds
                meta["cdc_lag_bytes"] = max(0, slot.current_lsn - self.lsn)
        return meta


def cdc_enabled() -> bool:
    """``$BRONZE_CDC`` (default on): CDC tables read the replication slot when the source allows."""
    return (env("BRONZE_CDC") or "on").lower() not in {"0", "off", "false", "no"}


CDC_OFF = "BRONZE_CDC=off"


def fallback_reason(contract: Contract, dsn: str, storage: StorageLike | None = None, *,
                    set_up: bool = False) -> str | None:
    """Why a run of CDC table ``contract`` that reaches the open partition cannot use log-based CDC
    now and loads by the watermark pattern, or None when it reads the replication slot.

    Only *CDC cannot be set up* falls back: CDC switched off, ``wal_level``, the REPLICATION
    attribute, or a publication the source user may neither create nor extend (the reason names
    the SQL the table's owner runs). A stream bronze depends on whose changes can no longer all be
    read is never a fallback: :func:`cdc_read` fails the run (:class:`CdcSlotLostError`). Bronze
    depends on a stream when it holds a log position (known from ``storage``) or, without
    ``storage``, when the table's slot exists. ``set_up``: create the publication (or add the
    table to it) when the source user may, so a refusal the check cannot foresee falls back too."""
    if not cdc_enabled():
        return CDC_OFF
    reasons = [r for r in [replication.availability(dsn)] if r is not None]
    if storage is not None:
        depends = latest_cdc_position(as_storage(storage).open(contract.bronze_table)) is not None
    else:
        depends = replication.slot_state(dsn, contract) is not None
    if not depends:
        problem = replication.publication_problem(dsn, contract)
        if problem is None and set_up and not reasons:
            try:
                replication.ensure_publication(dsn, contract)
            except replication.PublicationError as exc:
                problem = str(exc)
        reasons += [problem] if problem is not None else []
    return "; ".join(reasons) or None


def cdc_choice(contract: Contract, dsn: str, window: tuple[datetime, datetime] | None,
               storage: StorageLike | None = None) -> tuple[bool, dict[str, Any]]:
    """Whether a run of ``contract`` over ``window`` reads the replication slot: a CDC table's run
    that reaches the open partition, when CDC is on and can be set up (:func:`fallback_reason`).
    Else the metadata saying why the watermark pattern ran (empty for tables without CDC and
    for backfills of closed partitions); a fallback the source causes is also logged as a
    WARNING, once per run (``BRONZE_CDC=off`` at INFO: it was asked for). ``storage``, the bronze
    root, tells whether bronze holds a log position (see :func:`fallback_reason`)."""
    if not contract.cdc or (window is not None and window[1] <= datetime.now(UTC)):
        return False, {}
    reason = fallback_reason(contract, dsn, storage, set_up=True)
    if reason is None:
        return True, {}
    from dagster import get_dagster_logger  # the run's log inside a Dagster run, else Python logging

    get_dagster_logger(__name__).log(
        logging.INFO if reason == CDC_OFF else logging.WARNING,
        "%s: log-based CDC cannot be used, loading by the watermark pattern: %s", contract.bronze_table,
        reason)
    return False, {"load_pattern": "watermark", "cdc_unavailable": reason}


@contextmanager
def cdc_read(contract: Contract, dsn: str, storage: StorageLike, *, resync: bool = False
             ) -> Iterator[CdcRead]:
    """The next CDC read of ``contract`` (see the module docstring); a snapshot read's exported
    snapshot stays importable while the block runs. Nothing is acknowledged here. ``resync``:
    a new slot and the table read in its snapshot, whatever bronze recorded (the recovery from
    a lost slot)."""
    storage = as_storage(storage)
    table = contract.bronze_table
    position = None if resync else latest_cdc_position(storage.open(table))
    slot = replication.slot_state(dsn, contract)
    gap = None if position is None else replication.stream_gap(dsn, contract, slot, position.relid)
    if position is not None and gap is not None:
        raise CdcSlotLostError(
            f"{table}: bronze holds the changes up to {lsn_text(position.lsn)}, but {gap}; later changes "
            f"can no longer be read from the source's log. Run `bronze cdc reset {table}` to re-sync it (a "
            f"new slot, the table read in its snapshot and merged; audited).")
    if position is None:  # the first load, or after a reset or a restore: a new slot and its snapshot
        replication.ensure_publication(dsn, contract)  # a refusal fails before any slot is dropped
        if slot is not None:
            replication.drop_slot(dsn, contract)
        with replication.new_slot(dsn, contract) as (lsn, snapshot):
            yield CdcRead(SNAPSHOT, lsn, replication.table_relid(dsn, contract), snapshot_id=snapshot)
        return
    changes = replication.read_changes(dsn, contract, position.lsn)
    keys = None if changes.truncated else list(changes.keys)  # a TRUNCATE: the whole table again
    relid = position.relid if position.relid is not None else slot.relid  # type: ignore[union-attr]
    yield CdcRead(STREAM, changes.end_lsn, relid, keys=keys, changes=changes)


@dataclass
class CdcBatch:
    """A staged CDC load: its read and the rows staged for the MERGE."""

    staged: StagedBatch
    read: CdcRead

    @property
    def mode(self) -> str:
        return self.read.mode

    @property
    def lsn(self) -> int:
        return self.read.lsn

    @property
    def changes(self) -> ChangeSet | None:
        return self.read.changes

    def metadata(self, slot: SlotState | None = None) -> dict[str, Any]:
        return self.read.metadata(slot)


def stage_cdc(contract: Contract, dsn: str, storage: StorageLike, *, batch_time: datetime | None = None,
              partition: tuple[datetime, datetime] | None = None, resync: bool = False) -> CdcBatch:
    """Stage the next CDC load of ``contract``; nothing is committed or acknowledged here.
    ``partition`` is the run's partition range: a key inserted since the last load lands there
    (§2.4: ``load_date`` is the partition of the run that first inserted the key)."""
    with cdc_read(contract, dsn, storage, resync=resync) as read:
        staged = extract_and_stage(contract, dsn, storage, batch_time=batch_time,
                                   partition=partition if read.in_run_partition else None,
                                   keys=read.keys, all_rows=read.all_rows, snapshot_id=read.snapshot_id)
    staged.commit_always = read.all_rows  # a snapshot records its position even if nothing changed
    staged.final_metadata |= read.final_metadata
    return CdcBatch(staged, read)


def acknowledge(contract: Contract, dsn: str, batch: CdcBatch | CdcRead) -> None:
    """Tell the slot bronze holds the batch's changes (after their commit): it frees the WAL."""
    replication.acknowledge(dsn, contract, batch.lsn)


def cdc_load(contract: Contract, dsn: str, storage: StorageLike, *, batch_time: datetime | None = None,
             resync: bool = False) -> tuple[CdcBatch, MergeResult]:
    """One CDC load without Dagster: stage, MERGE, acknowledge."""
    storage = as_storage(storage)
    batch = stage_cdc(contract, dsn, storage, batch_time=batch_time, resync=resync)
    try:
        result = BronzeMerger(contract, storage).merge(batch.staged)
    finally:
        batch.staged.cleanup()
    acknowledge(contract, dsn, batch)
    return batch, result


def reset(contract: Contract, dsn: str, storage: StorageLike, job_id: str | None = None,
          ) -> tuple[CdcBatch, MergeResult]:
    """Re-sync a table whose slot is gone or lost: drop what is left of the slot, create a new one
    and MERGE the table read in its snapshot (keys gone from the source become DELETED). Audited."""
    storage = as_storage(storage)
    with audited(storage, contract.bronze_table, "CDC_RESET", job_id) as entry:
        batch, result = cdc_load(contract, dsn, storage, resync=True)
        entry.records_affected = result.inserted + result.updated + result.soft_deleted
        entry.details = json.dumps({"slot": replication.slot_name(dsn, contract), "lsn": lsn_text(batch.lsn)})
    return batch, result
