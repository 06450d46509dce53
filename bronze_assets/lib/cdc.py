"""Log-based CDC loads: the first load reads the table in the snapshot its new replication slot
exported; every later load reads the slot from the position bronze recorded with its last commit,
re-reads the changed keys' current rows in one snapshot and MERGEs them (a key the source no
longer has becomes DELETED). So a load costs the change, not the table, and a row committed late
by a long transaction arrives with its commit.

Exactly once: the position (``bronze.cdc_lsn``) is written with the last Delta commit of the
batch, and the slot is told only after that commit. A run killed anywhere re-reads from the
recorded position (re-reading a key twice changes nothing), so bronze ends exact.

One stream per deployment, and a gap is never silent: each bronze root reads its own slot
(:func:`~bronze_assets.lib.source.replication.slot_name` carries the deployment id), and before a
stream is read the slot's confirmed position is checked against what the root holds
(:func:`position_gap`): the server would silently start a read at the confirmed position, so a
slot confirmed past the root's position (another reader took the changes, or the slot was
re-created) is a stream gap, named with ``bronze cdc reset``. A root ahead of the slot's confirmed
position is the normal recovery of a run killed between its commit and the acknowledgement.
A tick whose changes commit nothing (none for this table, or no row changed) still lets the slot
go: the position it acknowledges is first written to ``<root>/_bronze_cdc/<table>.json``, so the
root holds it too.
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
from bronze_assets.lib.delta.commit_log import (
    CDC_LSN_KEY,
    CDC_RELID_KEY,
    CDC_SLOT_KEY,
    CdcPosition,
    CommitLog,
)
from bronze_assets.lib.delta.control import AUDIT_LOG, SUCCESS, AuditEntry, append_rows, audited
from bronze_assets.lib.delta.merge_result import MergeResult
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.delta.staging import StagedBatch
from bronze_assets.lib.delta.storage import Storage, StorageLike, as_storage
from bronze_assets.lib.load.stage import stage_selection
from bronze_assets.lib.source import replication
from bronze_assets.lib.source.replication import ENV_DEPLOYMENT_ID, ChangeSet, SlotState, lsn_text
from bronze_assets.lib.source.window import TableSelection

log = logging.getLogger(__name__)

SNAPSHOT, STREAM = "snapshot", "stream"


class CdcSlotLostError(RuntimeError):
    """Bronze holds changes up to a log position after which the source's slot can no longer
    give every change (slot gone or lost, table re-created or out of its publication, the slot's
    confirmed position past the root's, the root copied from another deployment's)."""


ACK_DIR = "_bronze_cdc"  # <root>/_bronze_cdc/<table>.json: the position last acknowledged to the slot


Position = CdcPosition  # what a bronze root holds of a table's stream (see commit_log.CdcPosition)


def committed_position(storage: StorageLike, table: str, limit: int = 200, *,
                       commits: CommitLog | None = None) -> Position | None:
    """The latest commit's :class:`Position` of ``table`` in ``storage``
    (:meth:`~bronze_assets.lib.delta.commit_log.CommitLog.cdc_position`), from ``commits`` when
    the caller read the table's commit log already."""
    if commits is None:
        commits = CommitLog.read(as_storage(storage).open(table))
    return commits.cdc_position(limit)


def deployment_id(storage: StorageLike) -> str:
    """This deployment's id for the bronze root ``storage``: its settings' ``deployment_id``
    (``$BRONZE_DEPLOYMENT_ID``), else a hash of the root (see
    :func:`~bronze_assets.lib.source.replication.deployment_id`)."""
    storage = as_storage(storage)
    return replication.deployment_id(storage.root, storage.settings.deployment_id)


def table_slot(contract: Contract, dsn: str, storage: StorageLike) -> str:
    """The name of the slot the bronze root ``storage`` reads ``contract``'s changes from."""
    return replication.slot_name(dsn, contract, deployment_id(storage))


def _ack_path(table: str) -> str:
    return f"{ACK_DIR}/{table}.json"


def acknowledged(storage: StorageLike, table: str) -> tuple[str, int] | None:
    """(slot, position) the root last acknowledged for ``table``, or None."""
    raw = as_storage(storage).read_file(_ack_path(table))
    if raw is None:
        return None
    record = json.loads(raw)
    return str(record["slot"]), int(record["lsn"])


def _record_acknowledged(storage: Storage, table: str, slot: str, lsn: int) -> None:
    storage.write_file(_ack_path(table), json.dumps({"slot": slot, "lsn": lsn, "lsn_text": lsn_text(lsn),
                                                     "at": datetime.now(UTC).isoformat()}).encode())


