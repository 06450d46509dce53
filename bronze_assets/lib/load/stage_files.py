"""The local engine's staging of landing-zone files (ARCHITECTURE §2.6): read the new files
streamed and vectorised, type them by the table's schema, evolve it, quarantine bad lines, enrich,
stage.

A JSON Lines file is read in blocks of :data:`BLOCK_BYTES` (gunzipped as it streams when it ends
in ``.gz``), cut into lines by Arrow and parsed by DuckDB (already the engine of the record hash):
one query per block validates every line and extracts every column with one parse, casting it to
its column's type with ``TRY_CAST``, so Python touches only the rare bad line or rescued value. A
CSV file's records become JSON objects of their text fields in DuckDB's CSV reader (its rejected
rows bad lines), a Parquet file's rows JSON objects of their values; both then go the JSON way.
A value that does not cast is NULL in its column, kept in ``_rescued_data`` and scores
``schema_fail``; a column's type never changes. New top-level fields follow the contract's
``evolution``; an added field's type is its schema hint, else inferred from the first file that
has it (``infer_column_types``), else text, and the table's schema is stored versioned
(:mod:`~bronze_assets.lib.load.landing_schema`).

Two passes keep memory bounded by a block, not by the files: the first types each block and
writes it to a local Arrow file (the columns known when it was read); the second adds the columns
found later (NULL: those records did not have them), keeps one record per key (the latest file by
modification time, then the later line), hashes and scores them (the records of both engines:
:mod:`~bronze_assets.lib.load.landing_records`) and stages them. A table without a primary key
appends: each record is identified by ``<file URI>#<line>``, so a record is never landed twice.
The batch's ledger rows
ride in its last commit's metadata (:mod:`bronze_assets.lib.delta.landing_ledger`); before each
commit attempt the files another run landed since the listing are dropped from the batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable

from bronze_assets.contracts import Contract
from bronze_assets.contracts.arrow import arrow_type
from bronze_assets.contracts.model import Evolution, LandingFormat
from bronze_assets.contracts.types import PgType
from bronze_assets.lib.delta.commit_log import commit_history
from bronze_assets.lib.delta.landing_ledger import LEDGER_KEY, LedgerRow, ledger_metadata
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE, quarantine_once
from bronze_assets.lib.delta.staging import StagedBatch, stage_dir, staged_reader, write_stream
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.enrich.metadata import BatchContext, bronze_schema, staged_schema
from bronze_assets.lib.load.landing_records import (
    BAD_LINES_REASON,
    LANDING_SOURCE_SYSTEM,
    RESCUED,
    SOURCE_FILE,
    Columns,
    NewColumnsError,
    bad_line_ids,
    bad_line_records,
    enrich_records,
    landed_elsewhere,
    landing_extras,
    ledger_rows,
    plan_columns,
    rescued_data,
)
from bronze_assets.lib.load.landing_schema import (
    StoredColumn,
    StoredSchema,
    evolved_types,
    new_column,
    write_schema,
)
from bronze_assets.lib.load.landing_source import FileSelection, LandingFile
from bronze_assets.lib.source.extract import INVALID_PREFIX
from bronze_assets.lib.source.schema import SchemaDrift

__all__ = ["NewColumnsError", "stage_files"]

BLOCK_BYTES = 16 << 20  # a JSON Lines file is read and parsed this much at a time
LINE = "_line"  # the record's 1-based line (first pass only; a keyless record's key)
_TEXT_CASTS = ("bigint", "double precision", "boolean", "timestamp with time zone")  # CSV inference


def _duck_type(type_: PgType, table: str, column: str) -> str:
    t = arrow_type(type_)
    simple = {pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float32(): "FLOAT",
              pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN", pa.string(): "VARCHAR", pa.date32(): "DATE",
              pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ", pa.timestamp("us"): "TIMESTAMP"}
    if t in simple:
        return simple[t]
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    raise ValueError(f"{table}: column {column} has type {type_}, which landing files cannot fill yet; "
                     f"declare it as text (or a number, boolean, date or timestamp type)")


def _cast(value: str, type_: PgType, table: str, column: str) -> str:
    """SQL: the text ``value`` as ``type_``, NULL where it does not parse (an integer column takes
    only integer text: DuckDB would round ``1.5``)."""
    duck = _duck_type(type_, table, column)
    if duck in ("SMALLINT", "INTEGER", "BIGINT"):
        integer = f"regexp_full_match(trim({value}), '[+-]?[0-9]+')"
        return f"CASE WHEN {integer} THEN TRY_CAST({value} AS {duck}) END"
    return f"TRY_CAST({value} AS {duck})"


def _path(name: str) -> str:
    return "'$.\"" + name.replace("\\", "\\\\").replace('"', '\\"').replace("'", "''") + "\"'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _connection() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


_EMPTY_LINES = pa.schema([pa.field("line_no", pa.int64()), pa.field("line", pa.large_string()),
                          pa.field("ok", pa.bool_())])


# ------------------------------------------------------------------------------ reading files
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


def _lines(chunk: bytes) -> pa.LargeStringArray:
    """The lines of ``chunk`` (each with its line end), zero-copy over its bytes; bytes that are not
    UTF-8 are replaced (U+FFFD) first."""
    ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + 1
    if not ends.size or ends[-1] != len(chunk):
        ends = np.append(ends, len(chunk))
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), ends.astype(np.int64)])
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(chunk))
    try:
        lines.validate(full=True)
    except pa.ArrowInvalid:  # not UTF-8: the rare file that needs a copy
        return _lines(chunk.decode("utf-8", errors="replace").encode())
    return lines


_SPACE = "' ' || chr(9) || chr(10) || chr(13)"
# per line (in order): a JSON object (its line end is JSON whitespace), not blank
# one parse per line: its top-level field names (NULL: not a JSON object; TRY: the rare bad line);
# CASE: the trims run only on the rare line that needs them
_KEYS = (f"CASE WHEN starts_with(line, '{{') THEN TRY(json_keys(line)) "
         f"WHEN starts_with(ltrim(line, {_SPACE}), '{{') THEN TRY(json_keys(line)) END")
_CHECK_LINES = ("SELECT keys IS NOT NULL AS ok, "
                f"CASE WHEN keys IS NOT NULL THEN true ELSE trim(line, {_SPACE}) <> '' END AS kept, "
                "CASE WHEN NOT list_has_all({known}, keys) THEN keys END AS new "
                f"FROM (SELECT line, {_KEYS} AS keys FROM raw_lines)")


def _json_blocks(data: Iterator[bytes], con: duckdb.DuckDBPyConnection, known: set[str]
                 ) -> Iterator[pa.Table]:
    """The non-blank lines of a JSON Lines stream, block by block: ``line_no`` (1-based), ``line``
    (a bad line without its line end), ``ok`` (a JSON object), ``new`` (the field names of a record
    that has one not in ``known``, read as each block is: the caller adds the new ones). DuckDB
    returns only these: the lines stay the Arrow array over the block's bytes."""
    offset = 0
    for chunk in _whole_lines(data):
        lines = _lines(chunk)
        numbers = pa.array(np.arange(offset + 1, offset + len(lines) + 1, dtype=np.int64))
        offset += len(lines)
        con.register("raw_lines", pa.table({"line": lines}))
        try:
            names = "[" + ", ".join(_literal(c) for c in sorted(known)) + "]"
            flags = con.sql(_CHECK_LINES.replace("{known}", names)).to_arrow_table()
        finally:
            con.unregister("raw_lines")
        ok, kept = flags.column("ok").combine_chunks(), flags.column("kept").combine_chunks()
        block = pa.table({"line_no": numbers, "line": lines, "ok": ok, "new": flags.column("new")})
        if kept.false_count:
            block = block.filter(kept)
        if ok.false_count:  # the rare bad line: without its line end
            bad = pc.invert(block.column("ok"))
            line = block.column("line")
            block = block.set_column(1, "line", pc.if_else(bad, pc.utf8_rtrim(line, characters="\r\n"), line))
        yield block


