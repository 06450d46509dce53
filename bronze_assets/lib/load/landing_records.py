"""The records of landing files as every engine builds them (ARCHITECTURE §2.6): the one home of
``_rescued_data``, the record hash and the score of a landing record, of the columns a batch adds
or rescues (evolution), of the quarantine records of bad lines and of the ledger rows.

Both engines read the files their own way (the local engine with DuckDB, the Spark engine with
Spark's readers or, on Databricks, Auto Loader) into *typed records*: the contract's columns in
their types, the columns loads added in theirs (:mod:`~bronze_assets.lib.load.landing_schema`:
hint, inferred, or text), ``_rescued_data`` and ``_source_file``.
:func:`enrich_records` turns typed records into the staged bronze rows (hash, score, partition
value) with the same Arrow code on both (on Spark inside ``mapInArrow``), so the same file gives
the same rows whichever engine lands it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from bronze_assets.contracts import ROW_KEY, Contract
from bronze_assets.contracts.arrow import arrow_type
from bronze_assets.contracts.model import ROW_KEY_SEPARATOR, Evolution
from bronze_assets.contracts.types import PgType
from bronze_assets.lib.delta.landing_ledger import LedgerRow, committed_rows
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.enrich.metadata import BatchContext, bronze_schema, enrich
from bronze_assets.lib.enrich.pgtext import hash_texts
from bronze_assets.lib.load.errors import SchemaMismatchError
from bronze_assets.lib.load.landing_source import FileSelection
from bronze_assets.lib.source.extract import INVALID_PREFIX
from bronze_assets.lib.source.schema import SchemaDrift

LANDING_SOURCE_SYSTEM = "landing"
SOURCE_FILE, RESCUED = "_source_file", "_rescued_data"
FILE_PATH = "_file_path"  # in _rescued_data: the file the record came from
BAD_LINES_REASON = ("{table}: lines of landing files that are not JSON objects, or records without "
                    "their primary key; each record holds the file, the line number (1-based) and the "
                    "raw text")


class NewColumnsError(SchemaMismatchError):
    """A landing file brought fields the table does not have, under ``failOnNewColumns``."""


@dataclass(frozen=True)
class Columns:
    """What a batch does with the fields its files hold beyond the contract's columns:
    ``evolved`` were added by earlier loads, ``added`` join the table now (addNewColumns),
    ``rescued`` go to ``_rescued_data`` (rescue); the others are ignored (none)."""

    evolved: list[str]
    added: list[str]
    rescued: list[str]
    types: Mapping[str, PgType] = field(default_factory=dict)  # of the extras; absent: text

    @property
    def extras(self) -> list[str]:
        """The table's columns beyond the contract's, in table order."""
        return [*self.evolved, *self.added]

    def typed_extras(self) -> list[tuple[str, PgType]]:
        """The extras with their types (text unless typed)."""
        return [(c, self.types.get(c, PgType.TEXT)) for c in self.extras]


def landing_extras(extras: Sequence[str | pa.Field] = ()) -> list[str | pa.Field]:
    """The columns a landing table has beyond the contract's and the §2.2 metadata (a name is a
    text column)."""
    return [SOURCE_FILE, RESCUED, *extras]


def evolved_columns(contract: Contract, table_schema: pa.Schema | None) -> list[str]:
    """The columns earlier loads added to a landing table of ``table_schema`` (None: no table yet),
    in table order."""
    if table_schema is None:
        return []
    known = set(bronze_schema(contract, landing_extras()).names)
    return [f.name for f in table_schema if f.name not in known]


def plan_columns(contract: Contract, keys_by_file: Iterable[tuple[str, set[str]]], evolved: list[str],
                 batch_id: str) -> Columns:
    """Which new fields of the files (``(uri, top-level field names)``, in landing order) the batch
    adds, rescues or ignores, by the contract's ``evolution``; under ``failOnNewColumns`` the first
    file with a new field fails the batch (:class:`NewColumnsError`, nothing written)."""
    landing = contract.landing
    assert landing is not None
    known = set(contract.column_names) | set(evolved) | {SOURCE_FILE, RESCUED}
    new: list[str] = []
    for uri, keys in keys_by_file:
        fresh = sorted(keys - known - set(new))
        if fresh and landing.evolution is Evolution.FAIL_ON_NEW_COLUMNS:
            drift = SchemaDrift(contract.bronze_table, added=[(c, "text") for c in fresh], source=uri)
            raise NewColumnsError(
                f"{contract.bronze_table}: file {uri} has fields the table does not have: "
                f"{', '.join(fresh)} (evolution failOnNewColumns); nothing of batch {batch_id} was "
                f"written. Add them to the contract's columns, or set evolution: addNewColumns, rescue or "
                f"none in its landing entry, then re-run.", drift, 0, batch_id)
        new += fresh
    return Columns(evolved, new if landing.evolution is Evolution.ADD_NEW_COLUMNS else [],
                   new if landing.evolution is Evolution.RESCUE else [])


def rescued_data(lines: pa.Array, uris: pa.Array, unfit: Mapping[str, np.ndarray],
                 new: Mapping[str, np.ndarray]) -> pa.Array:
    """``_rescued_data`` of each record (its JSON object text in ``lines``, its file in ``uris``):
    NULL, or a JSON object of the values that did not fit their column (``unfit``: column → flags)
    and of the new fields rescued (``new``: field → present), with ``_file_path``. Python parses
    only the rare record that has one."""
    mask = np.zeros(len(lines), dtype=bool)
    for flags in (*unfit.values(), *new.values()):
        mask |= flags
    out: list[str | None] = [None] * len(lines)
    for i in np.flatnonzero(mask):
        record = json.loads(lines[i].as_py())
        rescued = {c: record.get(c) for c, f in unfit.items() if f[i]}
        rescued |= {c: record[c] for c, f in new.items() if f[i] and c in record}
        out[i] = json.dumps(rescued | {FILE_PATH: uris[i].as_py()})
    return pa.array(out, pa.string())


def unfit_columns(rescued: pa.Array, contract: Contract, extras: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Per column (the contract's, then ``extras``), the records whose value is in
    ``_rescued_data`` (did not fit its type)."""
    flags = {c: np.zeros(len(rescued), dtype=bool) for c in [*contract.column_names, *extras]}
    valid = rescued.is_valid().to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(valid):
        for c in json.loads(rescued[i].as_py()):
            if c in flags:
                flags[c][i] = True
    return flags


