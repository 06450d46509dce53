"""The narrow form of a MERGE plan's inputs: keys plus ``record_hash`` as two 64-bit words, read
from an Arrow stream a few hundred thousand rows at a time and, for a large table, spilled to disk
by key bucket (a Grace hash join)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from bronze_assets.lib.delta.write_options import OUTPUT_BATCH_ROWS

COMPACT_ROWS = 2 * OUTPUT_BATCH_ROWS  # rows narrowed per Polars pass (1 M: 0.18 GB more, no faster)


def hash_words(column: str, prefix: str) -> list[pl.Expr]:
    """A 32-hex-digit record hash as two exact 64-bit words (NULL where it is not hex): the plan
    compares hashes at 16 bytes a row instead of holding 32-character strings of both sides."""
    text = pl.col(column)
    return [text.str.slice(i * 16, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False)
            .alias(f"{prefix}{i}") for i in (0, 1)]


def same_hash(left: str, right: str) -> pl.Expr:
    """Whether two hashes (as :func:`hash_words`) are equal; unknown counts as different."""
    return ((pl.col(f"{left}0") == pl.col(f"{right}0")) & (pl.col(f"{left}1") == pl.col(f"{right}1"))
            ).fill_null(False)


def narrow(batches: Any, keep: list[str | pl.Expr], prefix: str, extra: list[pl.Expr] | None = None,
           column: str = "record_hash") -> pl.DataFrame:
    """``keep`` plus the hash ``column`` as 64-bit words from an Arrow stream (:func:`narrowed`)."""
    return pl.concat(list(narrowed(batches, keep, prefix, extra, column)), rechunk=False)


def narrowed(batches: Any, keep: list[str | pl.Expr], prefix: str, extra: list[pl.Expr] | None = None,
             column: str | None = "record_hash", where: pl.Expr | None = None) -> Iterator[pl.DataFrame]:
    """``keep`` plus the hash ``column`` (if any) as 64-bit words, ``COMPACT_ROWS`` rows at a time, of the
    rows ``where`` selects (all by default; the hashes of the others are never parsed): memory
    holds narrow pieces, never the whole string column. (A column taken from an imported batch
    keeps the whole batch alive, so each narrow piece is copied into owned memory.)"""
    reader = pa.RecordBatchReader.from_stream(batches)
    raw: list[pa.RecordBatch] = []

    def compact() -> pl.DataFrame:  # one Polars pass per COMPACT_ROWS rows, not per (small) batch
        frame = pl.from_arrow(pa.Table.from_batches(raw, schema=reader.schema))
        assert isinstance(frame, pl.DataFrame)
        raw.clear()
        if where is not None:
            frame = frame.filter(where)
        words = hash_words(column, prefix) if column is not None else []
        return _owned(frame.select(*keep, *words, *(extra or [])))

    rows, pieces = 0, 0
    for batch in reader:
        raw.append(pa.record_batch(batch))
        rows += batch.num_rows
        if rows >= COMPACT_ROWS:
            yield compact()
            rows, pieces = 0, pieces + 1
    if raw or not pieces:  # typed even when empty
        yield compact()


def _owned(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` in freshly allocated columns (nothing shared with the Arrow batches it came from)."""
    return frame.select(pl.all().gather(pl.int_range(pl.len())))


def spill(pieces: Iterator[pl.DataFrame], bucket: pl.Expr, folder: Path, side: str) -> pl.Schema:
    """Write each piece's rows to one Arrow IPC file per key bucket (``<side>-<bucket>-<n>``);
    returns the pieces' schema."""
    schema = None
    for n, piece in enumerate(pieces):
        schema = piece.schema
        parts = piece.with_columns(bucket.alias("_b")).partition_by("_b", as_dict=True, include_key=False)
        for (b,), part in parts.items():
            part.write_ipc(folder / f"{side}-{b}-{n}.arrow", compression="uncompressed")
    assert schema is not None, "narrowed yields at least one (typed) piece"
    return schema


def unspill(folder: Path, side: str, bucket: int, schema: pl.Schema) -> pl.DataFrame:
    """One bucket's rows of one side, read into memory; its files are removed."""
    files = sorted(folder.glob(f"{side}-{bucket}-*.arrow"))
    if not files:
        return pl.DataFrame(schema=schema)
    frame = pl.concat([pl.read_ipc(f) for f in files], rechunk=False)
    for f in files:
        f.unlink()
    return frame

