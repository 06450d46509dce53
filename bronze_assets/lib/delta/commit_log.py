"""The commit-log protocol of a bronze table (both engines): the ``bronze.*`` keys a load commit
records, and what later loads read back from the table's Delta history (:class:`CommitLog`:
batch ids and chunks, watermark, record_hash version, CDC position, loaded partition ranges,
first load time; the engine's own commit metrics)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from deltalake import DeltaTable

BATCH_KEY = "bronze.batch_id"
BATCH_TIME_KEY = "bronze.batch_time"  # when the batch began reading its source (ISO, UTC)
PARTITIONS_KEY = "bronze.partitions"  # "<first>/<end>": the Dagster partition range a load ran for
WATERMARK_KEY = "bronze.watermark"
CHUNK_KEY = "bronze.chunk"  # "i/n": commit i of the n a batch is written in
HASH_VERSION_KEY = "bronze.hash_version"  # ARCHITECTURE §2.2 record_hash version of the rows written
HASH_VERSION = 2
REHASHED_KEY = "bronze.rehashed_v1"  # rows whose v1 hash the commit replaced by v2 (nothing else)
CDC_LSN_KEY = "bronze.cdc_lsn"  # the log position a CDC load's changes reach (with its last chunk)
CDC_RELID_KEY = "bronze.cdc_relid"  # the OID of the source table that position belongs to
CDC_SLOT_KEY = "bronze.cdc_slot"  # the slot the position was read from (recorded with the position)
USER_METADATA = "userMetadata"  # where delta-spark keeps a commit's own metadata (one JSON string)
RECENT_COMMITS = 200  # commits a load reads back: the deepest any of its questions looks
FIRST_PAGE = 2  # commits read first: a load's questions are answered by its table's latest load


# The engines' own commit metrics (delta-rs snake_case, delta-spark camelCase) by one name each:
# MERGE commits first, then plain writes (a table's first load, a metadata-only commit).
_MERGE_METRICS = {
    "rows_inserted": ("num_target_rows_inserted", "numTargetRowsInserted"),
    "rows_updated": ("num_target_rows_updated", "numTargetRowsUpdated"),
    "rows_deleted": ("num_target_rows_deleted", "numTargetRowsDeleted"),
    "rows_copied": ("num_target_rows_copied", "numTargetRowsCopied"),
    "rows_written": ("num_output_rows", "numOutputRows"),
    "files_added": ("num_target_files_added", "numTargetFilesAdded"),
    "files_removed": ("num_target_files_removed", "numTargetFilesRemoved"),
    # files whose replaced rows a deletion vector marks instead of a rewrite (delta-spark only)
    "deletion_vectors_added": ("num_target_deletion_vectors_added", "numTargetDeletionVectorsAdded"),
}
_WRITE_METRICS = {
    "rows_inserted": ("num_added_rows", "numOutputRows"),
    "rows_written": ("num_added_rows", "numOutputRows"),
    "files_added": ("num_added_files", "numFiles"),
    "files_removed": ("num_removed_files", "numRemovedFiles"),
}


def commit_history(dt: DeltaTable, limit: int | None = None) -> list[dict[str, Any]]:
    """``dt.history(limit)`` with the bronze keys of every commit at the top level, whichever
    engine wrote it: delta-rs keeps them there, the Spark engine in ``userMetadata`` (JSON).

    On an object store the commits read are remembered by table and version (a commit never
    changes), so the several readers of one load (watermark, hash version, first load, CDC
    position, batch ids, the one-engine check) cost one read of each commit file, not one each."""
    uri, version = dt.table_uri, dt.version()
    if "://" not in uri or uri.startswith("file://"):
        return _with_bronze_keys(dt.history(limit))
    with _READ_GUARD:
        known = _READ.get((uri, version))
    complete = known is not None and (len(known) > version or (limit is not None and len(known) >= limit))
    if not complete:
        known = _with_bronze_keys(dt.history(limit))
        with _READ_GUARD:
            _READ[(uri, version)] = known
            _READ.move_to_end((uri, version))
            while len(_READ) > _READ_TABLES:
                _READ.popitem(last=False)
    assert known is not None
    return [dict(entry) for entry in (known if limit is None else known[:limit])]


_READ: OrderedDict[tuple[str, int], list[dict[str, Any]]] = OrderedDict()  # newest first, per table version
_READ_GUARD = threading.Lock()
_READ_TABLES = 64


def _with_bronze_keys(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for entry in entries:
        user = entry.get(USER_METADATA)
        if isinstance(user, str) and user.startswith("{"):
            try:
                extra = json.loads(user)
            except ValueError:
                continue
            if isinstance(extra, dict):
                entry.update({k: v for k, v in extra.items() if k.startswith("bronze.")})
    return entries


def commit_metrics(entry: dict[str, Any]) -> dict[str, int]:
    """One commit's engine metrics (rows inserted / updated / deleted / copied / written, files
    added / removed), whichever engine wrote it."""
    names = _MERGE_METRICS if str(entry.get("operation", "")).upper() == "MERGE" else _WRITE_METRICS
    raw = entry.get("operationMetrics") or {}
    metrics = dict.fromkeys(_MERGE_METRICS, 0)
    for name, keys in names.items():
        value = next((raw[k] for k in keys if k in raw), None)
        metrics[name] = int(value) if value is not None else 0
    return metrics


def batch_metrics(dt: DeltaTable, batch_id: str, commits: int) -> dict[str, int]:
    """The engine metrics summed over the ``commits`` commits of ``batch_id``, read after the batch
    committed: its latest ``commits`` commits, deeper only when another writer committed since."""
    total = dict.fromkeys(_MERGE_METRICS, 0)
    if not commits:
        return total
    for depth in (commits, commits + 8):
        entries = [e for e in commit_history(dt, depth) if e.get(BATCH_KEY) == batch_id]
        if len(entries) >= commits:
            break
    for entry in entries:
        for name, value in commit_metrics(entry).items():
            total[name] += value
    return total


def created_metrics(rows: int, files: int) -> dict[str, int]:
    """:func:`batch_metrics` of a batch whose commits are every version of its table, each a plain
    write (a create, then its chunks' appends): ``rows`` written into the ``files`` the table
    holds, nothing removed — known without reading its commits back."""
    return dict.fromkeys(_MERGE_METRICS, 0) | {"rows_inserted": rows, "rows_written": rows,
                                                "files_added": files}


@dataclass(frozen=True)
class CdcPosition:
    """The log position bronze holds every change up to, the source table's OID then, and the
    slot it was read from (None: a position committed before slots were named per deployment)."""

    lsn: int
    relid: int | None
    slot: str | None = None


def _chunk(entry: dict[str, Any]) -> tuple[int, int]:
    i, n = str(entry.get(CHUNK_KEY, "0/1")).split("/")
    return int(i), int(n)


@dataclass(frozen=True)
class CommitLog:
    """A bronze table's recent commits, newest first (:func:`commit_history`), read once and asked
    every question of the commit-log protocol: a load reads its table's history once, not once
    per question (on object storage each read is a listing plus a read per commit).

    ``version`` is the table version the commits were read at (None: no table yet); ``complete``
    says they are every commit the log still has. The latest :data:`FIRST_PAGE` commits are read
    first; a question they do not answer reads back as deep as it looks, once (on an object
    store each commit is a request: a table's log holds hundreds)."""

    version: int | None = None
    entries: tuple[dict[str, Any], ...] = ()
    complete: bool = True
    table: DeltaTable | None = field(default=None, compare=False, repr=False)
    _deeper: dict[int, tuple[dict[str, Any], ...]] = field(
        default_factory=dict, compare=False, repr=False)

    @classmethod
    def read(cls, dt: DeltaTable | None, limit: int | None = FIRST_PAGE) -> CommitLog:
        """The latest ``limit`` commits of ``dt`` (None: all of them); empty without a table."""
        if dt is None:
            return cls()
        entries = tuple(commit_history(dt, limit))
        return cls(dt.version(), entries, limit is None or len(entries) < limit, dt)

    @classmethod
    def current(cls, dt: DeltaTable | None, known: CommitLog | None) -> CommitLog:
        """``known`` when it was read at ``dt``'s version (nothing was committed since), else a
        new read of ``dt``."""
        if known is not None and known.version == (None if dt is None else dt.version()):
            return known
        return cls.read(dt)

    def latest(self, limit: int | None = None) -> tuple[dict[str, Any], ...]:
        """The latest ``limit`` commits (None: every commit the log has)."""
        return tuple(self._walk(limit))

    def _walk(self, limit: int | None) -> Iterator[dict[str, Any]]:
        """The latest ``limit`` commits, newest first: those read first, then (only while the
        caller asks past them) older ones, each deeper read four times the last."""
        yield from self.entries[:limit]
        given, depth, complete = len(self.entries), len(self.entries), self.complete
        while not complete and (limit is None or given < limit):
            depth = max(depth * 4, 1) if limit is None else min(limit, max(depth * 4, 1))
            back = self._back(depth)
            yield from back[given:limit]
            given, complete = len(back), len(back) < depth

    def _back(self, depth: int) -> tuple[dict[str, Any], ...]:
        """The latest ``depth`` commits at :attr:`version` (read once)."""
        if depth not in self._deeper:
            assert self.table is not None and self.version is not None, "a partial log was read from a table"
            since = self.table.version() - self.version  # the run may have refreshed its table since
            entries = commit_history(self.table, depth + since)
            at_version = (e for e in entries if int(e.get("version", -1)) <= self.version)
            self._deeper[depth] = tuple(at_version)[:depth]
        return self._deeper[depth]

    def watermark(self, limit: int = 200) -> datetime | None:
        """The incremental watermark of the table's current state: recorded by the latest commit
        that carries one, not counting commits a RESTORE undid (after a restore to version V the
        watermark is V's, so the next run re-reads every change since then)."""
        ceiling: int | None = None
        for entry in self._walk(limit):
            version = int(entry.get("version", -1))
            if ceiling is not None and version > ceiling:
                continue  # undone by a later restore
            if entry.get("operation") == "RESTORE":
                target = (entry.get("operationParameters") or {}).get("version")
                if target is not None:
                    ceiling = int(target)
                continue
            if WATERMARK_KEY in entry:
                return datetime.fromisoformat(str(entry[WATERMARK_KEY]))
        return None

    def hash_version(self, limit: int = 50) -> int:
        """The record_hash version of the table's latest load (1 for tables written before v2)."""
        for entry in self._walk(limit):
            if BATCH_KEY in entry:
                return int(entry.get(HASH_VERSION_KEY, 1))
        return HASH_VERSION

    def cdc_position(self, limit: int = 200) -> CdcPosition | None:
        """The latest commit's :class:`CdcPosition`; None when there is none, or when a RESTORE
        came after it (a restored table re-syncs)."""
        for entry in self._walk(limit):
            if entry.get("operation") == "RESTORE":
                return None
            if CDC_LSN_KEY in entry:
                relid, slot = entry.get(CDC_RELID_KEY), entry.get(CDC_SLOT_KEY)
                return CdcPosition(int(entry[CDC_LSN_KEY]), int(relid) if relid is not None else None,
                                   str(slot) if slot else None)
        return None

    def committed_batch_ids(self, limit: int = 50) -> set[str]:
        """Batches whose final commit landed (to detect a commit that landed before a retry)."""
        return {str(h[BATCH_KEY]) for h in self._walk(limit)
                if BATCH_KEY in h and _chunk(h)[0] == _chunk(h)[1] - 1}

    def committed_chunks(self, batch_id: str, limit: int = 200) -> set[int]:
        """Chunk indexes of ``batch_id`` already in the table."""
        return {_chunk(h)[0] for h in self._walk(limit) if h.get(BATCH_KEY) == batch_id}

    def interrupted_batch(self, limit: int = 50) -> str | None:
        """The batch of the latest commit if it was a non-final chunk (a load killed mid-way)."""
        for h in self._walk(limit):
            if BATCH_KEY not in h:
                continue
            i, n = _chunk(h)
            return str(h[BATCH_KEY]) if i < n - 1 else None
        return None

    def loaded_ranges(self) -> list[tuple[date, date]]:
        """The partition ranges (first day, end day exclusive) the table's load commits ran for."""
        ranges = []
        for entry in self._walk(None):
            first, sep, end = str(entry.get(PARTITIONS_KEY, "")).partition("/")
            if sep:
                ranges.append((date.fromisoformat(first), date.fromisoformat(end)))
        return ranges

    def first_load_time(self) -> datetime | None:
        """When the table's oldest load began reading its source (the batch time its commits
        record, else the commit's own time for commits written before they did); None for a table
        no load wrote."""
        times = [datetime.fromisoformat(str(e[BATCH_TIME_KEY])) if BATCH_TIME_KEY in e
                 else datetime.fromtimestamp(int(e.get("timestamp", 0)) / 1000, UTC)
                 for e in self._walk(None) if BATCH_KEY in e]
        return min(times) if times else None
