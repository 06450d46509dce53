"""Integer keys as bitmaps over their range, for the key and referential checks: where the keys
are dense enough (as generated keys are), telling whether a value is among them is one array
index instead of a hash probe, and no hash table of every key is built."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SLOTS_PER_KEY = 8  # a bitmap is used while the range holds at most this many slots per key
MIN_SLOTS = 1 << 20  # ... or at most this many (1 MB), however few the keys


def dense(low: int, high: int, keys: int) -> bool:
    """Whether a bitmap of ``low..high`` is small enough for ``keys`` keys."""
    return high - low + 1 <= max(SLOTS_PER_KEY * keys, MIN_SLOTS)


def _integers(values: pa.Array) -> np.ndarray:
    """Signed integer ``values`` without NULLs as int64 (slots are offsets from the lowest)."""
    return values.to_numpy().astype(np.int64, copy=False)


class KeySet:
    """The keys of a parent table (NULLs left out): :meth:`missing` gives the values not among
    them. Integer keys in a dense range are a bitmap, any other keys a hash set (``is_in``)."""

    def __init__(self, keys: pa.Array) -> None:
        keys = pc.drop_null(keys)
        self.type = keys.type
        self.low: int | None = None
        if pa.types.is_signed_integer(keys.type) and len(keys):
            ints = _integers(keys)
            low, high = int(ints.min()), int(ints.max())
            if dense(low, high, len(ints)):
                self.low, self.high = low, high
                self.present = np.zeros(high - low + 1, dtype=bool)
                self.present[ints - low] = True
                return
        self.values = pc.unique(keys)

    def missing(self, values: pa.Array) -> pa.Array:
        """The ``values`` (no NULLs, of the keys' type) that are not keys of the set."""
        if self.low is None:
            return pc.filter(values, pc.invert(pc.is_in(values, value_set=self.values)))
        ints = _integers(values)
        inside = (ints >= self.low) & (ints <= self.high)
        found = np.zeros(len(ints), dtype=bool)
        found[inside] = self.present[ints[inside] - self.low]
        return values.filter(pa.array(~found))


def unique_within(batches: Iterable[pa.Array], low: int, high: int) -> tuple[int, bool] | None:
    """(values, whether every value occurs once) of integer ``batches`` whose values lie in
    ``low..high`` (the column's bounds), marked in a bitmap of that range; None when a value is
    NULL or outside the bounds (the caller counts another way)."""
    seen = np.zeros(high - low + 1, dtype=bool)
    rows = 0
    for values in batches:
        if values.null_count:
            return None
        if not len(values):
            continue
        ints = _integers(values)
        if int(ints.min()) < low or int(ints.max()) > high:
            return None
        slots = ints - low
        rows += len(slots)
        ordered = np.sort(slots)
        if seen[slots].any() or bool((ordered[1:] == ordered[:-1]).any()):
            return rows, False
        seen[slots] = True
    return rows, True
