"""Stage extracted, enriched batches in a local Arrow IPC file so memory stays bounded."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.merge_result import UniqueWrite
from bronze_assets.lib.delta.protection import PiiHook
from bronze_assets.lib.delta.staged_file import slices, staged_batch, staged_reader
from bronze_assets.lib.enrich.metadata import BatchContext, complete
from bronze_assets.lib.source.schema import SchemaDrift


def score_sum(histogram: np.ndarray) -> int:
    """The sum of the per-record scores counted in ``histogram`` (rows per score 0..100)."""
    return int(np.dot(histogram, np.arange(histogram.size)))


def score_percentile(histogram: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0–100, lower value) of the per-record scores in ``histogram``."""
    cumulative = np.cumsum(histogram)
    rank = max(1, int(np.ceil(q / 100 * cumulative[-1])))
    return float(np.searchsorted(cumulative, rank))


@dataclass
class StagedBatch:
    """The rows one materialization read, staged on local disk, plus what the merge needs."""

    contract: Contract
    ctx: BatchContext
    path: Path
    schema: pa.Schema
    rows: int
    score_histogram: np.ndarray  # rows per data_quality_score 0..100
    source_keys_path: Path | None = None  # every source key (key sweep); None = no sweep
    keys_are_rows: bool = False  # a full load: its staged rows are the source's key set
    watermark: datetime | None = None
    window: str = "full table"
    extract_seconds: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)
    schema_drift: SchemaDrift | None = None
    keep_after_merge: bool = False  # set while a check still reads the staged files
    committed: bool | None = None  # whether its MERGE committed (None: not merged yet)
    history_version: int | None = None  # its history table's version as the MERGE left it (if any)
    merged_table: DeltaTable | None = None  # the table as its MERGE left it (the checks read it: no open)
    unique_write: UniqueWrite | None = None  # its MERGE created the table from keys it found distinct
    legacy_hashes: pa.Table | None = None  # key + v1 record_hash, only while a v1 table is migrated
    pii: PiiHook | None = None  # protects the PII columns as the rows are written
    deleted_keys: pa.Table | None = None  # keys the source no longer has (log-based CDC): soft-deleted
    final_metadata: dict[str, str] = field(default_factory=dict)  # on the batch's last commit only
    commit_always: bool = False  # commit the metadata even when no row changes (a CDC snapshot)
    rewrite_unchanged: bool = False  # rewrite staged keys even where the hash is equal (a repair)
    commits: CommitLog | None = None  # the table's commit log read when staging (the MERGE reuses it)
    # called with the table as each commit attempt opens it, before it writes (landing files: drop
    # the files another run landed since the listing)
    before_commit: Callable[[DeltaTable | None], None] | None = None

    @property
    def score_sum(self) -> int:
        return score_sum(self.score_histogram)

    @property
    def unreadable_records(self) -> int:
        """Rows with values bronze could not store (listed in ``bz_quarantine``)."""
        return int(self.metadata.get("bronze.unreadable_records") or 0)

    def reader(self) -> pa.RecordBatchReader:
        """Stream the staged rows back as staged, without the per-load constant columns
        (:meth:`complete` adds them); see :func:`staged_reader`."""
        return staged_reader(self.path)

    def batch(self, index: int) -> pa.RecordBatch:
        """The ``index``-th staged batch; see :func:`staged_batch`."""
        return staged_batch(self.path, index)

    def complete(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """A staged batch (or a slice of one) with every column of :attr:`schema`."""
        return complete(batch, self.schema, self.ctx)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The staged rows with every bronze column."""
        for batch in self.reader():
            yield self.complete(batch)

    def cleanup(self) -> None:
        for p in (self.path, self.source_keys_path):
            if p is not None and p.exists():
                p.unlink()


STALE_AFTER_SECONDS = 24 * 3600
SPILL_BATCH_ROWS = 65_536  # rows per batch of a spill file: its reader maps one batch at a time


def stage_dir(base: Path) -> Path:
    """Directory for staged batches under ``base`` (``Settings.stage_dir``: ``$BRONZE_STAGE_DIR``
    or the system temp dir).

    Files a killed run left behind are removed once they are a day old.
    """
    path = base / "bronze_stage"
    path.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - STALE_AFTER_SECONDS
    for stale in path.glob("bz_*.arrow*"):
        with contextlib.suppress(OSError):
            if stale.stat().st_mtime < cutoff:
                stale.unlink()
    return path


def write_stream(batches: Iterable[pa.RecordBatch], schema: pa.Schema, name: str, base: Path
                 ) -> tuple[Path, int]:
    """Write ``batches`` to a new Arrow IPC file (random access by batch) in the staging folder
    under ``base`` (:func:`stage_dir`); returns its path and the row count."""
    fd, raw = tempfile.mkstemp(prefix=f"{name}-", suffix=".arrow", dir=stage_dir(base))
    os.close(fd)
    rows = 0
    with pa.OSFile(raw, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return Path(raw), rows


class SpillFile:
    """Batches written to an Arrow IPC file in the staging folder under ``base`` as they pass
    (:meth:`tee`), read back later as a stream (:meth:`reader`): rows a later step needs again
    are held on disk, not in memory, so memory does not grow with the rows passed."""

    def __init__(self, schema: pa.Schema, name: str, base: Path) -> None:
        fd, raw = tempfile.mkstemp(prefix=f"{name}-", suffix=".arrow", dir=stage_dir(base))
        os.close(fd)
        self.path, self.schema, self.rows = Path(raw), schema, 0
        self._sink: pa.NativeFile | None = pa.OSFile(raw, "wb")
        self._writer: pa.ipc.RecordBatchFileWriter | None = pa.ipc.new_file(self._sink, schema)

    def tee(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """``batches``, each also written to the file."""
        for batch in batches:
            assert self._writer is not None, "the spill file is closed"
            for piece in slices([batch], SPILL_BATCH_ROWS):  # read back, a batch is mapped whole
                self._writer.write_batch(piece)
            self.rows += batch.num_rows
            yield batch

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._sink is not None:
            self._sink.close()
        self._writer = self._sink = None

    def reader(self) -> pa.RecordBatchReader:
        """The rows written so far, batch by batch (the file is closed for writing)."""
        self._close()
        return staged_reader(self.path)

    def cleanup(self) -> None:
        self._close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