def enrich_records(records: pa.RecordBatch | pa.Table, contract: Contract, ctx: BatchContext,
                   extras: Sequence[str | tuple[str, PgType]], lines: pa.Array | None = None
                   ) -> pa.RecordBatch:
    """Typed records (the contract's columns typed, ``extras`` in their types — a name alone is
    text —, ``_rescued_data``, ``_source_file``) as staged bronze rows: ``record_hash`` (§2.2 v2
    over the contract's columns, ``extras``, then ``_rescued_data``), the score (a rescued value
    is ``schema_fail``), the partition value (the load date). A column the records lack is NULL
    (a field found in a later file). A table without a primary key gets its ``record_key`` from
    ``lines`` (each record's 1-based line: :func:`record_keys`)."""
    n = records.num_rows
    typed = [*((c.name, c.type) for c in contract.columns),
             *((e, PgType.TEXT) if isinstance(e, str) else e for e in extras)]
    present = set(records.schema.names)
    values = {c: _array(records.column(c)).cast(arrow_type(t)) if c in present else pa.nulls(n, arrow_type(t))
              for c, t in typed}
    rescued = _array(records.column(RESCUED)).cast(pa.string())
    unfit = unfit_columns(rescued, contract, [c for c, _ in typed[len(contract.columns):]])
    columns: dict[str, pa.Array] = dict(values)
    columns["record_hash"] = hash_texts([*((values[c], t) for c, t in typed), rescued])
    columns |= {INVALID_PREFIX + c: pa.array(f) for c, f in unfit.items() if f.any()}
    if contract.partitioning.delta_column:
        columns[contract.partitioning.delta_column] = pa.repeat(pa.scalar(ctx.load_date, pa.date32()), n)
    uris = _array(records.column(SOURCE_FILE)).cast(pa.string())
    columns |= {SOURCE_FILE: uris, RESCUED: rescued}
    fields = [pa.field(c, arrow_type(t)) for c, t in typed[len(contract.columns):]]
    batch = enrich(pa.RecordBatch.from_pydict(columns), contract, ctx, landing_extras(fields))
    if not contract.keyless:
        return batch
    if lines is None:
        raise ValueError(f"{contract.bronze_table}: a landing table without a primary key needs each "
                         f"record's line (its record_key is <file URI>#<line>)")
    return batch.append_column(pa.field(ROW_KEY, pa.string()), record_keys(uris, lines))


def record_keys(uris: pa.Array, lines: pa.Array) -> pa.Array:
    """The ``record_key`` of a landing table without a primary key: ``<file URI>#<line>`` (a CSV
    or Parquet file: the record's number), so re-landing a file never adds a record twice."""
    return pc.binary_join_element_wise(uris, lines.cast(pa.string()), ROW_KEY_SEPARATOR)


def _array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def bad_line_records(bad: Iterable[tuple[str, int | None, str]]) -> list[str]:
    """The ``bz_quarantine`` records of bad lines ``(file URI, 1-based line, raw text)``."""
    return [json.dumps({"file": uri, "line": line, "raw": raw}) for uri, line, raw in bad]


def bad_line_ids(table: str, bad: Iterable[tuple[str, str, int | None]]) -> list[str]:
    """The ``quarantine_id`` of each bad line ``(file URI, file sha256, line)``: it names the line,
    so a line quarantined by a killed run (or by another run at once) is not quarantined again."""
    return [str(uuid.UUID(bytes=hashlib.sha256(f"{table}\n{uri}\n{sha}\n{line}".encode()).digest()[:16]))
            for uri, sha, line in bad]


def landed_since_listing(contract: Contract, storage: Storage, dt: DeltaTable | None,
                         selection: FileSelection, batch_id: str) -> set[str]:
    """Before a commit attempt, on either engine: the files of the batch's ledger rows
    (``selection.ledger``) that other batches' commits made since the listing (another run at
    once, either engine) have landed; with ``allow_overwrites`` only the same version of a file
    counts. The listing's table version moves to ``dt``'s (those commits are checked)."""
    if dt is None or not selection.ledger:
        return set()
    since = selection.table_version if selection.table_version is not None else -1
    committed = committed_rows(storage, contract.bronze_table, dt, newer_than=since)
    selection.table_version = dt.version()
    landed = {r.path: (r.size, r.modification_time) for r in committed if r.batch_id != batch_id}
    overwrites = contract.landing is not None and contract.landing.allow_overwrites
    return {r.path for r in selection.ledger if r.path in landed
            and (not overwrites or landed[r.path] == (r.size, r.modification_time))}


def ledger_rows(contract: Contract, files: Iterable[tuple[str, int, datetime, str, int]], batch_id: str,
                ingested_at: datetime) -> list[LedgerRow]:
    """The ledger rows of the batch's files ``(URI, size, modification time, sha256, records)``."""
    return [LedgerRow(contract.bronze_table, uri, size, mtime, sha, rows, batch_id, ingested_at)
            for uri, size, mtime, sha, rows in files]
