"""The local engine's staging of landing-zone files (ARCHITECTURE §2.6): read the new files
vectorised, type them by the contract, evolve the schema, quarantine bad lines, enrich, stage.

JSON Lines are parsed by DuckDB (already the engine of the record hash; a CSV file's records
become JSON objects of their text fields in DuckDB's CSV reader, its rejected rows bad lines; a
Parquet file's rows JSON objects of their values): one
query per file validates every line, extracts each field as text and casts it to its column's type with
``TRY_CAST``, so Python touches only the rare bad line or rescued value. A value that does not
cast is NULL in its column, kept in ``_rescued_data`` and scores ``schema_fail``; a column's type
never changes. New top-level fields follow the contract's ``evolution``; an added field is a
nullable text column. Rescue, hash, score and evolution are the Spark engine's too
(:mod:`bronze_assets.lib.load.landing_records`). Within a run a key's last record wins (files
oldest first, then line order). The batch's ledger rows ride in its last commit's metadata
(:mod:`bronze_assets.lib.delta.landing_ledger`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bronze_assets.contracts import Contract
from bronze_assets.contracts.arrow import source_schema
from bronze_assets.contracts.model import LandingFormat
from bronze_assets.lib.delta.landing_ledger import ledger_metadata
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE, quarantine_rows
from bronze_assets.lib.delta.staging import StagedBatch, stage_dir, write_stream
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.enrich.metadata import BatchContext, bronze_schema, staged_schema
from bronze_assets.lib.load.landing_records import (
    BAD_LINES_REASON,
    LANDING_SOURCE_SYSTEM,
    RESCUED,
    SOURCE_FILE,
    Columns,
    bad_line_records,
    enrich_records,
    evolved_columns,
    landing_extras,
    ledger_rows,
    plan_columns,
    rescued_data,
)
from bronze_assets.lib.load.landing_source import FileSelection, LandingFile
from bronze_assets.lib.source.schema import SchemaDrift

_HAS, _NEW = "_has:", "_new:"


@dataclass
class ParsedFile:
    """One file read: its ledger facts, its valid object lines (``line_no``, ``line``) and its
    bad lines (1-based number, raw text)."""

    file: LandingFile
    sha256: str
    lines: pa.Table
    bad: list[tuple[int, str]]
    keys: set[str]


def _duck_type(field: pa.Field, table: str) -> str:
    t = field.type
    simple = {pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float32(): "FLOAT",
              pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN", pa.string(): "VARCHAR", pa.date32(): "DATE",
              pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ", pa.timestamp("us"): "TIMESTAMP"}
    if t in simple:
        return simple[t]
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    raise ValueError(f"{table}: column {field.name} has type {t}, which landing files cannot fill yet; "
                     f"declare it as text (or a number, boolean, date or timestamp type)")


def _path(name: str) -> str:
    return "'$.\"" + name.replace("\\", "\\\\").replace('"', '\\"').replace("'", "''") + "\"'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _connection() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def _json_lines(data: bytes, con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The non-blank lines of a JSON Lines file: ``line_no`` (1-based), ``line``, ``ok`` (a JSON object)."""
    text = data.decode("utf-8", errors="replace")
    raw = text.split("\n") if text else []
    table = pa.table({"line_no": pa.array(np.arange(1, len(raw) + 1, dtype=np.int64)),
                      "line": pa.array(raw, pa.string())})
    con.register("raw_lines", table)
    try:
        return con.sql("SELECT line_no, rtrim(line, chr(13)) AS line, "
                       "json_valid(line) AND left(ltrim(line), 1) = '{' AS ok FROM raw_lines "
                       "WHERE trim(rtrim(line, chr(13))) <> ''").to_arrow_table()
    finally:
        con.unregister("raw_lines")


def _csv_lines(data: bytes, stage: Path) -> pa.Table:
    """The records of a CSV file with a header, each as a JSON object of its fields (text), so
    they go the JSON Lines way; a row DuckDB's reader rejects (wrong field count, bad quoting) is a
    bad line with its 1-based line number and raw text."""
    if not data.strip():
        return pa.table({"line_no": pa.array([], pa.int64()), "line": pa.array([], pa.string()),
                         "ok": pa.array([], pa.bool_())})
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
    n = good.num_rows  # accepted rows keep their order; their numbers only order them
    return pa.table({
        "line_no": pa.concat_arrays([pa.array(np.arange(1, n + 1, dtype=np.int64)),
                                     bad.column("line_no").combine_chunks().cast(pa.int64())]),
        "line": pa.concat_arrays([good.column("line").combine_chunks().cast(pa.string()),
                                  bad.column("line").combine_chunks().cast(pa.string())]),
        "ok": pa.array([True] * n + [False] * bad.num_rows, pa.bool_())})


