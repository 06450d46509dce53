"""The typing of landing records by the table's columns (ARCHITECTURE §2.6).

One DuckDB query per block extracts every column with one parse, casting it to its column's type
with ``TRY_CAST``, so Python touches only the rare rescued value. A value that does not cast is
NULL in its column, kept in ``_rescued_data`` and scores ``schema_fail``; a column's type never
changes. New top-level fields follow the contract's ``evolution``; an added field's type is its
schema hint, else inferred from the first file that has it (``infer_column_types``), else text
(:mod:`~bronze_assets.lib.load.landing_schema` stores the table's schema, versioned)."""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bronze_assets.contracts import Contract
from bronze_assets.contracts.arrow import arrow_type
from bronze_assets.contracts.model import LandingFormat
from bronze_assets.contracts.types import PgType
from bronze_assets.lib.load.landing_duckdb import cast_sql, duck_type, json_path
from bronze_assets.lib.load.landing_records import RESCUED, SOURCE_FILE, Columns, plan_columns, rescued_data
from bronze_assets.lib.load.landing_schema import TEXT_CASTS, StoredColumn, new_column

LINE = "_line"  # the record's 1-based line (first pass only; a keyless record's key)


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

    def snapshot(self) -> Schema:
        """The columns as known now (later additions do not change it)."""
        return Schema(self.contract, list(self.evolved), list(self.added))

    def plan(self, uri: str, keys: set[str], batch_id: str) -> Columns:
        """What the batch does with the new fields of a block of ``uri`` (the contract's evolution)."""
        return plan_columns(self.contract, [(uri, keys)], [c.name for c in self.extras], batch_id)


def infer_column(contract: Contract, name: str, block: pa.Table, con: duckdb.DuckDBPyConnection
                 ) -> StoredColumn:
    """The column new field ``name`` becomes, from its values in ``block`` (see :func:`new_column`)."""
    assert contract.landing is not None
    con.register("good_lines", block)
    try:
        if contract.landing.format is LandingFormat.CSV:  # text values: which types do they all cast to
            value = f"json_extract_string(line, {json_path(name)})"
            counts = con.sql(f"SELECT count({value}), " + ", ".join(
                f"count({cast_sql(value, PgType.parse(t), '', name)})" for t in TEXT_CASTS)
                + " FROM good_lines").fetchall()[0]
            casts = {t: counts[0] > 0 and c == counts[0]
                     for t, c in zip(TEXT_CASTS, counts[1:], strict=True)}
            return new_column(contract, name, set(), casts)
        kinds = con.sql(f"SELECT DISTINCT json_type(line, {json_path(name)}) AS t FROM good_lines").fetchall()
        return new_column(contract, name, {k for (k,) in kinds if k is not None}, None)
    finally:
        con.unregister("good_lines")


def _has_any(keys: pa.Array | None, names: list[str], n: int) -> np.ndarray:
    """Per record, whether it has one of the fields ``names`` (``keys``: each record's field
    names; None: every record has every field of its block)."""
    if not names:
        return np.zeros(n, dtype=bool)
    if keys is None:
        return np.ones(n, dtype=bool)
    flat = pc.list_flatten(keys)
    hit = pc.is_in(flat, value_set=pa.array(names, flat.type)).to_numpy(zero_copy_only=False)
    found = np.zeros(n, dtype=bool)
    found[pc.list_parent_indices(keys).to_numpy()[hit]] = True
    return found


def typed_block(block: pa.Table, schema: Schema, rescued: list[str], keys: pa.Array | None, uri: str,
                con: duckdb.DuckDBPyConnection) -> pa.RecordBatch:
    """A block's valid records (``line_no``, ``line``; ``keys``: see :class:`Block`) typed: every
    known column (one JSON parse per record), ``_rescued_data`` (what did not fit, and the
    ``rescued`` fields), ``_source_file``, ``_line``. The raw line comes back only for a record
    that has something to rescue."""
    table = schema.contract.bronze_table
    typed = schema.typed()
    paths = ", ".join(json_path(name) for name, _ in typed)
    casts, flags = [], {}  # a text column takes any value: no cast, no flag
    for i, (name, type_) in enumerate(typed, start=1):
        if duck_type(type_, table, name) == "VARCHAR":
            casts.append(f"v[{i}] AS _c{i}")
        else:
            casts.append(f"{cast_sql(f'v[{i}]', type_, table, name)} AS _c{i}")
            flags[i] = f"(v[{i}] IS NOT NULL AND _c{i} IS NULL)"
    new_flag = _has_any(keys, rescued, block.num_rows)  # from the check's parse, not a new one
    outer = ["line_no AS _line_no", *(f"_c{i}" for i in range(1, len(typed) + 1)),
             *(f"{flag} AS _bad{i}" for i, flag in flags.items()),
             f"CASE WHEN {' OR '.join([*flags.values(), '_new'])} THEN line END AS _raw"]
    con.register("good_lines", block.select(["line_no", "line"]).append_column("_new", pa.array(new_flag)))
    try:  # one parse per record (v), each cast once; the raw line only where something is rescued
        out = con.sql(f"SELECT {', '.join(outer)} FROM (SELECT line_no, line, _new, v, {', '.join(casts)} "
                      f"FROM (SELECT *, json_extract_string(line, [{paths}]) AS v FROM good_lines))"
                      ).to_arrow_table()  # in the lines' order (DuckDB keeps insertion order)
    finally:
        con.unregister("good_lines")
    n = out.num_rows
    uris = pa.repeat(pa.scalar(uri, pa.string()), n)
    unfit = {name: out.column(f"_bad{i}").to_numpy(zero_copy_only=False).astype(bool) if i in flags
             else np.zeros(n, dtype=bool) for i, (name, _) in enumerate(typed, start=1)}
    arrays = {name: out.column(f"_c{i}").combine_chunks().cast(arrow_type(type_))
              for i, (name, type_) in enumerate(typed, start=1)}
    arrays |= {RESCUED: rescued_data(out.column("_raw").combine_chunks(), uris, unfit,
                                     dict.fromkeys(rescued, new_flag)),
               SOURCE_FILE: uris, LINE: out.column("_line_no").combine_chunks()}
    return pa.RecordBatch.from_pydict(arrays)
