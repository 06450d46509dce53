"""The bronze MERGE (ARCHITECTURE §2.3) on delta-rs: idempotent, one commit per load (per chunk
of ``$BRONZE_COMMIT_CHUNK_ROWS`` rows for large loads, so a killed load keeps its progress).

The load is planned first (:class:`~bronze_assets.lib.delta.merge_plan.MergePlanner`): only new,
changed and vanished keys go into the MERGE, each routed to the partition it lives in, and the
MERGE predicate names those partitions and the key range so delta-rs rewrites only files that can
match. A load that changes nothing commits nothing. Every commit carries the batch id and a Delta
app transaction (:mod:`~bronze_assets.lib.delta.load_commit`), and a retry first re-reads the
table to see whether the commit landed.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.change_feed import BRONZE_PROPERTIES, ensure_properties
from bronze_assets.lib.delta.commit_log import (
    REHASHED_KEY,
    CommitLog,
    batch_metrics,
    created_metrics,
)
from bronze_assets.lib.delta.exclusive_append import is_conflict
from bronze_assets.lib.delta.history import HistoryWriter, adds_versions
from bronze_assets.lib.delta.key_ranges import key_range_sql, key_ranges, sql_literal
from bronze_assets.lib.delta.load_commit import commit_metadata, commit_properties, commit_without_rows
from bronze_assets.lib.delta.merge_plan import OP, MergePlanner
from bronze_assets.lib.delta.merge_result import MergeResult, UniqueWrite
from bronze_assets.lib.delta.protection import PiiHook, require_hook
from bronze_assets.lib.delta.query import table_stats
from bronze_assets.lib.delta.staged_file import slices
from bronze_assets.lib.delta.staged_layout import StagedLayout, staged_layout
from bronze_assets.lib.delta.staging import SpillFile, StagedBatch
from bronze_assets.lib.delta.storage import StorageLike, as_storage, local_path
from bronze_assets.lib.delta.write_options import (
    WRITE_BATCH_ROWS,
    target_file_bytes,
    writer_properties,
)
from bronze_assets.lib.delta.writers import refuse_deletion_vectors
from bronze_assets.lib.enrich.metadata import ACTIVE, DELETED, FORGOTTEN, bronze_schema, staged_schema
from bronze_assets.lib.overlap import read_ahead
from bronze_assets.lib.source.ddl import quote_ident
from bronze_assets.lib.stop import stop_point

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 4
# delta-rs MERGEs executing at once in a process (a run's steps, runs on threads): each rewrites
# every file holding a changed key on threads of its own; a third beside two adds its working set
# (+0.1 GB at scale 10), not speed (README "Performance", the hourly tick's memory)
MERGE_SLOTS = 2
_merge_slots = threading.BoundedSemaphore(MERGE_SLOTS)


class BronzeMerger:
    """Merges staged batches of one contract into its ``bz_`` Delta table."""

    def __init__(self, contract: Contract, storage: StorageLike,
                 chunk_rows: int | None = None):
        self.contract = contract
        self.storage = as_storage(storage)
        self.chunk_rows = chunk_rows or self.storage.settings.commit_chunk_rows
        self.uri = self.storage.uri(contract.bronze_table)
        self.schema = bronze_schema(contract)
        self.pk = list(contract.merge_key)  # a keyless table: its record_key
        self.part = contract.partitioning.delta_column
        self.pii: PiiHook | None = None  # the staged batch's PII hook, during merge()
        self._latest: DeltaTable | None = None  # as this merge's latest commit left it
        self.final: DeltaTable | None = None  # the table as the last merge() left it
        self.unique: UniqueWrite | None = None  # that merge's create, when its keys are known unique

        self.planner = MergePlanner(contract, self.uri, self.storage.settings.stage_dir)
        self.history = HistoryWriter(contract, self.storage) if contract.history else None

    # ------------------------------------------------------------------ writing
    def _merge_source(self, staged: StagedBatch, plan: pl.DataFrame) -> pa.RecordBatchReader:
        """Stream staged rows that need writing (routed to their partition) plus delete markers."""
        schema = staged.schema.append(pa.field(OP, pa.string()))
        upserts = plan.filter(pl.col(OP) != "D")
        deletes = plan.filter(pl.col(OP) == "D")
        ctx = staged.ctx

        def batches():
            if upserts.height:
                for batch in staged.batches():
                    frame = pl.from_arrow(batch)
                    assert isinstance(frame, pl.DataFrame)
                    hit = frame.join(upserts, on=self.pk, how="inner")
                    if not hit.height:
                        continue
                    if self.part:
                        hit = hit.with_columns(pl.col("_route").alias(self.part))
                    yield self._protect(_to_batch(hit, schema))
            if deletes.height:
                frame = deletes.with_columns(
                    pl.lit(ctx.batch_time).cast(pl.Datetime("us", "UTC")).alias("update_timestamp"),
                    pl.lit(ctx.batch_id).alias("batch_id"),
                    pl.lit(DELETED).alias("record_status"),
                )
                if self.part:
                    frame = frame.with_columns(pl.col("_route").alias(self.part))
                yield _to_batch(frame, schema)

        return pa.RecordBatchReader.from_batches(schema, batches())

    def _predicate(self, plan: pl.DataFrame) -> str:
        terms = [f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in self.pk]
        if self.part:
            part = quote_ident(self.part)
            terms.append(f"t.{part} = s.{part}")
            parts = plan.get_column("_route").drop_nulls().unique().sort().to_list()
            values = ", ".join(sql_literal(v) for v in parts)
            null_part = plan.get_column("_route").null_count() > 0
            if values and not null_part:
                terms.append(f"t.{part} IN ({values})")
        terms.append(key_range_sql(f"t.{quote_ident(self.pk[0])}", key_ranges(plan.get_column(self.pk[0]))))
        return " AND ".join(terms)

    def _commit_properties(
        self, dt: DeltaTable | None, staged: StagedBatch, chunk: int = 0, chunks: int = 1
    ) -> CommitProperties:
        meta = commit_metadata(staged.ctx.batch_id, staged.window, staged.watermark, chunk, chunks,
                               staged.metadata, staged.final_metadata, staged.ctx.batch_time)
        return commit_properties(dt, self.contract, meta)

    def merge(self, staged: StagedBatch, on_commit: Callable[[CommitInfo], None] | None = None
              ) -> MergeResult:
        """Apply §2.3 to the table; retries commit conflicts after re-reading the table.

        A load of more than ``chunk_rows`` rows commits in chunks (``on_commit`` is told after
        each). A load killed between chunks keeps what it committed: the next load re-plans
        against the table, so those rows are unchanged and are not written again.
        """
        started = time.perf_counter()
        self._on_commit = on_commit
        self._latest = self.final = self.unique = None
        created = False
        self.pii = require_hook(self.contract, staged.pii, "write") if self.contract.encrypted_columns \
            else None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            dt = self._current(staged) if attempt == 1 else self.storage.open(self.contract.bronze_table)
            commits = CommitLog.current(dt, staged.commits)  # staging's, if nothing committed since
            if commits is not staged.commits:  # staging refused a table with vectors; this is newer
                refuse_deletion_vectors(dt, self.contract.bronze_table, "load")
            # the batch's commits come after staging's read: only a later version can hold them
            if dt is not None and commits is not staged.commits \
                    and staged.ctx.batch_id in commits.committed_batch_ids():
                log.info("%s: batch %s already committed", self.uri, staged.ctx.batch_id)
                result = MergeResult(self.uri, staged.rows, committed=True)
                break
            if self.history is not None:
                self.history.reopen()  # a retry sees what a concurrent writer committed
            if staged.before_commit is not None:
                staged.before_commit(dt)
            try:
                if dt is not None and self.history is not None:  # history turned on, or a first load killed
                    self.history.seed(staged.ctx.batch_id, staged.ctx.batch_time)
                created = dt is None
                if created and self.history is not None:
                    result = self._create_with_history(staged)
                else:
                    result = self._create(staged) if created else self._merge(dt, staged, commits)
                if self.history is not None:
                    result.history_version = self.history.version
                if dt is not None and not result.committed and staged.commit_always:
                    self._record_position(dt, staged)
                    result.committed, result.commits = True, 1
                break
            except (CommitFailedError, DeltaError) as exc:
                if attempt == MAX_ATTEMPTS or not is_conflict(exc):
                    raise
                log.warning("%s: commit conflict (%s); re-reading and retrying", self.uri, exc)
                time.sleep(0.2 * 2**attempt)
        # a load that committed nothing leaves the table as it opened it, one that committed
        # chunks as it was opened after the last of them: no other open
        final = self.final = dt if not result.commits else \
            self._latest or self.storage.open(self.contract.bronze_table)
        if final is not None:
            result.version = final.version()
            if created and result.commits == result.version + 1:  # every version one of its commits
                self.unique = UniqueWrite(final.metadata().id, result.version, staged.rows, staged.reader)
            result.size_bytes, result.num_files = table_stats(final)
            result.engine_metrics = created_metrics(staged.rows, result.num_files) if self.unique else \
                batch_metrics(final, staged.ctx.batch_id, result.commits)
        result.merge_seconds = round(time.perf_counter() - started, 3)
        if staged.rows:
            result.avg_quality_score = round(staged.score_sum / staged.rows, 2)
        return result

    def _current(self, staged: StagedBatch) -> DeltaTable | None:
        """The table at its latest version: the one staging opened, refreshed (one listing on an
        object store, where opening it again reads the log since its checkpoint), else opened.
        None when staging found no table: the load creates it, and a create finding a table made
        since fails (mode ``error``) as a commit conflict, retried as a MERGE against it."""
        if staged.commits is not None and staged.commits.table is None:
            return None
        dt = staged.commits.table if staged.commits is not None else None
        if dt is None:
            return self.storage.open(self.contract.bronze_table)
        dt.update_incremental()
        return dt

    def _record_position(self, dt: DeltaTable, staged: StagedBatch) -> None:
        """A commit without rows that records the batch's metadata (a CDC snapshot's log position
        when the table was already exact)."""
        if ensure_properties(dt):
            dt = self.storage.open(self.contract.bronze_table) or dt
        commit_without_rows(dt, self._commit_properties(dt, staged), self.storage.delta_options)

    def _committed(self, staged: StagedBatch, chunk: int, chunks: int, rows: int,
                   dt: DeltaTable | None = None) -> None:
        """A chunk committed: ``dt`` is the table as the commit left it (delta-rs brings the table
        it merges or writes through up to its commit), else the table is opened."""
        dt = self._latest = dt if dt is not None else self.storage.open(self.contract.bronze_table)
        info = CommitInfo(self.contract.bronze_table, staged.ctx.batch_id, staged.window, chunk, chunks,
                          rows, dt.version() if dt is not None else -1)
        log.info("%s: committed chunk %d/%d of batch %s (%d rows)", self.uri, chunk + 1, chunks,
                 staged.ctx.batch_id, rows)
        if self._on_commit is not None:
            self._on_commit(info)

    def _prepare_keys(self, subjects: pl.Series) -> None:
        """Ready the PII hook for every subject about to be written (e.g. their data keys)."""
        if self.pii is not None:
            self.pii.prepare(subjects.drop_nulls().unique().to_list())

    def _protect(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The PII columns protected by the hook (hash and score were computed on plaintext)."""
        return batch if self.pii is None else self.pii.protect(batch)

    def _chunk_slices(self, staged: StagedBatch, chunk: int, layout: StagedLayout
                      ) -> Iterator[pa.RecordBatch]:
        """The staged rows ``[chunk * chunk_rows, (chunk + 1) * chunk_rows)``, slice by slice: of
        the batches in key order when the layout has one (:class:`~.staged_layout.KeyOrder`),
        else in staged order (batches outside the chunk are not read)."""
        lo, hi, offset = chunk * self.chunk_rows, (chunk + 1) * self.chunk_rows, 0
        for index in layout.order if layout.order is not None else range(len(layout.sizes)):
            end = offset + layout.sizes[index]
            if end > lo and offset < hi:
                yield staged.batch(index).slice(max(lo - offset, 0), min(hi, end) - max(lo, offset))
            offset = end
            if offset >= hi:
                break

    def _chunk_by_key(self, staged: StagedBatch, chunk: int, layout: StagedLayout) -> ChunkRows:
        """The rows of chunk ``chunk`` in key order: those whose key lies between the chunk's key
        bounds (:class:`~.staged_layout.KeySample`) or, without bounds (a composite key), the
        chunk's run of staged rows (:meth:`_chunk_slices`). Only keys and positions are held."""
        if layout.bounds is None:
            pieces = list(self._chunk_slices(staged, chunk, layout))
            table = pa.Table.from_batches(pieces, schema=staged_schema(staged.schema))
            by_key = pc.sort_indices(table.select(self.pk), sort_keys=[(k, "ascending") for k in self.pk])
            return ChunkRows(pieces, np.cumsum([0] + [p.num_rows for p in pieces[:-1]]), by_key.to_numpy())
        indexes, starts, positions, keys, at = [], [], [], [], 0
        for index, size in enumerate(layout.sizes):
            column = staged.batch(index).column(self.pk[0]) if size else None
            if column is None:
                continue
            rows = np.flatnonzero(np.searchsorted(layout.bounds, column.to_numpy(zero_copy_only=False),
                                                  side="right") == chunk)
            if rows.size:
                indexes.append(index)
                starts.append(at)
                positions.append(rows + at)
                keys.append(column.take(pa.array(rows)))
                at += size
        if not indexes:
            return ChunkRows(StagedBatches(staged, []), np.zeros(0, np.int64), np.zeros(0, np.int64))
        by_key = pc.sort_indices(pa.chunked_array(keys)).to_numpy()
        return ChunkRows(StagedBatches(staged, indexes), np.array(starts), np.concatenate(positions)[by_key])

    def _staged_chunk(self, staged: StagedBatch, chunk: int, layout: StagedLayout,
                      rows: ChunkRows | None = None) -> Iterator[pa.RecordBatch]:
        """The rows of chunk ``chunk`` in primary key order, so the files of a snapshot get
        (nearly) disjoint key ranges and a later MERGE's key-range predicate skips the files its
        keys cannot be in: the batches in key order when they are (one batch at a time is read),
        else the chunk's ``rows`` (:meth:`_chunk_by_key`) gathered one output batch at a time."""
        if layout.order is not None:
            for piece in slices(self._chunk_slices(staged, chunk, layout), WRITE_BATCH_ROWS):
                yield self._protect(staged.complete(piece))
            return
        if rows is None:
            rows = self._chunk_by_key(staged, chunk, layout)
        for start in range(0, len(rows.rows), WRITE_BATCH_ROWS):
            yield self._protect(staged.complete(rows.gather(start, start + WRITE_BATCH_ROWS)))

    def _chunk_subjects(self, staged: StagedBatch, chunk: int, layout: StagedLayout,
                        rows: ChunkRows | None) -> pl.Series:
        """The data subjects of chunk ``chunk``'s rows."""
        subject = self.contract.data_subject
        assert subject is not None
        if rows is None:
            column = pa.chunked_array([s.column(subject) for s in self._chunk_slices(staged, chunk, layout)])
        elif not len(rows.rows):
            return pl.Series(subject, [])
        else:
            column = rows.gather(0, len(rows.rows), [subject]).column(0)
        series = pl.from_arrow(column)
        assert isinstance(series, pl.Series)
        return series

    def _create_with_history(self, staged: StagedBatch) -> MergeResult:
        """:meth:`_create`, then the history table seeded from the rows as written (PII protected),
        spilled to the staging folder as they are written, not held in memory (read back from
        the table instead if a chunk had landed before)."""
        assert self.history is not None
        spill = SpillFile(staged.schema, f"{self.contract.bronze_table}-history-seed",
                          self.storage.settings.stage_dir)
        try:
            result = self._create(staged, spill)
            whole = spill.rows == staged.rows
            self.history.seed(staged.ctx.batch_id, staged.ctx.batch_time,
                              written=spill.reader if whole else None, current=self._latest)
        finally:
            spill.cleanup()
        result.history_versions = staged.rows
        return result

    def _create(self, staged: StagedBatch, written: SpillFile | None = None) -> MergeResult:
        """Write the staged rows as the table's first version (``written`` gets the batches as
        written, PII protected, for the history table's seed)."""
        result = MergeResult(self.uri, staged.rows, inserted=staged.rows, committed=True)
        layout = StagedLayout([], [], [])
        if staged.rows:  # one streamed read of the narrow columns (key, partition), batch by batch
            columns = list(dict.fromkeys(self.pk + ([self.part] if self.part else [])))
            reader = staged.reader()
            narrow = pa.RecordBatchReader.from_batches(pa.schema([reader.schema.field(c) for c in columns]),
                                                       (b.select(columns) for b in reader))
            layout = staged_layout(narrow, self.pk, self.part, staged.rows, self.chunk_rows)
            if layout.order is None:  # sorted, disjoint batches cannot repeat a key
                self.planner.refuse_duplicates(self.planner.staged_duplicates(staged))
            if self.part:
                result.partitions = [d.isoformat() for d in layout.partitions]
        chunks = layout.chunks(self.chunk_rows)
        file_bytes = target_file_bytes(self.contract, self.storage.settings)
        done = 0  # the rows committed so far (a key-ranged chunk's are its keys', not chunk_rows)
        for chunk in range(chunks):
            stop_point()
            dt = self._latest if chunk else None  # as the previous chunk's commit left it
            rows = self._chunk_by_key(staged, chunk, layout) if layout.bounds is not None else None
            done = done + len(rows.rows) if rows is not None else \
                min(staged.rows, (chunk + 1) * self.chunk_rows)
            if dt is not None and chunk in CommitLog.read(dt).committed_chunks(staged.ctx.batch_id):
                continue  # landed before a commit error: never append it twice
            if self.pii is not None and self.contract.data_subject and staged.rows:
                # the keys of this chunk's subjects only: memory bounded by a chunk, not the table
                self._prepare_keys(self._chunk_subjects(staged, chunk, layout, rows))
            batches = self._staged_chunk(staged, chunk, layout, rows)
            if written is not None:
                batches = written.tee(batches)
            # read (and protect) the next staged batch on a thread of its own while delta-rs
            # encodes the previous one: the GIL-bound PII encryption overlaps the Parquet writing
            batches = read_ahead(partial(iter, batches), depth=1,
                                 name=f"{self.contract.bronze_table}-create")
            try:
                write_deltalake(
                    dt if dt is not None else self.uri,  # a table written through is brought up to date
                    pa.RecordBatchReader.from_batches(staged.schema, batches),
                    partition_by=[self.part] if self.part else None,
                    mode="append" if chunk else "error",
                    storage_options=self.storage.delta_options,
                    target_file_size=file_bytes,
                    configuration=None if chunk else {
                        "delta.targetFileSize": str(file_bytes), **BRONZE_PROPERTIES},
                    writer_properties=writer_properties(self.contract, self.storage.settings),
                    commit_properties=self._commit_properties(dt, staged, chunk, chunks),
                )
            except BaseException:
                batches.close()  # its thread stops (before a new table's files are removed)
                if not chunk:
                    discard_uncommitted(self.uri)
                raise
            result.commits += 1
            self._committed(staged, chunk, chunks, done, dt)
        return result

    def _merge(self, dt: DeltaTable, staged: StagedBatch, commits: CommitLog) -> MergeResult:
        target_columns = {f.name for f in dt.schema().to_arrow()}
        backfill = staged.rewrite_unchanged or any(n not in target_columns for n in staged.schema.names)
        plan, result = self.planner.plan(dt, staged, backfill_unchanged=backfill,
                                         resumed=commits.interrupted_batch())
        if not plan.height:
            return result
        if result.rehashed_v1:
            staged.metadata[REHASHED_KEY] = str(result.rehashed_v1)
            log.info("%s: %d unchanged rows re-hashed from record_hash v1 to v2", self.uri,
                     result.rehashed_v1)
        if ensure_properties(dt):  # before the MERGE, so its changes are in the feed
            dt = self.storage.open(self.contract.bronze_table) or dt
        plan = plan.sort(self.pk)  # chunks are key ranges, so each MERGE predicate stays narrow
        if self.pii is not None:  # the data subject is the key of every PII table we have
            self._prepare_keys(plan.filter(pl.col(OP) != "D").get_column(self._subject_in_plan()))
        chunks = max(1, math.ceil(plan.height / self.chunk_rows))
        for chunk in range(chunks):
            stop_point()
            piece = plan.slice(chunk * self.chunk_rows, self.chunk_rows)
            if chunk:  # as the previous chunk's commit left it
                dt = self._latest or dt
            source = self._merge_source(staged, piece)
            if self.history is not None and adds_versions(piece.get_column(OP).unique()):
                batches = list(source)  # protected once, written to both tables (history first)
                result.history_versions += self.history.write(
                    batches, dt, staged.ctx.batch_id, staged.ctx.batch_time, chunk, chunks)
                source = pa.RecordBatchReader.from_batches(source.schema, batches)
            self._merge_piece(dt, staged, piece, chunk, chunks, source)
            result.commits += 1
            self._committed(staged, chunk, chunks, min(plan.height, (chunk + 1) * self.chunk_rows), dt)
        result.committed = True
        return result

    def _subject_in_plan(self) -> str:
        subject = self.contract.data_subject
        if subject not in self.pk:
            raise ValueError(f"{self.contract.bronze_table}: the data subject {subject} must be the "
                             f"primary key to encrypt during a MERGE")
        return str(subject)

    def _merge_piece(self, dt: DeltaTable, staged: StagedBatch, plan: pl.DataFrame, chunk: int,
                     chunks: int, source: pa.RecordBatchReader) -> None:
        extras = [n for n in staged.schema.names if n not in self.schema.names]
        evolve = sorted(set(extras) - {f.name for f in dt.schema().to_arrow()})
        source_cols = self.contract.column_names + extras
        update_cols = [*source_cols, "record_hash", "data_quality_score", "batch_id", "update_timestamp"]
        # quoted: a source column may be mixed-case or hold spaces ("MixedCase", "with space")
        updates = {quote_ident(c): f"s.{quote_ident(c)}" for c in update_cols}
        updates[quote_ident("record_status")] = f"'{ACTIVE}'"
        inserts = {quote_ident(c): f"s.{quote_ident(c)}" for c in staged.schema.names}
        merger = (
            dt.merge(
                source,
                predicate=self._predicate(plan),
                source_alias="s",
                target_alias="t",
                streamed_exec=True,
                merge_schema=bool(evolve),
                writer_properties=writer_properties(self.contract, self.storage.settings),
                commit_properties=self._commit_properties(dt, staged, chunk, chunks),
            )
            .when_matched_update(updates, predicate=f"s.{OP} = 'U' AND t.record_status <> '{FORGOTTEN}'")
            .when_matched_update({"record_hash": "s.record_hash"}, predicate=f"s.{OP} = 'H'")
            .when_matched_update(
                {"record_status": f"'{DELETED}'", "update_timestamp": "s.update_timestamp",
                 "batch_id": "s.batch_id"},
                predicate=f"s.{OP} = 'D' AND t.record_status = '{ACTIVE}'",
            )
            .when_not_matched_insert(inserts, predicate=f"s.{OP} = 'I'")
        )
        with _merge_slots:  # waits while MERGE_SLOTS others run
            stop_point()
            merger.execute()


