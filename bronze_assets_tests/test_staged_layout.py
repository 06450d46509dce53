"""A new table's staged layout, read batch by batch (:mod:`bronze_assets.lib.delta.staged_layout`)."""

from __future__ import annotations

from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from bronze_assets.lib.delta.staged_layout import staged_layout

D1, D2, D3 = date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)


def _reader(*batches: dict[str, list]) -> pa.RecordBatchReader:
    schema = pa.schema([("k", pa.int64()), ("k2", pa.string()), ("day", pa.date32())])
    return pa.RecordBatchReader.from_batches(
        schema, [pa.RecordBatch.from_pydict(b, schema=schema) for b in batches])


def _batch(keys: list[int], days: list[date | None]) -> dict[str, list]:
    return {"k": keys, "k2": [str(k) for k in keys], "day": days}


def test_sorted_disjoint_batches_are_ordered_by_their_key_ranges() -> None:
    layout = staged_layout(_reader(_batch([7, 8, 9], [D2, D2, None]), _batch([], []),
                                   _batch([1, 2, 5], [D3, D1, D3])), ["k"], "day")
    assert layout.sizes == [3, 0, 3]
    assert layout.order == [2, 0], "the empty batch holds no rows to write"
    assert layout.partitions == [D1, D2, D3], "distinct, sorted, without NULL"


def test_rows_that_need_a_sort_have_no_order() -> None:
    unsorted = _reader(_batch([1, 3, 2], [D1] * 3), _batch([4, 5], [D1] * 2))
    assert staged_layout(unsorted, ["k"], None).order is None
    overlapping = _reader(_batch([1, 5], [D1] * 2), _batch([5, 6], [D1] * 2))
    assert staged_layout(overlapping, ["k"], None).order is None, "a key may repeat across them"
    repeated = _reader(_batch([1, 1, 2], [D1] * 3))
    assert staged_layout(repeated, ["k"], None).order is None
    composite = _reader(_batch([1, 2], [D1] * 2))
    layout = staged_layout(composite, ["k", "k2"], None)
    assert (layout.order, layout.sizes, layout.partitions) == (None, [2], [])


def test_gather_takes_rows_across_chunks_in_the_given_order() -> None:
    import numpy as np

    from bronze_assets.lib.delta.merger import gather

    rng = np.random.default_rng(7)
    sizes = [5, 0, 9, 1, 12]
    keys = rng.permutation(sum(sizes))
    chunks, at = [], 0
    for n in sizes:  # a chunk may be empty, or a slice of a larger batch
        values = keys[at:at + n + 2]
        whole = pa.RecordBatch.from_pydict({"k": values, "s": [str(k) for k in values]})
        chunks.append(whole.slice(0, n))
        at += n
    table = pa.Table.from_batches(chunks)
    starts = np.cumsum([0, *sizes[:-1]])
    by_key = pc.sort_indices(table.column("k")).to_numpy()  # uint64, as the create sorts
    for rows in (by_key, np.argsort(keys), rng.permutation(len(keys))[:11], np.arange(3), np.array([14, 6])):
        assert gather(chunks, starts, rows).to_pydict() == table.take(pa.array(rows)).to_pydict()
