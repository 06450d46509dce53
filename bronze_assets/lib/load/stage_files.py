"""The local engine's staging of landing-zone files (ARCHITECTURE §2.6): read the new files
streamed and vectorised (:mod:`~bronze_assets.lib.load.landing_lines`), type them by the table's
schema and evolve it (:mod:`~bronze_assets.lib.load.landing_typing`), quarantine bad lines,
enrich, stage.

Two passes keep memory bounded by a block, not by the files: the first types each block, hashes
and scores it (the records of both engines: :mod:`~bronze_assets.lib.load.landing_records`) and
writes the staged rows to a local Arrow file (:mod:`~bronze_assets.lib.load.landing_spill`; the
columns known when it was read); the second keeps one record per key (the latest file by
modification time, then the later line) and hashes and scores again the blocks spilled before a
later block added a column (NULL in them: those records did not have it). When the last spill file
has every column and loses no record it is the staging file (the earlier blocks appended to it),
else the kept rows are copied into one. A table without a primary key
appends: each record is identified by ``<file URI>#<line>``, so a record is never landed twice.
The batch's ledger rows ride in its last commit's metadata
(:mod:`bronze_assets.lib.delta.landing_ledger`); before each commit attempt the files another run
landed since the listing are dropped from the batch.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from bronze_assets.contracts import Contract
from bronze_assets.contracts.arrow import arrow_type
from bronze_assets.contracts.model import Evolution
from bronze_assets.contracts.types import PgType
from bronze_assets.lib.delta.landing_ledger import LEDGER_KEY, ledger_metadata
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE, quarantine_once
from bronze_assets.lib.delta.staging import StagedBatch, stage_dir, write_stream
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.enrich.metadata import BatchContext, bronze_schema, staged_schema
from bronze_assets.lib.load.landing_duckdb import duckdb_connection
from bronze_assets.lib.load.landing_lines import Block, LineChunk, UnreadableFile, check_chunk, file_blocks
from bronze_assets.lib.load.landing_records import (
    BAD_LINES_REASON,
    LANDING_SOURCE_SYSTEM,
    SOURCE_FILE,
    NewColumnsError,
    bad_line_ids,
    bad_line_records,
    enrich_records,
    landed_since_listing,
    landing_extras,
    ledger_rows,
)
from bronze_assets.lib.load.landing_schema import StoredSchema, evolved_types, write_schema
from bronze_assets.lib.load.landing_source import FileSelection, LandingFile
from bronze_assets.lib.load.landing_spill import Spill
from bronze_assets.lib.load.landing_typing import LINE, Schema, infer_column, typed_block
from bronze_assets.lib.overlap import ordered_map, read_ahead
from bronze_assets.lib.source.extract import INVALID_PREFIX
from bronze_assets.lib.source.schema import SchemaDrift

__all__ = ["NewColumnsError", "stage_files"]


@dataclass
class FileRead:
    """One file read: its ledger facts, how many records it had, its bad lines (line, raw text)."""

    file: LandingFile
    sha256: str = ""
    records: int = 0
    bad: list[tuple[int | None, str]] = field(default_factory=list)


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
    con = duckdb_connection()
    stage = stage_dir(storage.settings.stage_dir)
    dt = storage.open(contract.bronze_table)
    table_schema = None if dt is None else pa.schema(dt.schema().to_arrow())
    stored, evolved = evolved_types(contract, storage, table_schema)
    schema = Schema(contract, evolved)
    spill = Spill(stage, contract.bronze_table)
    try:
        reads, keys, spilled = _first_pass(selection, schema, ctx, con, stage, spill)
        return _second_pass(storage, selection, ctx, schema, stored, reads, keys, spilled, spill, started)
    finally:
        spill.remove()


def _file_blocks(selection: FileSelection, stage: Path
                 ) -> Iterator[tuple[int, Block | LineChunk | UnreadableFile | str]]:
    """Every file's blocks as read (on a DuckDB connection of its own, so this runs on a thread of
    its own ahead of the checks and the typing), each as ``(file index, block)``; a file refused as
    a whole gives its :class:`UnreadableFile`; each file ends with its sha256 (hex)."""
    con = duckdb_connection(threads=1)
    for i, file in enumerate(selection.files):
        digest = hashlib.sha256()
        try:
            for block in file_blocks(selection, file, con, stage, digest):
                yield i, block
        except UnreadableFile as exc:
            yield i, exc
        yield i, digest.hexdigest()


@dataclass
class Spilled:
    """What the first pass keeps in memory of a spilled block: which of its rows hold a value that
    did not fit its column, its score histogram and, for a table without a primary key, each row's
    line (its ``record_key``, should the block be enriched again)."""

    unfit: np.ndarray
    histogram: np.ndarray
    lines: pa.Array | None


def _staged_rows_schema(contract: Contract, extras: list[tuple[str, PgType]]) -> tuple[pa.Schema, pa.Schema]:
    """(the bronze table's schema, the staged rows' schema) with the columns ``extras``."""
    table_schema = bronze_schema(contract, landing_extras([pa.field(c, arrow_type(t)) for c, t in extras]))
    return table_schema, staged_schema(table_schema)


def _enriched(records: pa.RecordBatch, contract: Contract, ctx: BatchContext,
              extras: list[tuple[str, PgType]], lines: pa.Array | None) -> tuple[pa.RecordBatch, Spilled]:
    """Typed records (or staged rows, enriched again with more columns) as staged rows of the
    columns ``extras``, hashed and scored, and what :class:`Spilled` keeps of them."""
    out = enrich_records(records, contract, ctx, extras, lines)
    flags = [out.column(c).to_numpy(zero_copy_only=False) for c in out.schema.names
             if c.startswith(INVALID_PREFIX)]
    unfit = np.any(np.stack(flags), axis=0) if flags else np.zeros(out.num_rows, dtype=bool)
    histogram = np.bincount(out.column("data_quality_score").to_numpy(zero_copy_only=False), minlength=101)
    rows = out.select(_staged_rows_schema(contract, extras)[1].names)
    return rows, Spilled(unfit, histogram, lines if contract.keyless else None)


def without_key(records: pa.RecordBatch, good: pa.Table, pk: list[str]
                ) -> tuple[pa.RecordBatch, list[tuple[int | None, str]]]:
    """``records`` without those whose primary key is missing or did not fit its type, and those as
    bad lines (line number, raw text): a record the MERGE cannot place is quarantined with its file
    and line, never collapsed with the other keyless ones into one row."""
    null = pc.is_null(records.column(pk[0]))
    for name in pk[1:]:
        null = pc.or_(null, pc.is_null(records.column(name)))
    if not pc.any(null).as_py():
        return records, []
    lines = records.column(LINE).filter(null)
    raw = good.column("line").take(pc.index_in(lines, good.column("line_no")))
    found = zip(lines.to_pylist(), raw.to_pylist(), strict=True)
    return records.filter(pc.invert(null)), [(int(n), str(text).rstrip("\r\n")) for n, text in found]


def _first_pass(selection: FileSelection, schema: Schema, ctx: BatchContext, con: duckdb.DuckDBPyConnection,
                stage: Path, spill: Spill) -> tuple[list[FileRead], list[pl.DataFrame], list[Spilled]]:
    """Read every file block by block (ahead, on a thread of its own), check the blocks' lines two
    at a time on two threads, type each block by the columns known when it comes (a new field
    joins them, typed from this block, by the contract's evolution; decided here, in order), then
    hash and score it, two blocks at a time on two threads, and spill the staged rows in order."""
    contract = schema.contract
    pk = list(contract.primary_key)
    reads = [FileRead(file) for file in selection.files]
    keys: list[pl.DataFrame] = []
    spilled: list[Spilled] = []
    evolving = contract.landing is not None and contract.landing.evolution is not Evolution.NONE
    local = threading.local()  # each checking and typing thread's own DuckDB connection

    def connection() -> duckdb.DuckDBPyConnection:
        if getattr(local, "con", None) is None:
            local.con = duckdb_connection(threads=1)
        return local.con

    def checked(job: tuple[int, object]) -> tuple[int, object]:
        i, item = job
        return i, check_chunk(item, connection()) if isinstance(item, LineChunk) else item

    def planned() -> Iterator[tuple[int, object, Schema | None, list[str]]]:
        read = read_ahead(lambda: _file_blocks(selection, stage), depth=1, name="landing-read")
        for i, item in ordered_map(checked, read, name="landing-check"):
            if not isinstance(item, Block) or not item.good.num_rows:
                yield i, item, None, []
                continue
            plan = schema.plan(selection.files[i].uri, item.fields, ctx.batch_id) if evolving else None
            if plan is not None:
                schema.added += [infer_column(contract, c, item.good, con) for c in plan.added]
            yield i, item, schema.snapshot(), plan.rescued if plan else []

    def typed(job: tuple[int, object, Schema | None, list[str]]
              ) -> tuple[int, object, tuple[pa.RecordBatch, Spilled] | None]:
        i, item, known, rescued = job
        if known is None or not isinstance(item, Block):
            return i, item, None
        uri = selection.files[i].uri
        records = typed_block(item.good, known, rescued, item.keys, uri, connection())
        if pk:
            records, unkeyed = without_key(records, item.good, pk)
            item.bad += unkeyed
        extras = [(c.name, c.pg_type) for c in known.extras]
        return i, item, _enriched(records, contract, ctx, extras, records.column(LINE))

    for i, item, done in ordered_map(typed, planned(), name="landing-type"):
        read = reads[i]
        if isinstance(item, str):
            read.sha256 = item
        elif isinstance(item, UnreadableFile):
            read.bad.append((None, str(item)))
        elif isinstance(item, Block):
            read.bad += item.bad
        if done is None:
            continue
        rows, kept = done
        read.records += rows.num_rows
        if pk:
            frame = pl.from_arrow(rows.select(pk))
            assert isinstance(frame, pl.DataFrame)
            keys.append(frame)
        spilled.append(kept)
        spill.write(rows)
    return reads, keys, spilled


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
                 stored: StoredSchema | None, reads: list[FileRead], keys: list[pl.DataFrame],
                 spilled: list[Spilled], spill: Spill, started: float) -> StagedBatch:
    """Stage the spilled rows: one per key, the columns found after a block was spilled NULL in
    it (that block hashed and scored again); store the schema if it changed; quarantine the bad
    lines; the ledger rows. When the last spill file has every column and loses no row, it is
    the staging file, the earlier blocks appended to it."""
    contract = schema.contract
    extras = [(c.name, c.pg_type) for c in schema.extras]
    table_schema, rows_schema = _staged_rows_schema(contract, extras)
    keep = _kept(keys, list(contract.primary_key))
    histogram = np.zeros(101, dtype=np.int64)
    unfit = 0
    tail = spill.counts[-1] if spill.open_schema is not None else 0
    tail_rows = sum(s.unfit.size for s in spilled[len(spilled) - tail:]) if tail else 0
    total = sum(s.unfit.size for s in spilled)
    as_is = bool(tail) and spill.open_schema == rows_schema \
        and (keep is None or bool(keep[total - tail_rows:].all()))
    redone = spilled[:len(spilled) - tail] if as_is else spilled

    def batches() -> Iterator[tuple[pa.RecordBatch, Spilled, np.ndarray | None]]:
        offset = 0
        for batch, side in zip(spill.batches(closed_only=as_is), redone, strict=True):
            n = batch.num_rows
            yield batch, side, None if keep is None else keep[offset:offset + n]
            offset += n

    def final(item: tuple[pa.RecordBatch, Spilled, np.ndarray | None]) -> tuple[pa.RecordBatch, Spilled]:
        batch, side, kept = item
        if kept is not None and not kept.all():  # no copy of a batch kept whole
            mask = pa.array(kept)
            batch = batch.filter(mask)
            scores = batch.column("data_quality_score").to_numpy(zero_copy_only=False)
            side = Spilled(side.unfit[kept], np.bincount(scores, minlength=101),
                           None if side.lines is None else side.lines.filter(mask))
        if batch.schema != rows_schema and batch.num_rows:  # columns found later: hashed again
            return _enriched(batch, contract, ctx, extras, side.lines)
        return batch, side

    def records() -> Iterator[pa.RecordBatch]:  # two at a time, on two threads, in order
        nonlocal unfit
        for out, side in ordered_map(final, batches(), name="landing-enrich"):
            unfit += int(side.unfit.sum())
            histogram[:] += side.histogram
            if out.num_rows:
                yield out

    if as_is:
        for side in spilled[len(spilled) - tail:]:
            unfit += int(side.unfit.sum())
            histogram[:] += side.histogram
        path = spill.finish(records())
        rows = sum(s.unfit.size for s in spilled) if keep is None else int(keep.sum())
    else:
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
    staged.before_commit = lambda dt: drop_landed_elsewhere(staged, selection, dt, storage)
    return staged


def _record_ledger(staged: StagedBatch, selection: FileSelection) -> None:
    staged.final_metadata = {k: v for k, v in staged.final_metadata.items() if k != LEDGER_KEY}
    staged.final_metadata |= ledger_metadata(selection.ledger) if selection.ledger else {}
    staged.commit_always = bool(selection.ledger)


def drop_landed_elsewhere(staged: StagedBatch, selection: FileSelection, dt: DeltaTable | None,
                          storage: Storage) -> None:
    """Before a commit attempt: drop from the batch the files that commits made since the listing
    (another run at once) have landed — their records and ledger rows — so every record and file
    lands once. With ``allow_overwrites`` only the same version of a file counts."""
    gone = landed_since_listing(staged.contract, storage, dt, selection, staged.ctx.batch_id)
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
    staged.path, staged.rows = write_stream(kept(), reader.schema, staged.contract.bronze_table,
                                            storage.settings.stage_dir)
    staged.score_histogram = histogram
    old.unlink(missing_ok=True)