def position_gap(held: int, slot: SlotState) -> str | None:
    """Why ``slot`` cannot continue a root that holds every change up to ``held`` (its committed
    position, or the one it acknowledged after a tick that committed nothing), or None.

    * confirmed ≤ held: the normal case; held > confirmed after a run killed between its commit
      and its acknowledgement (the stream is read again from ``held``).
    * confirmed > held: the server would start the read at the confirmed position and the changes
      in between would never arrive: another reader read and acknowledged them (another root
      using this slot, or this root restored from an older copy), or the slot was dropped and
      created again (a new slot's position lies past every earlier one).
    * held > the server's WAL position: the source was restored from a backup or replaced."""
    confirmed, current = slot.confirmed_flush_lsn, slot.current_lsn
    if confirmed is not None and confirmed > held:
        return (f"the replication slot {slot.name} has confirmed {lsn_text(confirmed)}: the changes in "
                f"between were read and acknowledged by another reader (another bronze root using this "
                f"slot: give each deployment its own {ENV_DEPLOYMENT_ID}; or this root was restored from an "
                f"older copy), or the slot was dropped and created again")
    if current is not None and held > current:
        return (f"the source's WAL position is only {lsn_text(current)}: the source server was restored "
                f"from a backup or replaced since")
    return None


@dataclass(frozen=True)
class StreamCheck:
    """Where a CDC table's stream stands for one bronze root: its slot (name, state), the
    position the root holds, the old shared slot a position predating per-deployment slots came
    from (the next CDC run re-syncs), and the gap, if the slot can no longer give every change."""

    slot: str
    state: SlotState | None
    position: Position | None
    legacy_slot: str | None = None
    gap: str | None = None


def check_stream(contract: Contract, dsn: str, storage: StorageLike, commits: CommitLog | None = None
                 ) -> StreamCheck:
    """The :class:`StreamCheck` of ``contract`` in the bronze root ``storage`` (whose table's
    commit log is ``commits``, when read already)."""
    storage = as_storage(storage)
    table = contract.bronze_table
    name = table_slot(contract, dsn, storage)
    position = committed_position(storage, table, commits=commits)
    state = replication.slot_state(dsn, contract, name)
    if position is None:
        return StreamCheck(name, state, None)
    if position.slot is None:
        return StreamCheck(name, state, position, legacy_slot=replication.legacy_slot_name(dsn, contract))
    if position.slot != name:
        return StreamCheck(name, state, position, gap=(
            f"bronze's position was read from the replication slot {position.slot}, and this deployment "
            f"reads {name} (the bronze root was copied or moved from another root, or {ENV_DEPLOYMENT_ID} "
            f"changed)"))
    gap = replication.stream_gap(dsn, contract, state, position.relid, name)
    if gap is None and state is not None:
        held = position.lsn
        if state.confirmed_flush_lsn is not None and state.confirmed_flush_lsn > held:
            ack = acknowledged(storage, table)  # a tick that committed nothing acknowledged past it
            if ack is not None and ack[0] == name:
                held = max(held, ack[1])
        gap = position_gap(held, state)
    return StreamCheck(name, state, position, gap=gap)


def gap_error(table: str, position: Position, gap: str) -> CdcSlotLostError:
    return CdcSlotLostError(
        f"{table}: stream gap: bronze holds the changes up to {lsn_text(position.lsn)}; {gap}. The "
        f"source's log can no longer give every change since: run `bronze cdc reset {table}` to re-sync "
        f"it (a new slot, the table read in its snapshot and merged; audited).")


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
    slot: str | None = None  # the slot read (None: this deployment's by $BRONZE_ROOT)
    storage: Storage | None = None  # the bronze root
    slot_seen: SlotState | None = None  # the slot as the read found it
    legacy_slot: str | None = None  # the shared slot of earlier versions this snapshot migrates from
    reset: bool = False  # `bronze cdc reset` (audited there)

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
        slot = {CDC_SLOT_KEY: self.slot} if self.slot is not None else {}
        return {CDC_LSN_KEY: str(self.lsn)} | relid | slot

    def selection(self, dsn: str, partition: tuple[datetime, datetime] | None) -> TableSelection:
        """What the engine stages: the changed keys, or every row in the slot's snapshot (which
        records its position even when nothing changed). New keys land in the run's ``partition``
        (§2.4); a TRUNCATE's re-read is a whole-table load."""
        return TableSelection(dsn, partition if self.in_run_partition else None, keys=self.keys,
                              all_rows=self.all_rows, snapshot_id=self.snapshot_id,
                              final_metadata=self.final_metadata, commit_always=self.all_rows)

    def metadata(self, slot: SlotState | None = None) -> dict[str, Any]:
        """What the asset shows of the read and of the slot's health (``slot``: its state now;
        another slot's state, e.g. looked up by ``$BRONZE_ROOT`` for another root, is not shown:
        the state the read found is)."""
        if slot is None or (self.slot is not None and slot.name != self.slot):
            slot = self.slot_seen
        meta: dict[str, Any] = {"load_pattern": "cdc", "cdc_mode": self.mode, "cdc_lsn": lsn_text(self.lsn)}
        if self.slot is not None:
            meta["cdc_slot"] = self.slot
        if self.legacy_slot is not None:
            meta["cdc_migrated_from"] = self.legacy_slot
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