def _csv_lines(data: bytes, stage: Path) -> pa.Table:
    """The records of a CSV file with a header, each as a JSON object of its fields (text), so
    they go the JSON Lines way; a row DuckDB's reader rejects (wrong field count, bad quoting) is a
    bad line with its 1-based line number and raw text."""
    if not data.strip():
        return _EMPTY_LINES.empty_table()
    fd, name = tempfile.mkstemp(suffix=".csv", dir=stage)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        con = _connection()  # its own: the rejects table is per connection
        good = con.sql(f"SELECT to_json(t) AS line FROM read_csv({_literal(name)}, all_varchar = true, "
                       f"header = true, store_rejects = true) t").to_arrow_table()
        bad = con.sql("SELECT line::BIGINT AS line_no, csv_line AS line FROM reject_errors "
                      "ORDER BY line").to_arrow_table()
    finally:
        os.unlink(name)
    n = good.num_rows  # accepted rows keep their order; their numbers order them (and key them)
    return pa.table({
        "line_no": pa.concat_arrays([pa.array(np.arange(1, n + 1, dtype=np.int64)),
                                     bad.column("line_no").combine_chunks().cast(pa.int64())]),
        "line": pa.concat_arrays([good.column("line").combine_chunks().cast(pa.large_string()),
                                  bad.column("line").combine_chunks().cast(pa.large_string())]),
        "ok": pa.array([True] * n + [False] * bad.num_rows, pa.bool_())}, schema=_EMPTY_LINES)


