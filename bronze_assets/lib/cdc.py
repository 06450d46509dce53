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
from dataclasses import dataclass
from datetime import datetime
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

log = logging.getLogger(__name__)

SNAPSHOT, STREAM = "snapshot", "stream"


class CdcSlotLostError(RuntimeError):
    """Bronze holds changes up to a log position after which the source's slot can no longer
    give every change (slot gone or lost, table re-created or out of its publication)."""


@dataclass
class CdcBatch:
    """A staged CDC load: how it read (``snapshot`` or ``stream``) and up to which position."""

    staged: StagedBatch
    mode: str
    lsn: int
    changes: ChangeSet | None = None

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


def stage_cdc(contract: Contract, dsn: str, storage: StorageLike, *, batch_time: datetime | None = None,
              partition: tuple[datetime, datetime] | None = None, resync: bool = False) -> CdcBatch:
    """Stage the next CDC load of ``contract`` (see the module docstring); nothing is committed
    or acknowledged here. ``partition`` is the run's partition range: a key inserted since the
    last load lands there (§2.4: ``load_date`` is the partition of the run that first inserted
    the key). ``resync``: a new slot and the table read in its snapshot, whatever bronze
    recorded (the recovery from a lost slot)."""
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
        if slot is not None:
            replication.drop_slot(dsn, contract)
        with replication.new_slot(dsn, contract) as (lsn, snapshot):
            staged = extract_and_stage(contract, dsn, storage, batch_time=batch_time, partition=partition,
                                       all_rows=True, snapshot_id=snapshot)
        staged.commit_always = True  # the log position must be recorded even if nothing changed
        batch, relid = CdcBatch(staged, SNAPSHOT, lsn), replication.table_relid(dsn, contract)
    else:
        changes = replication.read_changes(dsn, contract, position.lsn)
        keys = None if changes.truncated else list(changes.keys)  # a TRUNCATE: the whole table again
        staged = extract_and_stage(contract, dsn, storage, batch_time=batch_time, keys=keys,
                                   partition=partition if keys is not None else None)
        batch, relid = CdcBatch(staged, STREAM, changes.end_lsn, changes), position.relid
    batch.staged.final_metadata[CDC_LSN_KEY] = str(batch.lsn)
    if relid is not None:
        batch.staged.final_metadata[CDC_RELID_KEY] = str(relid)
    return batch


def acknowledge(contract: Contract, dsn: str, batch: CdcBatch) -> None:
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
