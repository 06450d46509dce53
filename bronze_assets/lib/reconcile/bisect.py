"""Hash bisection (as reladiff does it): both sides return, per key bucket, the row count and the
sum of the rows' 60-bit checksums; only the buckets that differ are split again, until a bucket
is small enough to compare key by key. With nothing wrong, each side is read once and only the
bucket sums cross the wire."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import polars as pl

from bronze_assets.lib.enrich.metadata import ACTIVE, FORGOTTEN
from bronze_assets.lib.reconcile.model import DIFFERS, EXTRA, MISSING, PENDING, Mismatch, TableReconciliation
from bronze_assets.lib.reconcile.source_side import Ranges

if TYPE_CHECKING:
    from bronze_assets.lib.reconcile.memo import Memo

BUCKET_ROWS = 1024  # rows per first-level bucket, aimed at
MAX_BUCKETS = 16_384  # first-level buckets at most
LEAF_ROWS = 4096  # a differing bucket of at most this many rows (either side) is compared key by key
FANOUT = 16  # a larger differing bucket is split into this many


class Side(Protocol):
    """One side of the compare (the source, or bronze on either engine): positions are keys (one
    integer key column) or hash positions (:mod:`~bronze_assets.lib.reconcile.keys`)."""

    def key_range(self) -> tuple[int | None, int | None, int]: ...

    def buckets(self, lo: int, hi: int, width: int) -> dict[int, tuple[int, int]]: ...

    def rows(self, ranges: Ranges) -> pl.DataFrame: ...


class BronzeSide(Side, Protocol):
    """Bronze's side also finds the rows of named keys that :meth:`Side.rows` may miss."""

    def others(self, keys: pl.Series) -> pl.DataFrame: ...


def _merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def differing_ranges(source: Side, bronze: Side, lo: int, hi: int, rows: int,
                     report: TableReconciliation, memo: Memo | None = None) -> list[tuple[int, int]]:
    """The key ranges (inclusive) of the leaf buckets whose count or checksum differ. ``rows`` (an
    estimate) sizes the first level, whose exact counts are the report's rows on either side.
    Both sides compute their buckets at once (the source's server and bronze's reader). With a
    ``memo`` the first level hashes only the buckets its state does not prove equal."""
    first = max(1, min(MAX_BUCKETS, -(-rows // BUCKET_ROWS)))
    width = max(1, -(-(hi - lo + 1) // first))
    if memo is not None:
        lo, width = memo.geometry(lo, hi, width)
    report.buckets = -(-(hi - lo + 1) // width)
    leaves: list[tuple[int, int]] = []
    stack: list[tuple[int, int, int]] = []
    with ThreadPoolExecutor(1, thread_name_prefix="reconcile-bronze") as pool:
        if memo is not None:
            ours, theirs = memo.first_level(source, bronze, lo, hi, width, pool, report)
        else:
            pending = pool.submit(bronze.buckets, lo, hi, width)
            ours, theirs = source.buckets(lo, hi, width), pending.result()
            report.buckets_hashed = len(set(ours) | set(theirs))
        report.source_rows = sum(n for n, _ in ours.values())
        report.bronze_active_rows = sum(n for n, _ in theirs.values())
        _split(ours, theirs, lo, hi, width, report, stack, leaves)
        while stack:
            a, b, w = stack.pop()
            pending = pool.submit(bronze.buckets, a, b, w)
            ours, theirs = source.buckets(a, b, w), pending.result()
            _split(ours, theirs, a, b, w, report, stack, leaves)
    report.buckets_differing = len(leaves)
    return _merged(leaves)


Buckets = dict[int, tuple[int, int]]


def _split(ours: Buckets, theirs: Buckets, a: int, b: int, w: int, report: TableReconciliation,
           stack: list[tuple[int, int, int]], leaves: list[tuple[int, int]]) -> None:
    """Compare one level's buckets of [a, b] (width ``w``): a differing bucket becomes a leaf when
    small enough, else is split again (pushed on ``stack``)."""
    seen = set(ours) | set(theirs)
    report.buckets_compared += len(seen)
    for k in sorted(seen):
        left, right = ours.get(k, (0, 0)), theirs.get(k, (0, 0))
        if left == right:
            continue
        start = a + k * w
        end = min(b, start + w - 1)
        if max(left[0], right[0]) <= LEAF_ROWS or w == 1:
            leaves.append((start, end))
        else:
            stack.append((start, end, max(1, -(-w // FANOUT))))


def classify(source_rows: pl.DataFrame, bronze_rows: pl.DataFrame, pending_since: datetime | None,
             report: TableReconciliation) -> list[Mismatch]:
    """Compare the leaves key by key (see :mod:`~bronze_assets.lib.reconcile.model` for the kinds).
    A missing or differing row updated at or after ``pending_since`` is pending; FORGOTTEN keys are
    skipped (the MERGE never updates them)."""
    report.rows_compared += source_rows.height + bronze_rows.height
    # one bronze row per key (key_uniqueness reports duplicates): an ACTIVE one first
    bronze_rows = bronze_rows.sort(pl.col("status") != ACTIVE).unique("key", keep="first")
    joined = source_rows.join(bronze_rows, on="key", how="full", coalesce=True)
    in_source = pl.col("source_hash").is_not_null()
    active = (pl.col("status") == ACTIVE).fill_null(False)
    forgotten = (pl.col("status") == FORGOTTEN).fill_null(False)
    kind = (pl.when(~in_source & active).then(pl.lit(EXTRA))
            .when(in_source & forgotten).then(pl.lit(None))
            .when(in_source & ~active).then(pl.lit(MISSING))
            .when(in_source & (pl.col("source_hash") != pl.col("bronze_hash"))).then(pl.lit(DIFFERS))
            .otherwise(pl.lit(None)))
    late = pl.lit(False) if pending_since is None else \
        (pl.col("updated_at") >= pl.lit(pending_since)).fill_null(False)
    found = joined.select("key", kind.alias("kind"), late.alias("late"), (in_source & forgotten).alias("f"))
    report.forgotten_skipped += int(found["f"].sum())
    found = found.filter(pl.col("kind").is_not_null()).sort("key")
    return [Mismatch(k, PENDING, kind) if late and kind != EXTRA else Mismatch(k, kind)
            for k, kind, late, _ in found.iter_rows()]
