"""SQL over bronze Delta tables with DataFusion (delta-rs's QueryBuilder), and a table's size from
its log."""

from __future__ import annotations

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
    """Rows in the loaded version's data files (from the log's file statistics)."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    if actions.num_rows == 0 or "num_records" not in actions.column_names:
        return 0
    return int(pc.sum(actions["num_records"]).as_py() or 0)


def quoted(columns: list[str] | tuple[str, ...]) -> str:
    """A SQL column list with every name quoted."""
    return ", ".join(quote_ident(c) for c in columns)


def _execute(tables: dict[str, DeltaTable], sql: str) -> pa.RecordBatchReader:
    builder = QueryBuilder()
    for name, dt in tables.items():
        builder.register(name, dt)
    return builder.execute(sql)


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

