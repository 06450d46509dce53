"""The checks every bronze load runs, as engine- and Dagster-neutral outcomes: names, severities,
descriptions and plain metadata (``defs/checks.py`` turns them into ``dg.AssetCheckResult``, the
Spark job into Pipes check reports). Failing keys go into the metadata as samples."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from bronze_assets.contracts import CONTRACTS, LANDING_CONTRACTS, Contract
from bronze_assets.contracts.model import ForeignKey
from bronze_assets.lib.delta.merge_result import UniqueWrite
from bronze_assets.lib.delta.query import (
    query_tables,
    quoted,
    read_columns,
    rows_and_key_bounds,
    scan_columns,
    table_rows,
)
from bronze_assets.lib.delta.staging import score_percentile, score_sum
from bronze_assets.lib.delta.storage import OpenedTables, Storage
from bronze_assets.lib.enrich.metadata import ACTIVE
from bronze_assets.lib.quality.check_memo import keep_outcome, kept_outcome, log_state, tables_state
from bronze_assets.lib.quality.key_sets import KeySet, dense, unique_within
from bronze_assets.lib.quality.validate import QualityReport
from bronze_assets.lib.source.ddl import quote_ident
from bronze_assets.lib.source.schema import SchemaDrift

SCHEMA_CONTRACT = "schema_contract"
QUALITY_SCORE = "quality_score"
KEY_UNIQUENESS = "key_uniqueness"
REFERENTIAL_INTEGRITY = "referential_integrity"
LANDING_FILES_CHANGED = "landing_files_changed"  # a landing table's ingested file changed since (§2.6)
QUALITY_KPI = 80.0
STATUS = "record_status"
ERROR, WARN = "ERROR", "WARN"
URL_KEYS = frozenset({"data_docs"})  # metadata values that are links


@dataclass
class CheckOutcome:
    """One check's result: ``severity`` is ERROR or WARN; metadata values are plain (numbers,
    text, lists and dicts of samples, links under :data:`URL_KEYS`)."""

    name: str
    passed: bool
    severity: str
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def check_names(contract: Contract) -> list[str]:
    """The checks of ``contract``'s asset (referential integrity only with foreign keys,
    landing_files_changed only for a landing table)."""
    return [SCHEMA_CONTRACT, QUALITY_SCORE, KEY_UNIQUENESS,
            *([REFERENTIAL_INTEGRITY] if contract.foreign_keys else []),
            *([LANDING_FILES_CHANGED] if contract.landing is not None else [])]


def landing_files_changed(contract: Contract, changed: list[str]) -> CheckOutcome:
    """WARN when files the table ingested have changed since (same URI, other size or time): they
    are not landed again unless the contract sets ``allow_overwrites``."""
    overwrites = contract.landing is not None and contract.landing.allow_overwrites
    what = "landed again (allow_overwrites)" if overwrites else \
        "not landed again; set allow_overwrites in the landing entry to merge their records again"
    return CheckOutcome(LANDING_FILES_CHANGED, not changed, WARN,
                        f"{len(changed)} ingested file(s) changed since: {what}" if changed else None,
                        {"changed_files": len(changed), "files": ", ".join(changed[:20]) or "-"})


def schema_contract(drift: SchemaDrift, quarantined: int | None = None) -> CheckOutcome:
    """ERROR on a missing column or changed type; new columns are reported, not failed."""
    metadata: dict[str, object] = {
        "missing_columns": ", ".join(drift.missing) or "-",
        "changed_types": ", ".join(f"{c}: {want} -> {got}" for c, want, got in drift.changed) or "-",
        "new_columns": ", ".join(f"{c} ({t})" for c, t in drift.added) or "-",
    }
    if drift.rescued:
        metadata["read_per_record"] = ", ".join(f"{c}: {want} <- {got}" for c, want, got in drift.rescued)
    if quarantined is not None:
        metadata["quarantined_rows"] = quarantined
    return CheckOutcome(
        SCHEMA_CONTRACT, passed=not drift.breaking, severity=ERROR,
        metadata=metadata, description=drift.describe(),
    )


def quality_score(histogram: np.ndarray, report: QualityReport) -> CheckOutcome:
    """Score distribution of the batch (``histogram``: rows per score 0..100) plus GX violation
    counts per rule (WARN below the KPI)."""
    rows = int(histogram.sum())
    metadata: dict[str, object] = {"rows": rows, "gx_counts_match_score": report.agree}
    average = score_sum(histogram) / rows if rows else 100.0
    if rows:
        below = int(histogram[: int(QUALITY_KPI)].sum())
        metadata |= {
            "avg_score": round(average, 2),
            "p5_score": score_percentile(histogram, 5),
            "p50_score": score_percentile(histogram, 50),
            "share_below_80": round(below / rows, 4),
        }
    metadata |= {f"violations {rule}": n for rule, n in sorted(report.gx_counts.items())}
    if report.docs_url:
        metadata["data_docs"] = report.docs_url
    samples = {rule: keys for rule, keys in report.failing_keys.items() if keys}
    if samples:
        metadata["failing_keys_sample"] = samples
    return CheckOutcome(QUALITY_SCORE, passed=average >= QUALITY_KPI, severity=WARN, metadata=metadata,
                        description=f"average score {average:.1f} (KPI {QUALITY_KPI:.0f})")


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _unless_passed_at(storage: Storage, table: str, check: str, state: Mapping[str, str],
                      compute: Callable[[], CheckOutcome]) -> CheckOutcome:
    """``compute()``, unless ``check`` passed on ``table`` when the tables it reads were in the
    ``state`` they are in now: then that outcome, without reading their data again
    (:mod:`~bronze_assets.lib.quality.check_memo`). An outcome is kept when JSON holds it exactly
    (a sample of dates or bytes is not: that one is computed each time)."""
    kept = kept_outcome(storage, table, check, state)
    if kept is not None:
        return CheckOutcome(**kept)
    outcome = compute()
    plain = asdict(outcome)
    try:
        exact = json.loads(json.dumps(plain)) == plain
    except (TypeError, ValueError):
        exact = False
    if exact:
        keep_outcome(storage, table, check, state, plain)
    return outcome


def key_uniqueness(contract: Contract, storage: Storage, tables: OpenedTables | None = None,
                   written: UniqueWrite | None = None) -> CheckOutcome:
    """Duplicate primary keys among all bronze rows (ERROR); run after the MERGE. One integer key
    is marked in a bitmap of its range while its column is streamed (memory: one byte per value
    of the range); other keys, or a duplicate found so, are counted by DataFusion in one streamed
    aggregation (memory holds the key counts, not the rows).
    A table at the version it was last computed at gives that outcome again without a read.
    ``tables``: the run's opened tables (shared with the other checks). ``written``: the load
    created the table from keys it found distinct (:class:`UniqueWrite`); while the table is still
    that table at that version and its log counts the rows written, its keys are unique without a
    read (any other commit, a planted duplicate included, is another version: counted)."""
    dt = (tables or OpenedTables(storage)).open(contract.bronze_table)
    if dt is None:
        return CheckOutcome(KEY_UNIQUENESS, passed=True, severity=ERROR, metadata={"rows": 0})
    state = tables_state({contract.bronze_table: dt})
    if _written_is(dt, written):
        assert written is not None
        outcome = _every_key_once(written.rows)
        keep_outcome(storage, contract.bronze_table, KEY_UNIQUENESS, state, asdict(outcome))
        return outcome
    return _unless_passed_at(storage, contract.bronze_table, KEY_UNIQUENESS, state,
                             lambda: _key_uniqueness(contract, dt))


def _written_is(dt: DeltaTable, written: UniqueWrite | None) -> bool:
    """Whether ``written`` is about ``dt`` as it is: the same table at the same version, its log
    counting the rows written."""
    return written is not None and tables_state({"t": dt})["t"] == f"{written.table_id}@{written.version}" \
        and table_rows(dt) == written.rows


def _every_key_once(rows: int) -> CheckOutcome:
    return CheckOutcome(KEY_UNIQUENESS, passed=True, severity=ERROR, description="every key once",
                        metadata={"rows": rows, "duplicate_rows": 0, "duplicate_keys_sample": []})


def _key_uniqueness(contract: Contract, dt: DeltaTable) -> CheckOutcome:
    unique = _unique_integer_key(contract, dt)
    if unique is not None:
        return _every_key_once(unique)
    keys = quoted(contract.merge_key)
    rows = int(query_tables({"t": dt}, "SELECT count(*) AS n FROM t")["n"][0].as_py())
    dupes = _frame(query_tables({"t": dt}, f"SELECT {keys}, count(*) AS n FROM t GROUP BY {keys} "
                                           f"HAVING count(*) > 1 ORDER BY {keys}"))
    duplicate_rows = int(dupes["n"].sum()) if dupes.height else 0
    sample = dupes.head(5).select(contract.merge_key).to_dicts()
    return CheckOutcome(
        KEY_UNIQUENESS, passed=duplicate_rows == 0, severity=ERROR,
        description=f"{duplicate_rows:,} rows share a primary key" if duplicate_rows else "every key once",
        metadata={"rows": rows, "duplicate_rows": duplicate_rows, "duplicate_keys_sample": sample},
    )


def _unique_integer_key(contract: Contract, dt: DeltaTable) -> int | None:
    """The rows of ``dt`` when its one integer key column holds every value once, found by one
    scan of that column into a bitmap of its range (the log's statistics bound it); None when
    that does not show it (another key, sparse values, a NULL, a duplicate): the caller counts
    the keys with DataFusion, which also gives the duplicates' figures and samples."""
    if len(contract.merge_key) != 1:
        return None
    (column,) = contract.merge_key
    kind = pa.schema(dt.schema().to_arrow()).field(column).type
    if not pa.types.is_signed_integer(kind):
        return None
    rows, bounds = rows_and_key_bounds(dt, column)
    if bounds is None or bounds[0] is None or bounds[1] is None:
        return None
    low, high = bounds
    if not dense(low, high, rows):
        return None
    reader = pa.RecordBatchReader.from_stream(scan_columns(dt, [column]))
    batches = (_plain(batch.column(0)) for batch in reader)
    found = unique_within(batches, low, high)
    return found[0] if found is not None and found[1] else None


def referential_integrity(contract: Contract, storage: Storage, tables: OpenedTables | None = None,
                          written: UniqueWrite | None = None) -> CheckOutcome:
    """Orphans per foreign key: ACTIVE child values with no ACTIVE parent key in bronze (WARN).
    The child's values are streamed and looked up in the parent's ACTIVE keys (a bitmap of their
    range, or a hash set: :class:`~bronze_assets.lib.quality.key_sets.KeySet`). Child and
    parents at the versions it was last computed at give that outcome again without a read.
    ``tables``: the run's opened tables (shared with the other checks). ``written``: the load
    created the child (:class:`UniqueWrite`); while it is that table at that version with the
    rows written, its foreign keys are read from the load's staged rows, not the table's files."""
    opened = tables or OpenedTables(storage)
    child = opened.open(contract.bronze_table)
    names = sorted({f"bz_{fk.parent_table}" for fk in contract.foreign_keys})
    # the parents are opened only to compute: their state comes from a listing of their logs
    states = {name: log_state(storage, name) for name in names}
    staged = _staged_rows(contract, child, written)

    def compute() -> CheckOutcome:
        parents = {name: opened.read_only(name) for name in names}
        return _referential_integrity(contract, child, parents, staged)

    if child is None or any(state is None for state in states.values()):
        return compute()
    return _unless_passed_at(storage, contract.bronze_table, REFERENTIAL_INTEGRITY,
                             tables_state({contract.bronze_table: child}) | states, compute)


def _staged_rows(contract: Contract, child: DeltaTable | None, written: UniqueWrite | None
                 ) -> Callable[[], pa.RecordBatchReader] | None:
    """The load's staged rows when they are ``child``'s rows as they are (``written`` is about
    this table at this version, its log counts those rows, no foreign key is a protected column)."""
    if child is None or written is None or written.staged is None \
            or set(contract.encrypted_columns) & {fk.column for fk in contract.foreign_keys}:
        return None
    return written.staged if _written_is(child, written) else None


def _referential_integrity(contract: Contract, child: DeltaTable | None,
                           parents: Mapping[str, DeltaTable | None],
                           staged: Callable[[], pa.RecordBatchReader] | None = None) -> CheckOutcome:
    metadata: dict[str, object] = {}
    orphans_total = 0
    loaded = {fk: parent for fk in contract.foreign_keys
              if child is not None and (parent := parents[f"bz_{fk.parent_table}"]) is not None}
    found = _orphans(child, loaded, staged) if child is not None and loaded else {}
    for fk in contract.foreign_keys:
        label = f"{fk.column} -> {fk.parent_table}.{fk.parent_column}"
        if fk not in found:
            metadata[f"orphans {label}"] = "parent or child not loaded yet"
            continue
        count, orphans = found[fk]
        orphan_rows = len(orphans)
        orphans_total += orphan_rows
        metadata[f"orphans {label}"] = orphan_rows
        metadata[f"orphan_rate {label}"] = round(orphan_rows / count, 6) if count else 0.0
        if orphan_rows:
            sample = _frame(pa.table({"v": orphans})).get_column("v").unique().sort().head(5).to_list()
            metadata[f"orphan_values_sample {label}"] = sample
    return CheckOutcome(
        REFERENTIAL_INTEGRITY, passed=orphans_total == 0, severity=WARN, metadata=metadata,
        description=f"{orphans_total:,} ACTIVE rows reference a parent key missing from bronze"
        if orphans_total else "every foreign key has its parent",
    )


def _orphans(child: DeltaTable, parents: Mapping[ForeignKey, DeltaTable],
             staged: Callable[[], pa.RecordBatchReader] | None = None
             ) -> dict[ForeignKey, tuple[int, pa.Array]]:
    """Per foreign key: (ACTIVE child rows holding a value, the values with no ACTIVE parent key).
    One streamed scan of the child reads every foreign key column; each parent's distinct keys are
    read once per version in this process (:func:`_parent_keys`: on an object store a table that
    is the parent of three is read once, not three times). A column whose type differs from its
    parent key's is joined by DataFusion instead, which coerces the two."""
    child_types = {f.name: f.type for f in pa.schema(child.schema().to_arrow())}
    same, coerced = {}, {}
    for fk, parent in parents.items():
        parent_type = pa.schema(parent.schema().to_arrow()).field(fk.parent_column).type
        if child_types[fk.column] == parent_type:
            same[fk] = _parent_keys(parent, fk.parent_column, parent_type)
        else:
            coerced[fk] = parent
    found = {fk: _orphans_joined(child, fk, parent) for fk, parent in coerced.items()}
    if not same:
        return found
    counts, missing = dict.fromkeys(same, 0), {fk: [] for fk in same}
    pending: dict[ForeignKey, list[pa.Array]] = {fk: [] for fk in same}

    def look_up(fk: ForeignKey) -> None:  # is_in hashes its value set on every call: few, large calls
        values = pa.chunked_array(pending[fk], type=child_types[fk.column]).combine_chunks()
        pending[fk] = []
        missing[fk].append(same[fk].missing(values))

    columns = sorted({fk.column for fk in same})
    # the load's staged rows, when they are the child's (all ACTIVE), else its ACTIVE rows' files
    frames = staged() if staged is not None else \
        pa.RecordBatchReader.from_stream(scan_columns(child, columns, f"{STATUS} = '{ACTIVE}'"))
    for frame in frames:
        for fk in same:
            values = pc.drop_null(_plain(frame.column(fk.column)).cast(child_types[fk.column]))
            counts[fk] += len(values)
            pending[fk].append(values)
            if sum(len(v) for v in pending[fk]) >= LOOKUP_VALUES:
                look_up(fk)
    for fk in same:
        look_up(fk)
        found[fk] = counts[fk], pa.chunked_array(missing[fk], type=child_types[fk.column]).combine_chunks()
    return found


def _orphans_joined(child: DeltaTable, fk: ForeignKey, parent: DeltaTable) -> tuple[int, pa.Array]:
    """:func:`_orphans` of one key by a DataFusion join (child and parent key types differ)."""
    column = f'c."{fk.column}"'
    groups = _frame(query_tables({"child": child, "parent": parent}, (
        f"SELECT CASE WHEN p.k IS NULL THEN {column} END AS v, count(*) AS n FROM child c "
        f"LEFT JOIN (SELECT DISTINCT \"{fk.parent_column}\" AS k FROM parent "
        f"WHERE {STATUS} = '{ACTIVE}') p ON {column} = p.k "
        f"WHERE c.{STATUS} = '{ACTIVE}' AND {column} IS NOT NULL GROUP BY 1")))
    count = int(groups["n"].sum()) if groups.height else 0
    orphans = groups.drop_nulls("v")
    values = orphans.select(pl.col("v").repeat_by("n").explode()).get_column("v").to_arrow()
    return count, values


LOOKUP_VALUES = 1 << 20  # child values looked up in the parent's keys at once (8 MB of int64)

_PARENT_KEYS: dict[tuple[str, str, int, str], KeySet] = {}
_PARENT_KEYS_HELD = 4  # parents whose keys this process keeps (the latest read)
_PARENT_KEYS_LOCK = threading.Lock()  # the demo runs two tables' steps at once


def _parent_keys(parent: DeltaTable, column: str, kind: pa.DataType) -> KeySet:
    """The keys of ``column`` among the ACTIVE rows of ``parent`` at its loaded version (NULL left
    out), read once per table version in this process: a version never changes."""
    key = (parent.table_uri, parent.metadata().id, parent.version(), column)
    with _PARENT_KEYS_LOCK:
        if key not in _PARENT_KEYS:
            name = quote_ident(column)
            keys = read_columns(parent, [column], f"{STATUS} = '{ACTIVE}' AND {name} IS NOT NULL")
            while len(_PARENT_KEYS) >= _PARENT_KEYS_HELD:
                _PARENT_KEYS.pop(next(iter(_PARENT_KEYS)))
            _PARENT_KEYS[key] = KeySet(_plain(keys.column(0)).cast(kind).combine_chunks())
        return _PARENT_KEYS[key]


def keep_parent_keys(contract: Contract, dt: DeltaTable, written: UniqueWrite) -> None:
    """A table its load created (``written``), as the parent of other tables' foreign keys: its
    keys, held as :func:`_parent_keys` would read them at that version — every row of it is a
    staged row, ACTIVE, each key once — so its children's checks in this process read none of its
    files. Only a key column the load wrote as staged (not a protected PII column)."""
    if written.staged is None or not _written_is(dt, written):
        return
    columns = sorted({fk.parent_column for child in [*CONTRACTS.values(), *LANDING_CONTRACTS.values()]
                      for fk in child.foreign_keys if f"bz_{fk.parent_table}" == contract.bronze_table}
                     - set(contract.encrypted_columns))
    if not columns:
        return
    kinds = {f.name: f.type for f in pa.schema(dt.schema().to_arrow())}
    values: dict[str, list[pa.Array]] = {column: [] for column in columns}
    for batch in written.staged():  # streamed: only the key columns are held
        for column in columns:
            values[column].append(pc.drop_null(_plain(batch.column(column)).cast(kinds[column])))
    for column in columns:
        keys = KeySet(pa.chunked_array(values.pop(column), type=kinds[column]).combine_chunks())
        with _PARENT_KEYS_LOCK:
            key = (dt.table_uri, written.table_id, written.version, column)
            _PARENT_KEYS.pop(key, None)
            while len(_PARENT_KEYS) >= _PARENT_KEYS_HELD:
                _PARENT_KEYS.pop(next(iter(_PARENT_KEYS)))
            _PARENT_KEYS[key] = keys


def _plain(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """``values`` without DataFusion's view types (string_view, binary_view)."""
    if pa.types.is_string_view(values.type):
        return values.cast(pa.string())
    if pa.types.is_binary_view(values.type):
        return values.cast(pa.binary())
    return values
