"""What a new table's create learns from its staged rows before writing them, in one streamed
pass over their narrow columns (the key and the partition value), one staged batch at a time: its
memory is a batch's, not the table's. Each batch's size, whether the batches are sorted, disjoint key
ranges (then they are written in that order without a sort and cannot repeat a key), and the
partition values they hold."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class StagedLayout:
    """The staged batches' row counts, their key order (see :class:`KeyOrder`) and the sorted
    distinct partition values of their rows (none for an unpartitioned table)."""

    sizes: list[int]
    order: list[int] | None
    partitions: list[date]


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


def staged_layout(reader: pa.RecordBatchReader, pk: list[str], part: str | None) -> StagedLayout:
    """The :class:`StagedLayout` of the staged rows ``reader`` streams (each batch is released
    before the next is read: only its key and partition columns are touched)."""
    order, sizes, partitions = KeyOrder(pk), [], set()
    for index, batch in enumerate(reader):
        sizes.append(batch.num_rows)
        order.add(index, batch)
        if part is not None:
            partitions.update(pc.unique(batch.column(part)).drop_null().to_pylist())
    return StagedLayout(sizes, order.order(), sorted(partitions))