def _parquet_records(data: bytes, con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The rows of a Parquet file, each as a JSON object of its fields (numbered from 1). A file
    the reader refuses is one bad record (line NULL) holding the reader's message."""
    try:
        rows = pq.read_table(pa.BufferReader(data)) if data else None
    except (pa.ArrowException, OSError) as exc:
        return pa.table({"line_no": pa.array([None], pa.int64()),
                         "line": pa.array([f"unreadable Parquet file: {exc}"]), "ok": pa.array([False])})
    if rows is None or rows.num_rows == 0:
        return pa.table({"line_no": pa.array([], pa.int64()), "line": pa.array([], pa.string()),
                         "ok": pa.array([], pa.bool_())})
    con.register("parquet_rows", rows)
    try:
        lines = con.sql("SELECT to_json(t) AS line FROM parquet_rows t").to_arrow_table()
    finally:
        con.unregister("parquet_rows")
    n = lines.num_rows
    return pa.table({"line_no": pa.array(np.arange(1, n + 1, dtype=np.int64)),
                     "line": lines.column("line").combine_chunks().cast(pa.string()),
                     "ok": pa.array(np.ones(n, dtype=bool))})


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def read_file(selection: FileSelection, file: LandingFile, con: duckdb.DuckDBPyConnection, stage: Path
              ) -> ParsedFile:
    """Read ``file`` (gunzipped when it ends in ``.gz``) and split its records into valid JSON
    objects and bad lines (a blank line is neither); ``stage``: where a CSV file is put for DuckDB."""
    with selection.filesystem.open_input_stream(file.path, compression=None) as stream:
        data = stream.read()
    digest = hashlib.sha256(data).hexdigest()
    if file.path.endswith(".gz") and data:
        data = gzip.decompress(data)
    landing = selection.contract.landing
    if landing is not None and landing.format is LandingFormat.CSV:
        checked = _csv_lines(data, stage)
    elif landing is not None and landing.format is LandingFormat.PARQUET:
        checked = _parquet_records(data, con)
    else:
        checked = _json_lines(data, con)
    ok = checked.column("ok")
    good = checked.filter(ok).select(["line_no", "line"])
    bad_rows = checked.filter(pc.invert(ok))
    bad = list(zip(bad_rows.column("line_no").to_pylist(), bad_rows.column("line").to_pylist(), strict=True))
    keys: set[str] = set()
    if good.num_rows:
        con.register("good_lines", good)
        found = con.sql("SELECT DISTINCT unnest(json_keys(line)) AS k FROM good_lines").to_arrow_table()
        con.unregister("good_lines")
        keys = set(found.column("k").to_pylist())
    return ParsedFile(file, digest, good, bad, keys)


def _typed(parsed: ParsedFile, contract: Contract, columns: Columns, con: duckdb.DuckDBPyConnection
           ) -> pa.Table:
    """The file's records: each contract column typed (```_has:`` it holds a value), each added
    field as text, each field rescued as new (``_new:`` it is present), and the line itself."""
    select = ["line_no", "line"]
    for f in source_schema(contract):
        text = f"json_extract_string(line, {_path(f.name)})"
        select += [f"TRY_CAST({text} AS {_duck_type(f, contract.bronze_table)}) AS {_ident(f.name)}",
                   f"{text} IS NOT NULL AS {_ident(_HAS + f.name)}"]
    select += [f"json_extract_string(line, {_path(c)}) AS {_ident(c)}" for c in columns.extras]
    select += [f"json_extract(line, {_path(c)}) IS NOT NULL AS {_ident(_NEW + c)}" for c in columns.rescued]
    con.register("good_lines", parsed.lines)
    try:
        return con.sql(f"SELECT {', '.join(select)} FROM good_lines ORDER BY line_no").to_arrow_table()
    finally:
        con.unregister("good_lines")


def _records(parsed: ParsedFile, contract: Contract, ctx: BatchContext, columns: Columns,
             con: duckdb.DuckDBPyConnection) -> tuple[pa.RecordBatch, int]:
    """The file's records enriched as the bronze table stages them, and how many had a value that
    did not fit its column's type."""
    typed = _typed(parsed, contract, columns, con)
    n = typed.num_rows
    unfit: dict[str, np.ndarray] = {}
    for c in contract.column_names:
        has = typed.column(_HAS + c).to_numpy(zero_copy_only=False)
        unfit[c] = np.asarray(has & typed.column(c).is_null().to_numpy(zero_copy_only=False), dtype=bool)
    new = {c: np.asarray(typed.column(_NEW + c).to_numpy(zero_copy_only=False), dtype=bool)
           for c in columns.rescued}
    uris = pa.repeat(pa.scalar(parsed.file.uri, pa.string()), n)
    line = typed.column("line").combine_chunks()
    records = {f.name: typed.column(f.name).combine_chunks().cast(f.type) for f in source_schema(contract)}
    records |= {c: typed.column(c).combine_chunks() for c in columns.extras}
    records |= {RESCUED: rescued_data(line, uris, unfit, new), SOURCE_FILE: uris}
    batch = enrich_records(pa.table(records), contract, ctx, columns.extras)
    return batch, int(np.any(np.stack(list(unfit.values())), axis=0).sum()) if n else 0


def _table_schema(storage: Storage, contract: Contract) -> pa.Schema | None:
    dt = storage.open(contract.bronze_table)
    return None if dt is None else pa.schema(dt.schema().to_arrow())


def stage_files(contract: Contract, storage: Storage, selection: FileSelection,
                batch_time: datetime | None = None) -> StagedBatch:
    """Read, type, evolve, enrich and stage the selected files; the bad lines go to
    ``bz_quarantine`` with file and line; the files' ledger rows go in ``selection.ledger`` and in
    the metadata of the batch's last commit."""
    started = time.perf_counter()
    landing = contract.landing
    if landing is None:
        raise ValueError(f"{contract.bronze_table} is not a landing table (its contract has no 'landing')")
    ctx = BatchContext(str(uuid.uuid4()), batch_time or datetime.now(UTC), LANDING_SOURCE_SYSTEM)
    con = _connection()
    stage = stage_dir(storage.settings.stage_dir)
    parsed = [read_file(selection, f, con, stage) for f in selection.files]
    columns = plan_columns(contract, ((p.file.uri, p.keys) for p in parsed),
                           evolved_columns(contract, _table_schema(storage, contract)), ctx.batch_id)
    added = columns.added
    schema = bronze_schema(contract, landing_extras(columns.extras))
    batches, unfit, rows_per_file = [], 0, []
    for p in parsed:
        batch, bad_values = _records(p, contract, ctx, columns, con)
        batches.append(batch)
        unfit += bad_values
        rows_per_file.append(batch.num_rows)
    rows_schema = staged_schema(schema)
    frame = pl.from_arrow(pa.Table.from_batches([b.select(rows_schema.names) for b in batches],
                                                rows_schema)) if batches else None
    if frame is not None and contract.primary_key:  # one record per key: the latest file's later line
        frame = frame.unique(subset=list(contract.primary_key), keep="last", maintain_order=True)
    records = frame.to_arrow().cast(rows_schema).to_batches() if isinstance(frame, pl.DataFrame) else []
    histogram = np.zeros(101, dtype=np.int64)
    for b in records:
        histogram += np.bincount(b.column("data_quality_score").to_numpy(zero_copy_only=False), minlength=101)
    path, rows = write_stream(iter(records), rows_schema, contract.bronze_table, storage.settings.stage_dir)
    bad = bad_line_records((p.file.uri, n, raw) for p in parsed for n, raw in p.bad)
    if bad:
        quarantine_rows(storage, contract.name, ctx.batch_id,
                        BAD_LINES_REASON.format(table=contract.bronze_table),
                        [pa.RecordBatch.from_pydict({"record": pa.array(bad, pa.string())})])
    selection.ledger = ledger_rows(contract, ((p.file.uri, p.file.size, p.file.modification_time, p.sha256, n)
                                              for p, n in zip(parsed, rows_per_file, strict=True)),
                                   ctx.batch_id, datetime.now(UTC))
    drift = SchemaDrift(contract.bronze_table, added=[(c, "text") for c in added],
                        source=f"landing {contract.name}") if added or unfit else None
    staged = StagedBatch(
        contract=contract, ctx=ctx, path=path, schema=schema, rows=rows, score_histogram=histogram,
        window=f"{len(parsed)} landing file(s)", extract_seconds=round(time.perf_counter() - started, 3),
        metadata=({"bronze.new_columns": ", ".join(added)} if added else {})
        | ({"bronze.unreadable_records": str(unfit)} if unfit else {})
        | ({"bronze.bad_lines": str(len(bad)), "bronze.quarantine": QUARANTINE_TABLE} if bad else {}),
        schema_drift=drift,
    )
    staged.final_metadata |= ledger_metadata(selection.ledger) if selection.ledger else {}
    staged.commit_always = bool(selection.ledger)
    return staged
