"""What a new table's create learns from its staged rows before writing them, in one streamed
pass over their narrow columns (the key and the partition value), one staged batch at a time: its
memory is a batch's, not the table's. Each batch's size, whether the batches are sorted, disjoint key
ranges (then they are written in that order without a sort and cannot repeat a key), the key
bounds of its commit chunks when they are not, and the partition values they hold."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class StagedLayout:
    """The staged batches' row counts, their key order (see :class:`KeyOrder`), the sorted
    distinct partition values of their rows (none for an unpartitioned table) and, when the rows
    need a sort, the key ``bounds`` of the commit chunks (see :class:`KeySample`; None: chunks
    are runs of rows in staged order)."""

    sizes: list[int]
    order: list[int] | None
    partitions: list[date]
    bounds: np.ndarray | None = None

    def chunks(self, chunk_rows: int) -> int:
        """How many commits the rows are written in."""
        if self.bounds is not None:
            return len(self.bounds) + 1
        return max(1, math.ceil(sum(self.sizes) / chunk_rows))


class KeyOrder:
    """The indexes of staged batches in key order, fed batch by batch (:meth:`add`): known when
    each batch is sorted by a single-column key and their key ranges do not overlap (a heap read
    block range by block range in key order: the common case for a snapshot); None when the rows
    need a real sort. Holds two keys a batch."""

    def __init__(self, pk: list[str]):
        self.column = pk[0] if len(pk) == 1 else None
        self.spans: list[tuple[object, object, int]] | None = [] if self.column is not None else None

    def add(self, index: int, batch: pa.RecordBatch) -> None:
        if self.spans is None or self.column is None:
            return
        keys = batch.column(self.column).to_numpy(zero_copy_only=False)
        if keys.size > 1 and not bool(np.all(keys[1:] > keys[:-1])):
            self.spans = None
        elif keys.size:
            self.spans.append((keys[0], keys[-1], index))

    def order(self) -> list[int] | None:
        if self.spans is None:
            return None
        spans = sorted(self.spans)
        if any(prev[1] >= nxt[0] for prev, nxt in itertools.pairwise(spans)):
            return None
        return [index for _, _, index in spans]


class KeySample:
    """Every ``stride``-th key of a single-column key (in staged order, across batches), from
    which the key bounds of ``chunks`` commits of about equal rows are drawn (:meth:`bounds`): the
    commits of rows that need a sort then hold disjoint key ranges, as a sorted heap's do, so a
    later MERGE's key-range predicate skips the files its keys cannot be in."""

    def __init__(self, pk: list[str], rows: int, chunk_rows: int):
        self.column = pk[0] if len(pk) == 1 else None
        self.chunks = max(1, math.ceil(rows / chunk_rows))
        self.stride = max(1, chunk_rows // SAMPLE_PER_CHUNK)
        self.seen = 0
        self.keys: list[np.ndarray] = []

    def add(self, batch: pa.RecordBatch) -> None:
        if self.column is not None and self.chunks > 1 and batch.num_rows:
            picked = np.arange(-self.seen % self.stride, batch.num_rows, self.stride)
            self.keys.append(batch.column(self.column).take(pa.array(picked)).to_numpy(zero_copy_only=False))
        self.seen += batch.num_rows

    def bounds(self) -> np.ndarray | None:
        """The first key of each commit but the first, ascending and distinct (each commit
        holds at least one sampled key); None for a composite key or a single commit."""
        if self.column is None or self.chunks == 1 or not self.keys:
            return None
        sample = np.sort(np.concatenate(self.keys))
        picks = np.unique(sample[[len(sample) * i // self.chunks for i in range(1, self.chunks)]])
        return picks[picks > sample[0]]


SAMPLE_PER_CHUNK = 1024  # sampled keys per commit chunk: chunk sizes within a few % of equal


def staged_layout(reader: pa.RecordBatchReader, pk: list[str], part: str | None,
                  rows: int = 0, chunk_rows: int = 1) -> StagedLayout:
    """The :class:`StagedLayout` of the staged rows ``reader`` streams (``rows`` in all, written
    ``chunk_rows`` a commit); each batch is released before the next is read: only its key and
    partition columns are touched."""
    order, sample, sizes, partitions = KeyOrder(pk), KeySample(pk, rows, chunk_rows), [], set()
    for index, batch in enumerate(reader):
        sizes.append(batch.num_rows)
        order.add(index, batch)
        sample.add(batch)
        if part is not None:
            partitions.update(pc.unique(batch.column(part)).drop_null().to_pylist())
    ordered = order.order()
    return StagedLayout(sizes, ordered, sorted(partitions), None if ordered is not None else sample.bounds())
