"""Reading a staging file (an Arrow IPC file of staged rows) back, with pyarrow alone: the
validation service reads staged files by path and imports nothing of the load (the source
client, DuckDB, delta-rs: ≈40 MB of its memory)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa


def staged_batch(path: Path, index: int) -> pa.RecordBatch:
    """The ``index``-th batch of a staging file (random access: it is an Arrow IPC file),
    zero-copy from its own memory map, which is unmapped when the batch is released."""
    return pa.ipc.open_file(pa.memory_map(str(path))).get_batch(index)


def staged_reader(path: Path) -> pa.RecordBatchReader:
    """Stream a staging file batch by batch. Each batch is mapped on its own, so memory holds
    the pages of the batches in use, not of every batch a reader has touched."""
    with pa.OSFile(str(path)) as source:  # the footer: schema and batch count
        footer = pa.ipc.open_file(source)
        schema, count = footer.schema, footer.num_record_batches
    return pa.RecordBatchReader.from_batches(schema, (staged_batch(path, i) for i in range(count)))


def slices(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """``batches`` in zero-copy slices of at most ``rows`` rows each."""
    for batch in batches:
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)
