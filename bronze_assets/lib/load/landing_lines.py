"""A landing file's records as numbered lines, read streamed (ARCHITECTURE §2.6).

A JSON Lines file is read in blocks of :data:`BLOCK_BYTES` (gunzipped as it streams when it ends
in ``.gz``), cut into lines by Arrow and checked by DuckDB (already the engine of the record hash):
one query per block parses each line once for its validity and its field names, so Python touches
only the rare bad line. A CSV file's records become JSON objects of their text
fields in DuckDB's CSV reader (its rejected rows bad lines), a Parquet file's rows JSON objects of
their values; both then go the JSON way."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bronze_assets.contracts.model import LandingFormat
from bronze_assets.lib.load.landing_duckdb import duckdb_connection, sql_literal
from bronze_assets.lib.load.landing_source import FileSelection, LandingFile

BLOCK_BYTES = 16 << 20  # a JSON Lines file is read and parsed this much at a time
EMPTY_LINES = pa.schema([pa.field("line_no", pa.int64()), pa.field("line", pa.large_string())])


class UnreadableFile(Exception):
    """A file the reader refuses as a whole (a broken gzip stream or Parquet file)."""


def _raw_blocks(selection: FileSelection, file: LandingFile, digest: hashlib._Hash) -> Iterator[bytes]:
    with selection.open(file) as stream:
        while block := stream.read(BLOCK_BYTES):
            digest.update(block)
            yield block


def _gunzipped(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream of one or more members."""
    inflate, fed = zlib.decompressobj(wbits=47), False
    try:
        for block in blocks:
            data = block
            while data:
                if inflate.eof:
                    inflate = zlib.decompressobj(wbits=47)  # the next member
                fed = True
                yield inflate.decompress(data)
                data = inflate.unused_data if inflate.eof else b""
    except zlib.error as exc:
        raise UnreadableFile(f"not a readable gzip file: {exc}") from None
    if fed and not inflate.eof:
        raise UnreadableFile("not a readable gzip file: it ends before its end (truncated)")


def _whole_lines(data: Iterator[bytes]) -> Iterator[bytes]:
    """``data`` cut at the last newline of each block (a line is never split between blocks)."""
    rest = b""
    for block in data:
        if not block:
            continue
        buf = rest + block if rest else block
        cut = buf.rfind(b"\n")
        if cut < 0:
            rest = buf
            continue
        yield buf[:cut + 1]
        rest = buf[cut + 1:]
    if rest:
        yield rest


def _line_ends(chunk: bytes) -> np.ndarray:
    """The end offset (after its line end) of each line of ``chunk``, the last line's whether or
    not it ends with one."""
    ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + 1
    if not ends.size or ends[-1] != len(chunk):
        ends = np.append(ends, len(chunk))
    return ends


def _lines(chunk: bytes, ends: np.ndarray | None = None) -> pa.LargeStringArray:
    """The lines of ``chunk`` (each with its line end; ``ends``: :func:`_line_ends`, if known),
    zero-copy over its bytes; bytes that are not UTF-8 are replaced (U+FFFD) first."""
    if ends is None:
        ends = _line_ends(chunk)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), ends.astype(np.int64)])
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(chunk))
    if chunk.isascii():  # the usual chunk: ASCII is UTF-8, no need to decode it
        return lines
    try:
        lines.validate(full=True)
    except pa.ArrowInvalid:  # not UTF-8: the rare file that needs a copy
        return _lines(chunk.decode("utf-8", errors="replace").encode())
    return lines


_SPACE = "' ' || chr(9) || chr(10) || chr(13)"
# per line: its top-level field names, one parse (NULL: not a JSON object; TRY: the rare bad line),
# and whether it is kept (not blank); CASE: the trims run only on the rare line that needs them
_KEYS = (f"CASE WHEN starts_with(line, '{{') THEN TRY(json_keys(line)) "
         f"WHEN starts_with(ltrim(line, {_SPACE}), '{{') THEN TRY(json_keys(line)) END")
_CHECK_LINES = (f"SELECT keys, CASE WHEN keys IS NOT NULL THEN true ELSE trim(line, {_SPACE}) <> '' END "
                f"AS kept FROM (SELECT line, {_KEYS} AS keys FROM raw_lines)")


@dataclass
class Block:
    """A block of a file's records: the valid ones (``good``: ``line_no``, 1-based, and ``line``,
    a JSON object's text), the bad lines (line number, raw text without its line end), the field
    names of the valid records (``fields``) and, for JSON Lines, each valid record's own
    (``keys``, a list array; None: every record has every field, as CSV and Parquet rows do)."""

    good: pa.Table
    bad: list[tuple[int | None, str]] = field(default_factory=list)
    fields: set[str] = field(default_factory=set)
    keys: pa.Array | None = None


@dataclass(frozen=True)
class LineChunk:
    """Whole lines of a JSON Lines file as read, the first of them line ``first`` (1-based): a
    :class:`Block` once :func:`check_chunk` has checked them (on any thread, with its own DuckDB
    connection)."""

    data: bytes
    first: int
    ends: np.ndarray  # each line's end offset in ``data`` (:func:`_line_ends`)


