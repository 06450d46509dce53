"""Integer keys as bitmaps (lib/quality/key_sets.py): the same answers as a set of the keys,
whatever the keys' range, type or NULLs, and the key check's duplicates still found."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from bronze_assets.contracts import CONTRACTS
from bronze_assets.lib.delta.storage import OpenedTables, Storage
from bronze_assets.lib.quality.checks import _key_uniqueness
from bronze_assets.lib.quality.key_sets import KeySet, unique_within
from bronze_assets.settings import Settings


@pytest.mark.parametrize("kind", [pa.int16(), pa.int32(), pa.int64()])
@pytest.mark.parametrize("spread", [1, 10**4])  # dense keys (a bitmap) and sparse ones (a hash set)
def test_missing_values_are_those_not_among_the_keys(kind: pa.DataType, spread: int) -> None:
    rng = random.Random(7)
    top = 3_000 if kind == pa.int16() else 3_000 * spread
    keys = [rng.randrange(-top, top) for _ in range(2_000)] + [None]
    values = [rng.randrange(-2 * top, 2 * top) for _ in range(5_000)] + keys[:50]
    key_set = KeySet(pa.array(keys, kind))
    assert (key_set.low is not None) == (spread == 1 or kind == pa.int16())
    missing = key_set.missing(pa.array(values, kind))
    assert missing.type == kind
    present = set(keys)
    assert missing.to_pylist() == [v for v in values if v not in present]


def test_keys_of_other_types_are_looked_up_in_a_set() -> None:
    key_set = KeySet(pa.array(["a", "b", None]))
    assert key_set.low is None
    assert key_set.missing(pa.array(["b", "c", "a", "d"])).to_pylist() == ["c", "d"]
    assert KeySet(pa.array([], pa.int64())).missing(pa.array([1, 2])).to_pylist() == [1, 2]


def test_unique_within_finds_a_repeat_in_a_batch_or_across_batches() -> None:
    def batches(*lists: list[int | None]) -> list[pa.Array]:
        return [pa.array(values, pa.int64()) for values in lists]

    assert unique_within(batches([3, 1], [], [2, 5]), 1, 5) == (4, True)
    assert unique_within(batches([3, 1, 3]), 1, 5) == (3, False)
    assert unique_within(batches([3, 1], [4, 1]), 1, 5)[1] is False
    assert unique_within(batches([3, None]), 1, 5) is None  # NULL: counted another way
    assert unique_within(batches([3, 6]), 1, 5) is None  # outside the bounds: counted another way


@pytest.mark.parametrize("keys", [[1, 2, 3, 2], [1, 10**15, 5, 10**15]])  # dense and sparse keys
def test_key_check_counts_the_duplicates_whichever_way_it_reads(tmp_path, keys: list[int]) -> None:
    settings = Settings.from_env({"BRONZE_ROOT": str(tmp_path)})
    storage = Storage(str(tmp_path), settings=settings)
    contract = CONTRACTS["products"]
    uri = str(tmp_path / contract.bronze_table)
    write_deltalake(uri, pa.table({"product_id": pa.array(keys[:2], pa.int64())}))
    write_deltalake(uri, pa.table({"product_id": pa.array(keys[2:], pa.int64())}), mode="append")
    outcome = _key_uniqueness(contract, OpenedTables(storage).open(contract.bronze_table))
    assert not outcome.passed
    assert outcome.metadata["rows"] == 4 and outcome.metadata["duplicate_rows"] == 2
    assert outcome.metadata["duplicate_keys_sample"] == [{"product_id": keys[1]}]

    unique = [*sorted(set(keys)), max(keys) + 1]
    write_deltalake(uri, pa.table({"product_id": pa.array(unique, pa.int64())}), mode="overwrite")
    outcome = _key_uniqueness(contract, OpenedTables(storage).open(contract.bronze_table))
    assert outcome.passed
    assert outcome.metadata == {"rows": 4, "duplicate_rows": 0, "duplicate_keys_sample": []}