@dataclass(frozen=True)
class CommitInfo:
    """One committed chunk of a batch (what ``bz_checkpoints`` records)."""

    table: str
    batch_id: str
    window: str
    chunk: int
    chunks: int
    rows_committed: int
    delta_version: int

    @property
    def complete(self) -> bool:
        return self.chunk == self.chunks - 1


class StagedBatches(Sequence[pa.RecordBatch]):
    """The staged batches ``indexes`` of a staging file, each mapped when taken from and
    released with the batch taken (the pages a gather touches are not held for the chunk)."""

    def __init__(self, staged: StagedBatch, indexes: list[int], columns: list[str] | None = None):
        self.staged, self.indexes, self.columns = staged, indexes, columns

    def __len__(self) -> int:
        return len(self.indexes)

    def __getitem__(self, i):  # type: ignore[override]
        batch = self.staged.batch(self.indexes[i])
        return batch if self.columns is None else batch.select(self.columns)

    def narrow(self, columns: list[str]) -> StagedBatches:
        return StagedBatches(self.staged, self.indexes, columns)


@dataclass
class ChunkRows:
    """A commit chunk's rows in key order: ``rows`` are positions in ``pieces`` end to end
    (``starts``: each piece's first position)."""

    pieces: Sequence[pa.RecordBatch]
    starts: np.ndarray
    rows: np.ndarray

    def gather(self, start: int, stop: int, columns: list[str] | None = None) -> pa.RecordBatch:
        """Rows ``[start, stop)`` of the chunk in key order (only ``columns`` when given)."""
        pieces = self.pieces
        if columns is not None:
            pieces = (pieces.narrow(columns) if isinstance(pieces, StagedBatches)
                      else [p.select(columns) for p in pieces])
        return gather(pieces, self.starts, self.rows[start:stop])


