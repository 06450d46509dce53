"""The DuckDB SQL the local engine types landing records with (ARCHITECTURE §2.6): each column's
DuckDB type, the cast of a text value to it (NULL where it does not parse), JSON paths and
literals, and the connection the reads share."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from bronze_assets.contracts.arrow import arrow_type
from bronze_assets.contracts.types import PgType


def duck_type(type_: PgType, table: str, column: str) -> str:
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


def cast_sql(value: str, type_: PgType, table: str, column: str) -> str:
    """SQL: the text ``value`` as ``type_``, NULL where it does not parse (an integer column takes
    only integer text: DuckDB would round ``1.5``)."""
    duck = duck_type(type_, table, column)
    if duck in ("SMALLINT", "INTEGER", "BIGINT"):
        integer = f"regexp_full_match(trim({value}), '[+-]?[0-9]+')"
        return f"CASE WHEN {integer} THEN TRY_CAST({value} AS {duck}) END"
    return f"TRY_CAST({value} AS {duck})"


def json_path(name: str) -> str:
    return "'$.\"" + name.replace("\\", "\\\\").replace('"', '\\"').replace("'", "''") + "\"'"


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def duckdb_connection(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB database of its own, in UTC; ``threads``: its worker threads (default: one per core),
    one where the caller runs several at once."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    return con
