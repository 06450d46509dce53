"""The source side of a reconciliation: one REPEATABLE READ snapshot for the whole run, in which
PostgreSQL computes each row's §2.2 hash (:func:`~bronze_assets.lib.source.pushdown.hash_sql`)
and returns only per-bucket counts and checksum sums, or, inside the buckets that differ, the
keys with their hashes and ``updated_at``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa

from bronze_assets.contracts import Contract
from bronze_assets.lib.reconcile.checksum import HEX_INTEGERS, POSITIONS, checksum_sql, position_sql
from bronze_assets.lib.reconcile.keys import by_integer_key, key_expr, text_names
from bronze_assets.lib.source.ddl import qualified, quote_ident, quote_literal
from bronze_assets.lib.source.postgres import connect
from bronze_assets.lib.source.pushdown import hash_sql
from bronze_assets.lib.source.schema import SchemaDrift, compare, live_columns_sql

Ranges = Sequence[tuple[int, int]]
RANGES_PER_QUERY = 256


def ranges_sql(column: str, ranges: Ranges) -> str:
    """SQL true for a key in any of the inclusive ``ranges`` (PostgreSQL and DataFusion alike)."""
    return " OR ".join(f"({column} BETWEEN {int(lo)} AND {int(hi)})" for lo, hi in ranges)


class SourceSnapshot:
    """A read-only REPEATABLE READ transaction on the source, pinned session (§2.2), held for a
    whole reconciliation so every table and every drill-down sees the same data.

    Sorting is off in it: the planner takes ``GROUP BY key / width`` for a group per key and would
    sort every row's rendered columns (to disk) before summing; hashed, the groups are the few
    buckets."""

    def __init__(self, dsn: str, snapshot_id: str | None = None) -> None:
        self.dsn, self.snapshot_id = dsn, snapshot_id  # snapshot_id: join another's exported snapshot
        self.hex_integers = False  # the server reads '0x…' as an integer (see reconcile/checksum.py)
        self._conn: Any = None

    def __enter__(self) -> SourceSnapshot:
        self._conn = connect(self.dsn, autocommit=True)
        with self._conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if self.snapshot_id:
                cur.execute(f"SET TRANSACTION SNAPSHOT '{self.snapshot_id}'")
            else:  # taken now (not at the first table), and shareable with more connections
                cur.execute("SELECT pg_export_snapshot()")
                (self.snapshot_id,) = cur.fetchall()[0]
            cur.execute("SET LOCAL enable_sort = off")
            cur.execute("SELECT current_setting('server_version_num')::int")
            self.hex_integers = cur.fetchall()[0][0] >= HEX_INTEGERS
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            try:
                with self._conn.cursor() as cur:
                    cur.execute("COMMIT")
            finally:
                self._conn.close()
                self._conn = None

    def query(self, sql: str) -> list[tuple]:
        with self._conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def arrow(self, sql: str) -> pa.Table:
        with self._conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetch_arrow_table()

    def table(self, contract: Contract) -> SourceTable:
        return SourceTable(self, contract)


class SourceTable:
    """One source table in the run's snapshot: bucketed by its key when that is one integer column,
    else by its rows' hash positions (:mod:`~bronze_assets.lib.reconcile.keys`)."""

    def __init__(self, snapshot: SourceSnapshot, contract: Contract) -> None:
        self.snapshot, self.contract = snapshot, contract
        self.name = qualified(contract.source_schema, contract.source_name)
        self.by_key = by_integer_key(contract)
        self.key = quote_ident(contract.merge_key[0])  # a keyless table: see reconcile/keyless.py
        # each column rendered once, in a subquery the planner keeps (OFFSET 0), then hashed: PostgreSQL
        # would render every column twice in hash_sql's own form (length and text)
        names = [f"_t{i}" for i in range(len(contract.column_names))]
        self.hash = hash_sql(contract, names)
        pairs = zip(contract.column_names, names, strict=True)
        self.rendered = ", ".join(f"{quote_ident(c)}::text AS {n}" for c, n in pairs)
        self.hex = snapshot.hex_integers
        self.checksum = checksum_sql(self.hash, self.hex)
        # when the row last changed (pending rows), as timestamptz; an infinite one counts as unknown
        self.updated_at = "CASE WHEN isfinite(updated_at) THEN updated_at::timestamptz END" \
            if "updated_at" in contract.column_names else "NULL::timestamptz"

    def drift(self) -> SchemaDrift | None:
        """How the live table differs from the contract; None when the table does not exist."""
        live = self.snapshot.query(live_columns_sql(self.contract))
        return compare(self.contract, live) if live else None

    def key_range(self) -> tuple[int | None, int | None, int]:
        """(lowest, highest position, estimated rows): keys (``min`` and ``max``, from the key's
        index when it has one), or hash positions. The rows are the planner's estimate
        (``reltuples``; 0 for a table never analyzed): they only size the buckets, whose counts are
        exact, so no pass of its own counts the table."""
        estimate = (f"(SELECT greatest(reltuples, 0)::bigint FROM pg_class "
                    f"WHERE oid = {quote_literal(self.name)}::regclass)")
        if not self.by_key:
            (n,) = self.snapshot.query(f"SELECT {estimate}")[0]
            return 0, POSITIONS - 1, int(n or 0)
        lo, hi, n = self.snapshot.query(
            f"SELECT min({self.key}), max({self.key}), {estimate} FROM {self.name}")[0]
        return (None if lo is None else int(lo)), (None if hi is None else int(hi)), int(n or 0)

    def _hashed(self, columns: Sequence[tuple[str, str]] = ()) -> str:
        """A subquery of each row's hash ``h``, its position ``p`` and ``columns`` (expression, name)."""
        inner = "".join(f", {expr} AS {name}" for expr, name in columns)
        names = "".join(f", {name}" for _, name in columns)
        return (f"(SELECT {position_sql('h', self.hex)} AS p, h{names} FROM (SELECT {self.hash} AS h{names} "
                f"FROM (SELECT {self.rendered}{inner} FROM {self.name} OFFSET 0) r OFFSET 0) q) s")

    def buckets(self, lo: int, hi: int, width: int) -> dict[int, tuple[int, int]]:
        """{bucket: (rows, checksum sum)} of the positions in [lo, hi], bucket = (position - lo) // width."""
        if self.by_key:
            sql = (f"SELECT (k - {lo}) / {width} AS b, count(*), sum({self.checksum})::text FROM ("
                   f"SELECT {self.key}::bigint AS k, {self.rendered} FROM {self.name} "
                   f"WHERE {self.key} BETWEEN {lo} AND {hi} OFFSET 0) s GROUP BY 1")
        else:
            where = "" if (lo, hi) == (0, POSITIONS - 1) else f" WHERE p BETWEEN {lo} AND {hi}"
            sql = f"SELECT (p - {lo}) / {width} AS b, count(*), sum({checksum_sql('h', self.hex)})::text " \
                  f"FROM {self._hashed()}{where} GROUP BY 1"
        return {int(b): (int(n), int(s)) for b, n, s in self.snapshot.query(sql)}

    def rows(self, ranges: Ranges) -> pl.DataFrame:
        """key, source_hash, updated_at of the rows whose position lies in ``ranges``."""
        if not self.by_key:
            return self._hashed_rows(ranges)
        pieces = []
        for i in range(0, len(ranges), RANGES_PER_QUERY):
            where = ranges_sql(self.key, ranges[i:i + RANGES_PER_QUERY])
            table = self.snapshot.arrow(
                f"SELECT {self.key}::bigint AS key, {hash_sql(self.contract)} AS source_hash, "
                f"{self.updated_at} AS updated_at FROM {self.name} WHERE {where}")
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            pieces.append(frame)
        schema = {"key": pl.Int64, "source_hash": pl.Utf8, "updated_at": pl.Datetime("us", "UTC")}
        return pl.concat(pieces) if pieces else pl.DataFrame(schema=schema)

    def _hashed_rows(self, ranges: Ranges) -> pl.DataFrame:
        """The rows of hash positions in ``ranges``, keys named by text, in one pass over the table
        (``width_bucket`` finds a position's range by binary search over the sorted range starts)."""
        names = text_names(self.contract)
        keys = zip(self.contract.primary_key, names, strict=True)
        columns = [*((f"{quote_ident(k)}::text", n) for k, n in keys), (self.updated_at, "updated_at")]
        starts = ",".join(str(int(lo)) for lo, _ in ranges)
        ends = ",".join(str(int(hi)) for _, hi in ranges)
        table = self.snapshot.arrow(
            f"SELECT {', '.join(names)}, h AS source_hash, updated_at FROM (SELECT *, "
            f"width_bucket(p, '{{{starts}}}'::bigint[]) AS i FROM {self._hashed(columns)}"
            f") w WHERE i > 0 AND p <= ('{{{ends}}}'::bigint[])[i]")
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return frame.select(key_expr(self.contract), pl.col("source_hash").cast(pl.Utf8),
                            pl.col("updated_at").cast(pl.Datetime("us", "UTC")))