CDC_OFF = "BRONZE_CDC=off"


def fallback_reason(contract: Contract, dsn: str, storage: StorageLike, *,
                    set_up: bool = False, commits: CommitLog | None = None) -> str | None:
    """Why a run of CDC table ``contract`` that reaches the open partition cannot use log-based CDC
    now and loads by the watermark pattern, or None when it reads the replication slot.

    Only *CDC cannot be set up* falls back: CDC switched off, ``wal_level``, the REPLICATION
    attribute, a publication the source user may neither create nor extend (the reason names
    the SQL the table's owner runs), or, before bronze holds a position, no free replication slot
    on the server. A stream bronze depends on whose changes can no longer all be
    read is never a fallback: :func:`cdc_read` fails the run (:class:`CdcSlotLostError`). Bronze
    depends on a stream when it holds a log position in ``storage`` (whose settings say whether CDC
    is on: ``$BRONZE_CDC``). ``set_up``: create the publication (or add the table to it) when the
    source user may, so a refusal the check cannot foresee falls back too (the publication is read
    once either way). ``commits``: the table's commit log, when read already."""
    storage = as_storage(storage)
    if not storage.settings.cdc:
        return CDC_OFF
    reasons = [r for r in [replication.availability(dsn)] if r is not None]
    if committed_position(storage, contract.bronze_table, commits=commits) is None:  # no stream yet
        problem = None
        if set_up and not reasons:
            try:
                replication.ensure_publication(dsn, contract)
            except replication.PublicationError as exc:
                problem = str(exc)
        else:
            problem = replication.publication_problem(dsn, contract)
        reasons += [problem] if problem is not None else []
        if not reasons:  # set up, but the slot it needs cannot be created
            full = replication.no_free_slot(dsn, table_slot(contract, dsn, storage))
            reasons += [full] if full is not None else []
    return "; ".join(reasons) or None


def cdc_choice(contract: Contract, dsn: str, window: tuple[datetime, datetime] | None,
               storage: StorageLike, logger: logging.Logger = log,
               commits: CommitLog | None = None) -> tuple[bool, dict[str, Any]]:
    """Whether a run of ``contract`` over ``window`` reads the replication slot: a CDC table's run
    that reaches the open partition, when CDC is on and can be set up (:func:`fallback_reason`).
    Else the metadata saying why the watermark pattern ran (empty for tables without CDC and
    for backfills of closed partitions); a fallback the source causes is also logged to
    ``logger`` (the run's log) as a WARNING, once per run (``BRONZE_CDC=off`` at INFO: it was asked
    for). ``storage``, the bronze root, tells whether bronze holds a log position (see
    :func:`fallback_reason`; ``commits``: the table's commit log, when read already)."""
    if not contract.cdc or (window is not None and window[1] <= datetime.now(UTC)):
        return False, {}
    reason = fallback_reason(contract, dsn, storage, set_up=True, commits=commits)
    if reason is None:
        return True, {}
    logger.log(logging.INFO if reason == CDC_OFF else logging.WARNING,
               "%s: log-based CDC cannot be used, loading by the watermark pattern: %s",
               contract.bronze_table, reason)
    return False, {"load_pattern": "watermark", "cdc_unavailable": reason}