def _parquet_records(data: bytes, con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The rows of a Parquet file, each as a JSON object of its fields (numbered from 1)."""
    try:
        rows = pq.read_table(pa.BufferReader(data)) if data else None
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFile(f"unreadable Parquet file: {exc}") from None
    if rows is None or rows.num_rows == 0:
        return _EMPTY_LINES.empty_table()
    con.register("parquet_rows", rows)
    try:
        lines = con.sql("SELECT to_json(t) AS line FROM parquet_rows t").to_arrow_table()
    finally:
        con.unregister("parquet_rows")
    n = lines.num_rows
    return pa.table({"line_no": pa.array(np.arange(1, n + 1, dtype=np.int64)),
                     "line": lines.column("line").combine_chunks().cast(pa.large_string()),
                     "ok": pa.array(np.ones(n, dtype=bool))}, schema=_EMPTY_LINES)


def file_blocks(selection: FileSelection, file: LandingFile, con: duckdb.DuckDBPyConnection, stage: Path,
                digest: hashlib._Hash, known: set[str]) -> Iterator[pa.Table]:
    """The records of ``file`` block by block (``line_no``, ``line``, ``ok``; JSON Lines also
    ``new``: see :func:`_json_blocks`, against ``known``); ``digest`` is updated with its raw bytes
    as they are read. Raises :class:`UnreadableFile`."""
    data = _raw_blocks(selection, file, digest)
    if file.path.endswith(".gz"):
        data = _gunzipped(data)
    landing = selection.contract.landing
    assert landing is not None
    if landing.format is LandingFormat.JSON:
        yield from _json_blocks(data, con, known)
    elif landing.format is LandingFormat.CSV:
        yield _csv_lines(b"".join(data), stage)
    else:
        yield _parquet_records(b"".join(data), con)


# ------------------------------------------------------------------------------ the first pass
@dataclass
class FileRead:
    """One file read: its ledger facts, how many records it had, its bad lines (line, raw text)."""

    file: LandingFile
    sha256: str = ""
    records: int = 0
    bad: list[tuple[int | None, str]] = field(default_factory=list)


@dataclass
class Schema:
    """The table's columns as this batch knows them: the contract's, those earlier loads added
    (``evolved``) and those this batch adds (``added``), each with its type."""

    contract: Contract
    evolved: list[StoredColumn]
    added: list[StoredColumn] = field(default_factory=list)

    @property
    def extras(self) -> list[StoredColumn]:
        return [*self.evolved, *self.added]

    def typed(self) -> list[tuple[str, PgType]]:
        declared = [(c.name, c.type) for c in self.contract.columns]
        return [*declared, *((c.name, c.pg_type) for c in self.extras)]

    def names(self) -> set[str]:
        return {name for name, _ in self.typed()} | {SOURCE_FILE, RESCUED}

    def plan(self, uri: str, keys: set[str], batch_id: str) -> Columns:
        """What the batch does with the new fields of a block of ``uri`` (the contract's evolution)."""
        return plan_columns(self.contract, [(uri, keys)], [c.name for c in self.extras], batch_id)


def _fields(block: pa.Table, con: duckdb.DuckDBPyConnection) -> set[str]:
    """The top-level field names of a block's records."""
    con.register("good_lines", block)
    try:
        found = con.sql("SELECT DISTINCT unnest(json_keys(line)) AS k FROM good_lines").to_arrow_table()
    finally:
        con.unregister("good_lines")
    return set(found.column("k").to_pylist())


def _infer(contract: Contract, name: str, block: pa.Table, con: duckdb.DuckDBPyConnection) -> StoredColumn:
    """The column new field ``name`` becomes, from its values in ``block`` (see :func:`new_column`)."""
    assert contract.landing is not None
    con.register("good_lines", block)
    try:
        if contract.landing.format is LandingFormat.CSV:  # text values: which types do they all cast to
            value = f"json_extract_string(line, {_path(name)})"
            counts = con.sql(f"SELECT count({value}), " + ", ".join(
                f"count({_cast(value, PgType.parse(t), '', name)})" for t in _TEXT_CASTS)
                + " FROM good_lines").fetchall()[0]
            casts = {t: counts[0] > 0 and c == counts[0]
                     for t, c in zip(_TEXT_CASTS, counts[1:], strict=True)}
            return new_column(contract, name, set(), casts)
        kinds = con.sql(f"SELECT DISTINCT json_type(line, {_path(name)}) AS t FROM good_lines").fetchall()
        return new_column(contract, name, {k for (k,) in kinds if k is not None}, None)
    finally:
        con.unregister("good_lines")


def _typed_block(block: pa.Table, schema: Schema, rescued: list[str], uri: str,
                 con: duckdb.DuckDBPyConnection) -> pa.RecordBatch:
    """A block's valid records typed: every known column (one JSON parse per record),
    ``_rescued_data`` (what did not fit, and the ``rescued`` fields), ``_source_file``, ``_line``.
    The raw line comes back only for a record that has something to rescue."""
    table = schema.contract.bronze_table
    typed = schema.typed()
    paths = ", ".join(_path(name) for name, _ in typed)
    casts, flags = [], {}  # a text column takes any value: no cast, no flag
    for i, (name, type_) in enumerate(typed, start=1):
        if _duck_type(type_, table, name) == "VARCHAR":
            casts.append(f"v[{i}] AS _c{i}")
        else:
            casts.append(f"{_cast(f'v[{i}]', type_, table, name)} AS _c{i}")
            flags[i] = f"(v[{i}] IS NOT NULL AND _c{i} IS NULL)"
    has_new = (f"list_has_any(json_keys(line), [{', '.join(_literal(c) for c in rescued)}])"
               if rescued else "false")
    outer = ["line_no AS _line_no", *(f"_c{i}" for i in range(1, len(typed) + 1)),
             *(f"{flag} AS _bad{i}" for i, flag in flags.items()), f"{has_new} AS _new",
             f"CASE WHEN {' OR '.join([*flags.values(), has_new])} THEN line END AS _raw"]
    con.register("good_lines", block)
    try:  # one parse per record (v), each cast once; the raw line only where something is rescued
        out = con.sql(f"SELECT {', '.join(outer)} FROM (SELECT line_no, line, v, {', '.join(casts)} FROM "
                      f"(SELECT line_no, line, json_extract_string(line, [{paths}]) AS v FROM good_lines))"
                      ).to_arrow_table()  # in the lines' order (DuckDB keeps insertion order)
    finally:
        con.unregister("good_lines")
    n = out.num_rows
    uris = pa.repeat(pa.scalar(uri, pa.string()), n)
    unfit = {name: out.column(f"_bad{i}").to_numpy(zero_copy_only=False).astype(bool) if i in flags
             else np.zeros(n, dtype=bool) for i, (name, _) in enumerate(typed, start=1)}
    new_flag = out.column("_new").to_numpy(zero_copy_only=False).astype(bool)
    arrays = {name: out.column(f"_c{i}").combine_chunks().cast(arrow_type(type_))
              for i, (name, type_) in enumerate(typed, start=1)}
    arrays |= {RESCUED: rescued_data(out.column("_raw").combine_chunks(), uris, unfit,
                                     dict.fromkeys(rescued, new_flag)),
               SOURCE_FILE: uris, LINE: out.column("_line_no").combine_chunks()}
    return pa.RecordBatch.from_pydict(arrays)


class _Spill:
    """The first pass's typed blocks in local Arrow files, one per set of columns (a column found
    later starts a new file), read back in order."""

    def __init__(self, stage: Path, name: str) -> None:
        self.stage, self.name = stage, name
        self.paths: list[Path] = []
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._sink: pa.OSFile | None = None
        self._schema: pa.Schema | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None or self._schema != batch.schema:
            self.close()
            fd, raw = tempfile.mkstemp(prefix=f"{self.name}-read-", suffix=".arrow", dir=self.stage)
            os.close(fd)
            self.paths.append(Path(raw))
            self._sink = pa.OSFile(raw, "wb")
            self._writer, self._schema = pa.ipc.new_file(self._sink, batch.schema), batch.schema
        self._writer.write_batch(batch)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._sink is not None:
            self._sink.close()
        self._writer = self._sink = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The spilled blocks in order, each mapped on its own (memory holds the blocks in use)."""
        self.close()
        for path in self.paths:
            yield from staged_reader(path)

    def remove(self) -> None:
        self.close()
        for path in self.paths:
            with contextlib.suppress(OSError):
                path.unlink()


# ------------------------------------------------------------------------------ staging
def stage_files(contract: Contract, storage: Storage, selection: FileSelection,
                batch_time: datetime | None = None) -> StagedBatch:
    """Read, type, evolve, enrich and stage the selected files; the bad lines go to
    ``bz_quarantine`` with file and line (once, whatever is killed or runs at once); the files'
    ledger rows go in ``selection.ledger`` and in the metadata of the batch's last commit."""
    started = time.perf_counter()
    landing = contract.landing
    if landing is None:
        raise ValueError(f"{contract.bronze_table} is not a landing table (its contract has no 'landing')")
    ctx = BatchContext(str(uuid.uuid4()), batch_time or datetime.now(UTC), LANDING_SOURCE_SYSTEM)
    con = _connection()
    stage = stage_dir(storage.settings.stage_dir)
    dt = storage.open(contract.bronze_table)
    table_schema = None if dt is None else pa.schema(dt.schema().to_arrow())
    stored, evolved = evolved_types(contract, storage, table_schema)
    schema = Schema(contract, evolved)
    spill = _Spill(stage, contract.bronze_table)
    try:
        reads, keys = _first_pass(selection, schema, ctx, con, stage, spill)
        return _second_pass(storage, selection, ctx, schema, stored, reads, keys, spill, started)
    finally:
        spill.remove()


def _first_pass(selection: FileSelection, schema: Schema, ctx: BatchContext, con: duckdb.DuckDBPyConnection,
                stage: Path, spill: _Spill) -> tuple[list[FileRead], list[pl.DataFrame]]:
    """Read every file block by block; type each block by the columns known then (a new field
    joins them, typed from this block, by the contract's evolution) and spill it."""
    contract = schema.contract
    pk = list(contract.primary_key)
    reads: list[FileRead] = []
    keys: list[pl.DataFrame] = []
    evolving = contract.landing is not None and contract.landing.evolution is not Evolution.NONE
    known = schema.names()  # grows as fields are added: the next block's query sees them
    for file in selection.files:
        read = FileRead(file)
        reads.append(read)
        digest = hashlib.sha256()
        try:
            for block in file_blocks(selection, file, con, stage, digest, known):
                ok = block.column("ok").combine_chunks()
                good = block
                if ok.false_count:
                    bad = block.filter(pc.invert(ok))
                    read.bad += zip(bad.column("line_no").to_pylist(), bad.column("line").to_pylist(),
                                    strict=True)
                    good = block.filter(ok)
                if not good.num_rows:
                    continue
                fields = _fields(good, con) if "new" not in good.column_names else \
                    set(pc.list_flatten(good.column("new")).unique().to_pylist())
                good = good.select(["line_no", "line"])
                plan = schema.plan(file.uri, fields, ctx.batch_id) if evolving else None
                if plan is not None:
                    schema.added += [_infer(contract, c, good, con) for c in plan.added]
                    known |= set(plan.added)
                typed = _typed_block(good, schema, plan.rescued if plan else [], file.uri, con)
                read.records += typed.num_rows
                if pk:
                    frame = pl.from_arrow(typed.select(pk))
                    assert isinstance(frame, pl.DataFrame)
                    keys.append(frame)
                spill.write(typed)
        except UnreadableFile as exc:
            read.bad.append((None, str(exc)))
        read.sha256 = digest.hexdigest()
    return reads, keys


def _kept(keys: list[pl.DataFrame], pk: list[str]) -> np.ndarray | None:
    """Which records of the first pass to keep: per key the last (files oldest first, then line
    order); None: every record (no primary key)."""
    if not pk:
        return None
    if not keys:
        return np.zeros(0, dtype=bool)
    every = pl.concat(keys, how="vertical_relaxed").with_row_index("_at")
    keep = np.zeros(every.height, dtype=bool)
    keep[every.unique(subset=pk, keep="last").get_column("_at").to_numpy()] = True
    return keep


def _second_pass(storage: Storage, selection: FileSelection, ctx: BatchContext, schema: Schema,
                 stored: StoredSchema | None, reads: list[FileRead], keys: list[pl.DataFrame], spill: _Spill,
                 started: float) -> StagedBatch:
    """Stage the spilled records: one per key, the columns found later NULL, hashed and scored;
    store the schema if it changed; quarantine the bad lines; the ledger rows."""
    contract = schema.contract
    extras = [(c.name, c.pg_type) for c in schema.extras]
    table_schema = bronze_schema(contract, landing_extras([pa.field(c, arrow_type(t)) for c, t in extras]))
    rows_schema = staged_schema(table_schema)
    keep = _kept(keys, list(contract.primary_key))
    histogram = np.zeros(101, dtype=np.int64)
    unfit = 0

    def records() -> Iterator[pa.RecordBatch]:
        nonlocal unfit
        offset = 0
        for batch in spill.batches():
            n = batch.num_rows
            if keep is not None and not keep[offset:offset + n].all():  # no copy of a batch kept whole
                batch = batch.filter(pa.array(keep[offset:offset + n]))
            offset += n
            if not batch.num_rows:
                continue
            out = enrich_records(batch, contract, ctx, extras, batch.column(LINE))
            flags = [out.column(c).to_numpy(zero_copy_only=False) for c in out.schema.names
                     if c.startswith(INVALID_PREFIX)]
            unfit += int(np.any(np.stack(flags), axis=0).sum()) if flags else 0
            histogram[:] += np.bincount(out.column("data_quality_score").to_numpy(zero_copy_only=False),
                                        minlength=101)
            yield out.select(rows_schema.names)

    path, rows = write_stream(records(), rows_schema, contract.bronze_table, storage.settings.stage_dir)
    if schema.added or stored is None:  # before the commit: a re-run after a kill keeps the types
        write_schema(storage, contract, schema.extras, ctx.batch_id, stored)
    bad = [(r, n, raw) for r in reads for n, raw in r.bad]
    if bad:
        reason = BAD_LINES_REASON.format(table=contract.bronze_table)
        quarantine_once(storage, contract.name, ctx.batch_id, reason,
                        list(zip(bad_line_ids(contract.name, ((r.file.uri, r.sha256, n) for r, n, _ in bad)),
                                 bad_line_records((r.file.uri, n, raw) for r, n, raw in bad), strict=True)),
                        since=min(r.file.modification_time for r in reads))
    selection.ledger = ledger_rows(contract, ((r.file.uri, r.file.size, r.file.modification_time, r.sha256,
                                               r.records) for r in reads), ctx.batch_id, datetime.now(UTC))
    added = [(c.name, c.type) for c in schema.added]
    drift = SchemaDrift(contract.bronze_table, added=added, source=f"landing {contract.name}") \
        if added or unfit else None
    staged = StagedBatch(
        contract=contract, ctx=ctx, path=path, schema=table_schema, rows=rows, score_histogram=histogram,
        window=f"{len(reads)} landing file(s)", extract_seconds=round(time.perf_counter() - started, 3),
        metadata=({"bronze.new_columns": ", ".join(f"{n} {t}" for n, t in added)} if added else {})
        | ({"bronze.unreadable_records": str(unfit)} if unfit else {})
        | ({"bronze.bad_lines": str(len(bad)), "bronze.quarantine": QUARANTINE_TABLE} if bad else {}),
        schema_drift=drift,
    )
    _record_ledger(staged, selection)
    staged.before_commit = lambda dt: drop_landed_elsewhere(staged, selection, dt, storage.settings.stage_dir)
    return staged


def _record_ledger(staged: StagedBatch, selection: FileSelection) -> None:
    staged.final_metadata = {k: v for k, v in staged.final_metadata.items() if k != LEDGER_KEY}
    staged.final_metadata |= ledger_metadata(selection.ledger) if selection.ledger else {}
    staged.commit_always = bool(selection.ledger)


def drop_landed_elsewhere(staged: StagedBatch, selection: FileSelection, dt: DeltaTable | None,
                          stage_base: Path) -> None:
    """Before a commit attempt: drop from the batch the files that commits made since the listing
    (another run at once) have landed — their records and ledger rows — so every record and file
    lands once. With ``allow_overwrites`` only the same version of a file counts."""
    if dt is None or not selection.ledger:
        return
    newer = dt.version() - (selection.table_version if selection.table_version is not None else -1)
    if newer <= 0:
        return
    committed = [LedgerRow.from_json(r) for entry in commit_history(dt, newer)
                 if isinstance(text := entry.get(LEDGER_KEY), str) for r in json.loads(text)]
    gone = landed_elsewhere(staged.contract, selection.ledger, committed, staged.ctx.batch_id)
    if not gone:
        return
    selection.ledger = [r for r in selection.ledger if r.path not in gone]
    _record_ledger(staged, selection)
    reader = staged.reader()
    drop = pa.array(sorted(gone), pa.string())
    histogram = np.zeros(101, dtype=np.int64)

    def kept() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            batch = batch.filter(pc.invert(pc.is_in(batch.column(SOURCE_FILE), drop)))
            histogram[:] += np.bincount(batch.column("data_quality_score").to_numpy(zero_copy_only=False),
                                        minlength=101)
            yield batch

    old = staged.path
    staged.path, staged.rows = write_stream(kept(), reader.schema, staged.contract.bronze_table, stage_base)
    staged.score_histogram = histogram
    old.unlink(missing_ok=True)
    selection.table_version = dt.version()
