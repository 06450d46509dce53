"""Spark's JDBC read of a load window: parallel over primary-key ranges, one snapshot for all.

Every partition's connection joins the snapshot the driver exported (``SET TRANSACTION
SNAPSHOT`` in ``sessionInitStatement``, as ``pg_dump -j`` does), so all partitions see one
state of the source however long the read takes, and the session is pinned like every session
that renders (ARCHITECTURE §2.2). The query is :func:`~bronze_assets.lib.source.pushdown.pushdown_select_sql`:
PostgreSQL computes the record hash and the partition value, and hands dates and timestamps over
as integers, so neither the JVM's zone nor its calendar touches a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from typing import TYPE_CHECKING

from bronze_assets.contracts import Contract, PgType, ReadMode, TypeFamily
from bronze_assets.lib.source.dsn import dsn_parts, with_connect_timeout
from bronze_assets.lib.source.postgres import PINNED_SESSION
from bronze_assets.lib.source.pushdown import HASH, PART, RESCUED, pushdown_keys_sql

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from bronze_assets.lib.source.extract import BlockRanges

FETCH_SIZE = 10_000
UNIX_SOCKET_FACTORY = "org.newsclub.net.unix.AFUNIXSocketFactory$FactoryArg"


def jdbc_options(dsn: str) -> dict[str, str]:
    """JDBC URL and properties of a libpq URI or keyword DSN; a Unix-socket host (a path, as the
    embedded server has) goes through junixsocket. libpq's ``connect_timeout`` (the DSN's, else
    bronze's default) bounds pgjdbc's connection (``connectTimeout``) and login (``loginTimeout``)."""
    parts = dsn_parts(with_connect_timeout(dsn))
    host, port = parts["host"] or "localhost", parts["port"] or "5432"
    db = parts["db"] or parts["user"] or "postgres"
    options = {"driver": "org.postgresql.Driver", "user": parts["user"] or "postgres",
               "connectTimeout": parts["connect_timeout"], "loginTimeout": parts["connect_timeout"]}
    if parts["password"]:
        options["password"] = parts["password"]
    if host.startswith("/"):
        options["url"] = f"jdbc:postgresql://localhost:{port}/{db}"
        options["socketFactory"] = UNIX_SOCKET_FACTORY
        options["socketFactoryArg"] = f"{host}/.s.PGSQL.{port}"
    else:
        options["url"] = f"jdbc:postgresql://{host}:{port}/{db}"
    return options


def session_init(snapshot_id: str | None) -> str:
    """Statements every JDBC connection runs first: join the exported snapshot, pin rendering."""
    statements = ["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"]
    if snapshot_id:
        statements.append(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
    return "; ".join([*statements, *PINNED_SESSION])


_WIRE = {TypeFamily.SMALLINT: "SMALLINT", TypeFamily.INTEGER: "INT", TypeFamily.DATE: "INT",  # days
         TypeFamily.BIGINT: "BIGINT", TypeFamily.TIMESTAMPTZ: "BIGINT", TypeFamily.TIMESTAMP: "BIGINT",  # µs
         TypeFamily.BOOLEAN: "BOOLEAN", TypeFamily.BYTEA: "BINARY"}


def _wire_type(type_: PgType) -> str:
    """The Spark type a pushed-down column arrives as (PostgreSQL's text for the ``text`` and
    ``parsed`` read modes, turned into the bronze type by :func:`typed_columns`)."""
    if type_.read is not ReadMode.BINARY:
        return "STRING"
    if type_.is_numeric:
        p, s = type_.precision_scale  # type: ignore[misc]
        return f"DECIMAL({p},{s})"
    return _WIRE.get(type_.family, "STRING")


def custom_schema(contract: Contract, partitioned: bool) -> str:
    cols = [f"`{c.name}` {_wire_type(c.type)}" for c in contract.columns]
    cols += [f"`{HASH}` STRING", f"`{RESCUED}` STRING"] + ([f"`{PART}` INT"] if partitioned else [])
    return ", ".join(cols)


def typed_columns(contract: Contract, names: Sequence[str] | None = None) -> list[Column]:
    """The source columns (or just ``names``) in their bronze types (dates and timestamps back from
    integers)."""
    from pyspark.sql import functions as F

    out = []
    for c in contract.columns if names is None else [contract.column(n) for n in names]:
        col = F.col(f"`{c.name}`")
        family = c.type.family
        if family is TypeFamily.DATE:
            col = F.date_from_unix_date(col)
        elif family is TypeFamily.TIMESTAMPTZ:
            col = F.timestamp_micros(col)
        elif family is TypeFamily.TIMESTAMP:  # µs of the wall-clock time read as UTC; the session is UTC
            col = F.timestamp_micros(col).cast("timestamp_ntz")
        elif c.type.read is ReadMode.PARSED:  # PostgreSQL's text, parsed exactly (as the local engine)
            if family is TypeFamily.MONEY:
                col = F.regexp_replace(col, "[$,]", "")
            col = col.cast(c.type.delta_type)
        out.append(col.alias(c.name))
    return out


def _read(spark: SparkSession, dsn: str, sql: str, schema: str, snapshot_id: str | None,
          ranges: BlockRanges | None) -> DataFrame:
    """``sql`` in the snapshot, one JDBC partition (and connection) per block range of ``ranges``
    (None: one): the local engine's split, whatever the table's key."""
    def part(query: str) -> DataFrame:
        return spark.read.format("jdbc").options(**jdbc_options(dsn)).options(
            dbtable=f"({query}) AS bronze_source", fetchsize=str(FETCH_SIZE),
            sessionInitStatement=session_init(snapshot_id), customSchema=schema,
        ).load()

    if ranges is None:
        return part(sql)
    return reduce(lambda a, b: a.union(b), (part(ranges.sql(sql, i)) for i in range(ranges.parts)))


DELTA_SPARK_INVALID = " ,;{}()\n\t="  # refused in column names by delta-spark without column mapping


class UnwritableColumnNames(ValueError):
    """The table has column names delta-spark cannot write (the local engine can)."""


def check_column_names(contract: Contract) -> None:
    """Fail at once, in one line, on column names delta-spark refuses to write without Delta column
    mapping (delta-rs writes them, and Spark reads such a table)."""
    bad = [c for c in contract.column_names if any(ch in DELTA_SPARK_INVALID for ch in c)]
    if bad:
        raise UnwritableColumnNames(
            f"{contract.bronze_table}: column name(s) {', '.join(map(repr, bad))} contain characters "
            f"delta-spark refuses without Delta column mapping (any of {DELTA_SPARK_INVALID!r}); load "
            f"this table with the local engine (BRONZE_ENGINE=local), which writes them. Nothing was read.")


def read_query(
    spark: SparkSession, dsn: str, contract: Contract, sql: str, *, snapshot_id: str | None,
    partitioned: bool, ranges: BlockRanges | None,
) -> DataFrame:
    """``sql`` (a pushdown query) read over a JDBC connection per block range of ``ranges``."""
    check_column_names(contract)
    return _read(spark, dsn, sql, custom_schema(contract, partitioned), snapshot_id, ranges)


def read_keys(
    spark: SparkSession, dsn: str, contract: Contract, *, snapshot_id: str | None,
    ranges: BlockRanges | None,
) -> DataFrame:
    """Every primary key of the source in the snapshot (the key sweep for soft deletes), in the
    bronze types of the key columns, as the rows carry them (uuid, text, numeric, dates …)."""
    pk = contract.primary_key
    schema = ", ".join(f"`{k}` {_wire_type(contract.column(k).type)}" for k in pk)
    raw = _read(spark, dsn, pushdown_keys_sql(contract), schema, snapshot_id, ranges)
    return raw.select(*typed_columns(contract, pk))