@contextmanager
def cdc_read(contract: Contract, dsn: str, storage: StorageLike, *, resync: bool = False,
             chosen: bool = False, commits: CommitLog | None = None) -> Iterator[CdcRead]:
    """The next CDC read of ``contract`` from this deployment's slot (see the module docstring);
    a snapshot read's exported snapshot stays importable while the block runs. Nothing is
    acknowledged here. A stream gap (:func:`check_stream`) fails with :class:`CdcSlotLostError`.
    ``resync``: a new slot and the table read in its snapshot, whatever bronze recorded (the
    recovery from a gap). A position committed before slots were named per deployment re-syncs
    the same way, once (the migration; :func:`acknowledge` retires the old shared slot).
    ``chosen``: the read follows :func:`cdc_choice`, which set up the publication of a table bronze
    holds no position of, so a first load does not check it again. ``commits``: the table's commit
    log, when read already."""
    storage = as_storage(storage)
    table = contract.bronze_table
    check = check_stream(contract, dsn, storage, commits)
    position, slot = check.position, check.state
    if not resync and position is not None and check.gap is not None:
        raise gap_error(table, position, check.gap)
    if resync or position is None or check.legacy_slot is not None:
        # the first load, a reset, a restore or the migration: a new slot and its snapshot
        if check.legacy_slot is not None and not resync:
            log.warning("%s: the log position bronze holds was read from the slot %s, shared by every bronze "
                        "root of earlier versions; re-syncing once from this deployment's own slot %s", table,
                        check.legacy_slot, check.slot)
        if resync or position is not None or not chosen:  # a refusal fails before any slot is dropped
            replication.ensure_publication(dsn, contract)
        if slot is not None:
            replication.drop_slot(dsn, contract, check.slot)
        with replication.new_slot(dsn, contract, check.slot) as (lsn, snapshot):
            yield CdcRead(SNAPSHOT, lsn, replication.table_relid(dsn, contract), snapshot_id=snapshot,
                          slot=check.slot, storage=storage, legacy_slot=check.legacy_slot, reset=resync,
                          slot_seen=replication.slot_state(dsn, contract, check.slot))
        return
    assert slot is not None  # check_stream names a missing slot as a gap
    changes = replication.read_changes(dsn, contract, position.lsn, slot=check.slot)
    keys = None if changes.truncated else list(changes.keys)  # a TRUNCATE: the whole table again
    relid = position.relid if position.relid is not None else slot.relid
    yield CdcRead(STREAM, changes.end_lsn, relid, keys=keys, changes=changes, slot=check.slot,
                  storage=storage, slot_seen=slot)


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
    storage = as_storage(storage)
    commits = CommitLog.read(storage.open(contract.bronze_table))  # one history read for the load
    with cdc_read(contract, dsn, storage, resync=resync, commits=commits) as read:
        staged = stage_selection(contract, storage, read.selection(dsn, partition), batch_time, commits)
    return CdcBatch(staged, read)


def acknowledge(contract: Contract, dsn: str, batch: CdcBatch | CdcRead) -> None:
    """Tell the slot bronze holds the batch's changes (after their commit): it frees the WAL.

    A stream's position is first written to ``<root>/_bronze_cdc/<table>.json``: a tick whose
    changes committed nothing recorded no position in Delta, yet the slot is told it, and the
    gap check must know that this root, not another reader, moved the slot. After a migration
    (see :func:`cdc_read`) the old shared slot is dropped (unless a reader is using it) and the
    re-sync is audited as ``CDC_RESET``."""
    read = batch.read if isinstance(batch, CdcBatch) else batch
    if read.mode == STREAM and read.storage is not None and read.slot is not None:
        _record_acknowledged(read.storage, contract.bronze_table, read.slot, read.lsn)
    replication.acknowledge(dsn, contract, read.lsn, read.slot)
    if read.legacy_slot is not None:
        dropped = replication.drop_slot(dsn, contract, read.legacy_slot, only_inactive=True)
        if not dropped and replication.slot_state(dsn, contract, read.legacy_slot) is not None:
            log.warning("%s: the old shared slot %s is in use by another reader (a bronze root of an earlier "
                        "version?); it is left in place, drop it once nothing reads it: SELECT "
                        "pg_drop_replication_slot('%s')", contract.bronze_table, read.legacy_slot,
                        read.legacy_slot)
        if not read.reset and read.storage is not None:
            entry = AuditEntry(contract.bronze_table, "CDC_RESET", details=json.dumps({
                "reason": "migration to a slot of this deployment's own", "slot": read.slot,
                "legacy_slot": read.legacy_slot, "legacy_slot_dropped": dropped, "lsn": lsn_text(read.lsn)}))
            # the rows the re-sync changed are in the load's own LOAD row
            append_rows(read.storage, AUDIT_LOG, [entry.row(SUCCESS) | {"records_affected": None}])


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
    """Re-sync a table whose stream has a gap: drop what is left of this deployment's slot, create
    a new one and MERGE the table read in its snapshot (keys gone from the source become DELETED).
    Audited."""
    storage = as_storage(storage)
    with audited(storage, contract.bronze_table, "CDC_RESET", job_id) as entry:
        batch, result = cdc_load(contract, dsn, storage, resync=True)
        entry.records_affected = result.inserted + result.updated + result.soft_deleted
        legacy = {"legacy_slot": batch.read.legacy_slot} if batch.read.legacy_slot else {}
        entry.details = json.dumps({"slot": batch.read.slot, "lsn": lsn_text(batch.lsn)} | legacy)
    return batch, result