def gather(chunks: Sequence[pa.RecordBatch], starts: np.ndarray, rows: np.ndarray) -> pa.RecordBatch:
    """The rows ``rows`` (positions in ``chunks`` end to end; ``starts``: each chunk's first
    position) in that order, taken chunk by chunk (``Table.take`` concatenates every chunk of the
    table first, on each call)."""
    rows = rows.astype(np.int64)  # sort indices are uint64: less an int64 start they turn float
    which = np.searchsorted(starts, rows, side="right") - 1
    grouped = np.argsort(which, kind="stable")  # the positions of ``rows``, chunk by chunk
    bounds = np.flatnonzero(np.diff(which[grouped])) + 1
    parts = [chunks[which[group[0]]].take(pa.array(rows[group] - starts[which[group[0]]]))
             for group in np.split(grouped, bounds)]
    taken = parts[0] if len(parts) == 1 else pa.Table.from_batches(parts).combine_chunks().to_batches()[0]
    if len(parts) == 1 and bool(np.all(grouped[1:] > grouped[:-1])):
        return taken  # one chunk, already in order
    return taken.take(pa.array(np.argsort(grouped)))


def _to_batch(frame: pl.DataFrame, schema: pa.Schema) -> pa.RecordBatch:
    present = set(frame.columns)
    cols = []
    for f in schema:
        if f.name in present:
            cols.append(frame.get_column(f.name).to_arrow().cast(f.type))
        else:
            cols.append(pa.nulls(frame.height, f.type))
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def discard_uncommitted(uri: str) -> None:
    """Remove what a failed first write left at a local ``uri`` (data files, an empty
    ``_delta_log``) when no commit landed, so no half-created table stays behind. Object-store
    roots keep their orphan files until the table exists and VACUUM removes them."""
    path = Path(local_path(uri))
    if "://" in uri.removeprefix("file://") or not path.is_dir():
        return
    if not any((path / "_delta_log").glob("*.json")):
        shutil.rmtree(path, ignore_errors=True)