def _json_chunks(data: Iterator[bytes]) -> Iterator[LineChunk]:
    """The whole lines of a JSON Lines stream, block by block, numbered."""
    first = 1
    for chunk in _whole_lines(data):
        ends = _line_ends(chunk)
        yield LineChunk(chunk, first, ends)
        first += len(ends)


def check_chunk(chunk: LineChunk, con: duckdb.DuckDBPyConnection) -> Block:
    """The records of a chunk of JSON Lines. DuckDB parses each line once and returns only its
    field names: the lines stay the Arrow array over the chunk's bytes, copied once (the valid
    ones) only in a chunk that has a blank or bad line."""
    lines = _lines(chunk.data, chunk.ends)
    numbers = pa.array(np.arange(chunk.first, chunk.first + len(lines), dtype=np.int64))
    con.register("raw_lines", pa.table({"line": lines}))
    try:
        flags = con.sql(_CHECK_LINES).to_arrow_table()
    finally:
        con.unregister("raw_lines")
    keys = flags.column("keys").combine_chunks()
    ok = keys.is_valid()
    good, bad = pa.table({"line_no": numbers, "line": lines}), []
    if ok.false_count:  # the rare blank or bad line
        wrong = pc.indices_nonzero(pc.and_not(flags.column("kept").combine_chunks(), ok))
        bad = list(zip(numbers.take(wrong).to_pylist(),
                       (raw.rstrip("\r\n") for raw in lines.take(wrong).to_pylist()), strict=True))
        good, keys = good.filter(ok), keys.filter(ok)
    return Block(good, bad, set(pc.unique(pc.list_flatten(keys)).to_pylist()), keys)


def _row_block(lines: pa.Table, con: duckdb.DuckDBPyConnection,
               bad: list[tuple[int | None, str]] | None = None) -> Block:
    """A block of CSV or Parquet rows as JSON objects (``to_json`` of each row: every record has
    every field, so the first one names them), numbered from 1."""
    line = lines.column("line").combine_chunks().cast(pa.large_string())
    good = pa.table({"line_no": pa.array(np.arange(1, len(line) + 1, dtype=np.int64)), "line": line})
    fields = set()
    if len(line):
        fields = {k for (k,) in con.execute("SELECT unnest(json_keys(?))", [line[0].as_py()]).fetchall()}
    return Block(good, bad or [], fields)


def _csv_lines(data: bytes, stage: Path) -> Block:
    """The records of a CSV file with a header, each as a JSON object of its fields (text), so
    they go the JSON Lines way; a row DuckDB's reader rejects (wrong field count, bad quoting) is a
    bad line with its 1-based line number and raw text."""
    if not data.strip():
        return Block(EMPTY_LINES.empty_table())
    fd, name = tempfile.mkstemp(suffix=".csv", dir=stage)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        con = duckdb_connection()  # its own: the rejects table is per connection
        good = con.sql(f"SELECT to_json(t) AS line FROM read_csv({sql_literal(name)}, all_varchar = true, "
                       f"header = true, store_rejects = true) t").to_arrow_table()
        bad = con.sql("SELECT line::BIGINT AS line_no, csv_line AS line FROM reject_errors "
                      "ORDER BY line").fetchall()
    finally:
        os.unlink(name)
    return _row_block(good, con, bad)  # accepted rows keep their order: their numbers order (and key) them


def _parquet_records(data: bytes, con: duckdb.DuckDBPyConnection) -> Block:
    """The rows of a Parquet file, each as a JSON object of its fields (numbered from 1)."""
    try:
        rows = pq.read_table(pa.BufferReader(data)) if data else None
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFile(f"unreadable Parquet file: {exc}") from None
    if rows is None or rows.num_rows == 0:
        return Block(EMPTY_LINES.empty_table())
    con.register("parquet_rows", rows)
    try:
        lines = con.sql("SELECT to_json(t) AS line FROM parquet_rows t").to_arrow_table()
    finally:
        con.unregister("parquet_rows")
    return _row_block(lines, con)


def file_blocks(selection: FileSelection, file: LandingFile, con: duckdb.DuckDBPyConnection, stage: Path,
                digest: hashlib._Hash) -> Iterator[Block | LineChunk]:
    """The records of ``file`` block by block (see :class:`Block`; a JSON Lines file's as
    :class:`LineChunk` to check, so that the checks can run apart from the reading); ``digest``
    is updated with its raw bytes as they are read. Raises :class:`UnreadableFile`."""
    data = _raw_blocks(selection, file, digest)
    if file.path.endswith(".gz"):
        data = _gunzipped(data)
    landing = selection.contract.landing
    assert landing is not None
    if landing.format is LandingFormat.JSON:
        yield from _json_chunks(data)
    elif landing.format is LandingFormat.CSV:
        yield _csv_lines(b"".join(data), stage)
    else:
        yield _parquet_records(b"".join(data), con)
