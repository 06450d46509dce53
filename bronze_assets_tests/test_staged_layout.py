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


def test_rows_that_need_a_sort_get_key_bounds_of_about_equal_commits() -> None:
    import numpy as np

    keys = np.random.default_rng(3).permutation(10_000)
    batches = [_batch(keys[i:i + 1_000].tolist(), [D1] * 1_000) for i in range(0, 10_000, 1_000)]
    layout = staged_layout(_reader(*batches), ["k"], None, 10_000, 2_500)
    assert layout.order is None and layout.bounds is not None and layout.chunks(2_500) == 4
    assert list(layout.bounds) == sorted(set(layout.bounds))
    per_chunk = np.bincount(np.searchsorted(layout.bounds, keys, side="right"))
    assert per_chunk.sum() == 10_000 and all(abs(n - 2_500) < 250 for n in per_chunk), per_chunk
    strings = staged_layout(_reader(*[{**b, "k": b["k"]} for b in batches]), ["k2"], None, 10_000, 2_500)
    assert strings.bounds is not None and strings.bounds.dtype == object and len(strings.bounds) == 3
    repeated = staged_layout(_reader(_batch([5] * 8, [D1] * 8), _batch([1, 9], [D1] * 2)), ["k"], None, 10, 3)
    assert list(repeated.bounds) == [5], "a key repeated across bounds is in one commit, none empty"


def test_ordered_composite_or_single_commit_rows_have_no_key_bounds() -> None:
    ordered = staged_layout(_reader(_batch([1, 2], [D1] * 2), _batch([3, 4], [D1] * 2)), ["k"], None, 4, 1)
    assert (ordered.order, ordered.bounds, ordered.chunks(1)) == ([0, 1], None, 4)
    shuffled = _reader(_batch([2, 1], [D1] * 2), _batch([4, 3], [D1] * 2))
    assert staged_layout(shuffled, ["k", "k2"], None, 4, 1).bounds is None, "composite: runs of staged rows"
    assert staged_layout(_reader(_batch([2, 1], [D1] * 2)), ["k"], None, 2, 5).chunks(5) == 1


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
