"""Every read of a bronze or control table's rows: SQL over its snapshot with DataFusion
(delta-rs's QueryBuilder), which applies deletion vectors — ``DeltaTable.to_pyarrow_table()`` /
``to_pyarrow_dataset()`` / ``to_pandas()`` refuse a table that has them (delta-rs 1.6.6), and
Databricks creates new tables with them. And a table's size from its log."""

from __future__ import annotations

import os
import threading

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, QueryBuilder

from bronze_assets.lib.source.ddl import quote_ident


def table_stats(dt: DeltaTable) -> tuple[int, int]:
    """(total bytes, number of data files) of the loaded version."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return 0, 0
    return int(pc.sum(actions["size_bytes"]).as_py() or 0), actions.num_rows


def table_rows(dt: DeltaTable) -> int:
    """Live rows of the loaded version: its data files' row counts (the log's statistics) less the
    rows their deletion vectors remove (read only when the protocol allows vectors)."""
    return _live_rows(dt, pa.table(dt.get_add_actions(flatten=True)))


def _live_rows(dt: DeltaTable, actions: pa.Table) -> int:
    """:func:`table_rows` from ``dt``'s add actions already in hand."""
    if actions.num_rows == 0 or "num_records" not in actions.column_names:
        return 0
    return int(pc.sum(actions["num_records"]).as_py() or 0) - _rows_deleted_by_vectors(dt)


def value_counts(dt: DeltaTable, column: str, common: str) -> dict[str | None, int]:
    """Rows per value of the string ``column`` in the loaded version (None: NULL). The rows holding
    ``common`` are the log's row count less the others, so a file whose statistics say it holds
    only ``common`` is skipped, not read (on an object store: no request); without row counts in
    the log the column is read whole."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return {}
    if "num_records" not in actions.column_names or actions["num_records"].null_count:
        found = pc.value_counts(read_columns(dt, [column])[column].cast(pa.string())).to_pylist()
        return {c["values"]: c["counts"] for c in found}
    name, literal = quote_ident(column), "'" + common.replace("'", "''") + "'"
    others = query_tables({"t": dt}, f"SELECT CAST({name} AS VARCHAR) AS v, count(*) AS n FROM t "
                                     f"WHERE {name} <> {literal} OR {name} IS NULL GROUP BY 1").to_pylist()
    counts: dict[str | None, int] = {row["v"]: int(row["n"]) for row in others}
    counts[common] = _live_rows(dt, actions) - sum(counts.values())
    return counts


def _rows_deleted_by_vectors(dt: DeltaTable) -> int:
    """Rows the deletion vectors of ``dt``'s data files mark deleted (0 without vectors)."""
    if "deletionVectors" not in (dt.protocol().reader_features or []):
        return 0
    vectors = pa.RecordBatchReader.from_stream(dt.deletion_vectors()).read_all()
    if not vectors.num_rows:
        return 0
    return int(pc.sum(pc.invert(pc.list_flatten(vectors.column("selection_vector")))).as_py() or 0)


def key_bounds(dt: DeltaTable, column: str) -> tuple[int | None, int | None] | None:
    """(min, max) of an integer ``column`` over the loaded version's data files, from the log's
    file statistics ((None, None) for a table without files); None when some file has none."""
    return _key_bounds(pa.table(dt.get_add_actions(flatten=True)), column)


def rows_and_key_bounds(dt: DeltaTable, column: str) -> tuple[int, tuple[int | None, int | None] | None]:
    """:func:`table_rows` and :func:`key_bounds` from one build of the add actions."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    return _live_rows(dt, actions), _key_bounds(actions, column)


def _key_bounds(actions: pa.Table, column: str) -> tuple[int | None, int | None] | None:
    if actions.num_rows == 0:
        return None, None
    low, high = f"min.{column}", f"max.{column}"
    if low not in actions.column_names or high not in actions.column_names:
        return None
    lows, highs = actions[low], actions[high]
    if lows.null_count or highs.null_count:
        return None
    return int(pc.min(lows).as_py()), int(pc.max(highs).as_py())


def quoted(columns: list[str] | tuple[str, ...]) -> str:
    """A SQL column list with every name quoted."""
    return ", ".join(quote_ident(c) for c in columns)


_SESSIONS: dict[tuple[int, bool], QueryBuilder] = {}
_SESSION_LOCK = threading.Lock()
# a table on an object store is read without the Parquet page index: reading it costs one more
# ranged GET per file whenever a query filters a column other than the status, for pages the
# small files of bronze rarely let a query skip; the rows read are the same either way
OBJECT_STORE_CONFIG = {"datafusion.execution.parquet.enable_page_index": "false"}


def is_remote(dt: DeltaTable) -> bool:
    """Whether ``dt`` lives on an object store (``s3://``, ``abfss://`` …), not a local folder."""
    uri = dt.table_uri
    return "://" in uri and not uri.startswith("file://")


def _session(remote: bool) -> QueryBuilder:
    """The process's DataFusion session for local or object-store tables (a forked child makes its
    own). It keeps the Parquet footers it has read, so a file read again — the checks, the
    reconciliation and the summary after a load — costs only its column chunks: on an object
    store one ranged GET a file instead of three or four (the footer's length, then the footer).
    Data files never change once written (Delta writes new ones), so a kept footer is never stale."""
    key = (os.getpid(), remote)
    if key not in _SESSIONS:
        if any(pid != os.getpid() for pid, _ in _SESSIONS):
            _SESSIONS.clear()
        _SESSIONS[key] = QueryBuilder(OBJECT_STORE_CONFIG if remote else None)
    return _SESSIONS[key]


def _execute(tables: dict[str, DeltaTable], sql: str) -> pa.RecordBatchReader:
    """``sql`` over ``tables`` in the shared session: registered under their names for the time
    it takes to plan the query (the plan holds the tables; the stream is read after)."""
    with _SESSION_LOCK:
        builder = _session(any(is_remote(dt) for dt in tables.values()))
        try:
            for name, dt in tables.items():
                builder.register(name, dt)
            return builder.execute(sql)
        finally:
            for name in tables:
                builder.execute(f"DROP TABLE IF EXISTS {quote_ident(name)}")


def scan_columns(dt: DeltaTable, columns: list[str], where: str | None = None) -> pa.RecordBatchReader:
    sql = f"SELECT {quoted(columns)} FROM bronze" + (f" WHERE {where}" if where else "")
    return _execute({"bronze": dt}, sql)


def query_tables(tables: dict[str, DeltaTable], sql: str) -> pa.Table:
    """The result of ``sql`` over the current versions of ``tables`` (registered under their
    keys), computed by DataFusion: scans are streamed, only the result is held."""
    return pa.table(_execute(tables, sql).read_all())


def read_columns(dt: DeltaTable, columns: list[str], where: str | None = None) -> pa.Table:
    """Columns of the current version via DataFusion (fast on tables of many small files)."""
    return pa.table(scan_columns(dt, columns, where).read_all())


def read_snapshot(dt: DeltaTable, where: str | None = None) -> pa.Table:
    """Every column of the loaded version (rows matching the SQL condition ``where``) in the
    table's own Arrow schema (DataFusion hands back view types)."""
    schema = pa.schema(dt.schema().to_arrow())
    return read_columns(dt, schema.names, where).cast(schema)

