"""The source side of a reconciliation: one REPEATABLE READ snapshot for the whole run, in which
PostgreSQL computes each row's §2.2 hash (:func:`~bronze_assets.lib.source.pushdown.hash_sql`)
and returns only per-bucket counts and checksum sums, or, inside the buckets that differ, the
keys with their hashes and ``updated_at``."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from typing import Any

import polars as pl
import pyarrow as pa

from bronze_assets.contracts import Contract
from bronze_assets.lib.reconcile.checksum import HEX_INTEGERS, POSITIONS, checksum_sql, position_sql
from bronze_assets.lib.reconcile.keys import by_integer_key, key_expr, text_names
from bronze_assets.lib.source.ddl import qualified, quote_ident, quote_literal
from bronze_assets.lib.source.extract import BlockRanges
from bronze_assets.lib.source.postgres import connect
from bronze_assets.lib.source.pushdown import hash_sql
from bronze_assets.lib.source.schema import SchemaDrift, compare, live_columns_sql

Ranges = Sequence[tuple[int, int]]
RANGES_PER_QUERY = 256
# a row version's 64-bit hash of (ctid, key, xmin) (reconcile/memo.py), rendering nothing: xid has no
# cast to a number but age() is (the transaction's next xid - xmin) as int4, so the next xid
# (age('3') + 3) less it is xmin again, modulo 2^32 (a frozen tuple keeps its raw xmin)
XMIN = "((age('3'::xid)::bigint + 3 - age(xmin)) & 4294967295)"
FINGERPRINT = "hashtidextended(ctid, {key}::bigint # (" + XMIN + " << 32))"
PART_BLOCKS = 1024  # blocks (8 MiB) per part of a pass over a whole table (any free connection runs it)


def ranges_sql(column: str, ranges: Ranges) -> str:
    """SQL true for a key in any of the inclusive ``ranges`` (PostgreSQL and DataFusion alike)."""
    return " OR ".join(f"({column} BETWEEN {int(lo)} AND {int(hi)})" for lo, hi in ranges)


class SourceSnapshot:
    """A read-only REPEATABLE READ transaction on the source, pinned session (§2.2), held for a
    whole reconciliation so every table and every drill-down sees the same data: ``connections``
    backends share one exported snapshot, and any query runs on whichever is free (a table's own
    queries first, then the block ranges of first-level bucket passes, in the order submitted), so
    the source hashes on every backend until the last table is done.

    Sorting is off in it: the planner takes ``GROUP BY key / width`` for a group per key and would
    sort every row's rendered columns (to disk) before summing; hashed, the groups are the few
    buckets."""

    def __init__(self, dsn: str, connections: int = 1) -> None:
        self.dsn, self.connections = dsn, max(1, connections)
        self.snapshot_id: str | None = None
        self.hex_integers = False  # the server reads '0x…' as an integer (see reconcile/checksum.py)
        self.hashes_tids = False  # the server hashes a tid (a row version's fingerprint, reconcile/memo.py)
        self.server: str | None = None  # where xmin and ctid name one row version (None: unknown)
        self._jobs: queue.PriorityQueue[tuple[int, int, _Job | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._workers: list[threading.Thread] = []

    def __enter__(self) -> SourceSnapshot:
        try:
            for _ in range(self.connections):
                conn = self._open()
                worker = threading.Thread(target=self._work, args=(conn,), daemon=True,
                                          name=f"reconcile-source-{len(self._workers)}")
                self._workers.append(worker)
                worker.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _open(self) -> Any:
        conn = connect(self.dsn, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                if self.snapshot_id:
                    cur.execute(f"SET TRANSACTION SNAPSHOT '{self.snapshot_id}'")
                else:  # taken now (not at the first table), and shared by the other connections
                    cur.execute("SELECT pg_export_snapshot()")
                    (self.snapshot_id,) = cur.fetchall()[0]
                cur.execute("SET LOCAL enable_sort = off")
                cur.execute("SELECT current_setting('server_version_num')::int")
                self.hex_integers = cur.fetchall()[0][0] >= HEX_INTEGERS
                cur.execute("SELECT to_regprocedure('hashtidextended(tid,bigint)') IS NOT NULL")
                self.hashes_tids = bool(cur.fetchall()[0][0])
                self.server = _server_identity(cur)
        except BaseException:
            conn.close()
            raise
        return conn

    def _work(self, conn: Any) -> None:
        """Run jobs on ``conn`` until told to stop, then end its transaction."""
        try:
            while True:
                job = self._jobs.get()[2]
                if job is None:
                    return
                run, future = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(run(conn))
                    except BaseException as exc:
                        future.set_exception(exc)
        finally:
            try:
                with conn.cursor() as cur:
                    cur.execute("COMMIT")
            except Exception:  # a read-only transaction: nothing to keep
                pass
            finally:
                conn.close()

    def __exit__(self, *exc: object) -> None:
        for _ in self._workers:
            self._jobs.put((_STOP, next(self._order), None))
        for worker in self._workers:
            worker.join()
        self._workers = []

    def _submit(self, run: Callable[[Any], Any], priority: int) -> Future:
        future: Future = Future()
        self._jobs.put((priority, next(self._order), (run, future)))
        return future

    def query(self, sql: str) -> list[tuple]:
        return self._submit(partial(_fetch, sql), _NOW).result()

    def arrow(self, sql: str) -> pa.Table:
        return self._submit(partial(_fetch_arrow, sql), _NOW).result()

    def queries(self, sqls: Sequence[str]) -> list[list[tuple]]:
        """The rows of each of ``sqls``, run on every free connection, after the queries waiting to
        run now (:meth:`query`) and the parts submitted before them."""
        futures = [self._submit(partial(_fetch, sql), _PARTS) for sql in sqls]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()

    def table(self, contract: Contract) -> SourceTable:
        return SourceTable(self, contract)


def _server_identity(cur: Any) -> str | None:
    """The server's system identifier, timeline and the database's oid: a row version's xmin and
    ctid name it only there (a clone, a restore or another server set up alike repeats them for
    other values); None when the server has no such functions (before 9.6) or the role may not
    call them."""
    cur.execute("SELECT coalesce(has_function_privilege(to_regprocedure('pg_control_system()'), 'EXECUTE') "
                "AND has_function_privilege(to_regprocedure('pg_control_checkpoint()'), 'EXECUTE'), false)")
    if not cur.fetchall()[0][0]:
        return None
    cur.execute("SELECT concat_ws(':', s.system_identifier, c.timeline_id, d.oid) "
                "FROM pg_control_system() s, pg_control_checkpoint() c, pg_database d "
                "WHERE d.datname = current_database()")
    return str(cur.fetchall()[0][0])


_Job = tuple[Callable[[Any], Any], Future]
_NOW, _PARTS, _STOP = 0, 1, 2  # job priorities: a table's own queries, block-range parts, the end


def _fetch(sql: str, conn: Any) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def _fetch_arrow(sql: str, conn: Any) -> pa.Table:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


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
        self.bounds: tuple[int | None, int | None] = (None, None)  # the keys' (from key_range)
        self.blocks = 0  # the heap's size in blocks (from key_range)

    def drift(self) -> SchemaDrift | None:
        """How the live table differs from the contract; None when the table does not exist."""
        live = self.snapshot.query(live_columns_sql(self.contract))
        return compare(self.contract, live) if live else None

    def catalog_token(self) -> str:
        """What rendering an unchanged tuple depends on in the catalog (reconcile/memo.py)."""
        from bronze_assets.lib.reconcile.memo import catalog_token_sql

        return f"{self.snapshot.server}|{self.snapshot.query(catalog_token_sql(self.name))[0][0]}"

    def key_range(self) -> tuple[int | None, int | None, int]:
        """(lowest, highest position, estimated rows): keys (``min`` and ``max``, from the key's
        index when it has one), or hash positions. The rows are the planner's estimate
        (``reltuples``; 0 for a table never analyzed): they only size the buckets, whose counts are
        exact, so no pass of its own counts the table. Also reads the heap's size in blocks, read
        after the snapshot was taken: every row it sees lies below it."""
        oid = f"{quote_literal(self.name)}::regclass"
        facts = (f"(SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = {oid}), "
                 f"pg_relation_size({oid}) / current_setting('block_size')::bigint")
        if not self.by_key:
            n, self.blocks = self.snapshot.query(f"SELECT {facts}")[0]
            return 0, POSITIONS - 1, int(n or 0)
        lo, hi, n, self.blocks = self.snapshot.query(
            f"SELECT min({self.key}), max({self.key}), {facts} FROM {self.name}")[0]
        self.bounds = (None if lo is None else int(lo)), (None if hi is None else int(hi))
        return *self.bounds, int(n or 0)

    def _hashed(self, columns: Sequence[tuple[str, str]] = (), part: tuple[BlockRanges, int] | None = None
                ) -> str:
        """A subquery of each row's hash ``h``, its position ``p`` and ``columns`` (expression, name),
        of the rows in block range ``part`` (every row: None)."""
        inner = "".join(f", {expr} AS {name}" for expr, name in columns)
        names = "".join(f", {name}" for _, name in columns)
        rendered = f"SELECT {self.rendered}{inner} FROM {self.name} WHERE TRUE"
        if part is not None:
            rendered = part[0].sql(rendered, part[1])
        return (f"(SELECT {position_sql('h', self.hex)} AS p, h{names} FROM (SELECT {self.hash} AS h{names} "
                f"FROM ({rendered} OFFSET 0) r OFFSET 0) q) s")

    def buckets(self, lo: int, hi: int, width: int) -> dict[int, tuple[int, int]]:
        """{bucket: (rows, checksum sum)} of the positions in [lo, hi], bucket = (position - lo) // width.
        A pass over every row (the first level) is split into block ranges of :data:`PART_BLOCKS`
        blocks that run on every connection of the snapshot at once; their sums add up."""
        ranges = self._parts(lo, hi)
        if self.by_key:
            rendered = (f"SELECT {self.key}::bigint AS k, {self.rendered} FROM {self.name} "
                        f"WHERE {self.key} BETWEEN {lo} AND {hi}")
            sqls = [f"SELECT (k - {lo}) / {width} AS b, count(*), sum({self.checksum})::text FROM ("
                    f"{ranges.sql(rendered, i)} OFFSET 0) s GROUP BY 1" for i in range(ranges.parts)]
        else:
            where = "" if (lo, hi) == (0, POSITIONS - 1) else f" WHERE p BETWEEN {lo} AND {hi}"
            sqls = [f"SELECT (p - {lo}) / {width} AS b, count(*), sum({checksum_sql('h', self.hex)})::text "
                    f"FROM {self._hashed(part=(ranges, i))}{where} GROUP BY 1" for i in range(ranges.parts)]
        sums: dict[int, tuple[int, int]] = {}
        for part in self.snapshot.queries(sqls) if len(sqls) > 1 else [self.snapshot.query(sqls[0])]:
            for b, n, s in part:
                rows, total = sums.get(int(b), (0, 0))
                sums[int(b)] = (rows + int(n), total + int(s))
        return sums

    def _by_key_sums(self, lo: int, hi: int, width: int, sums: Sequence[str], rendered: bool,
                     where: str | None = None) -> list[dict[int, tuple[int, ...]]]:
        """{bucket: (rows, *sums)} per expression of ``sums`` (over ``k``, the rendered columns and
        the row version ``f``), of the keys in [lo, hi] (and ``where``); a pass over every row runs in
        block ranges on every connection."""
        ranges = self._parts(lo, hi) if where is None else BlockRanges(self.blocks, 1)
        columns = (f", {FINGERPRINT.format(key=self.key)} AS f" if "f" in sums else "") + \
            (f", {self.rendered}" if rendered else "")
        inner = (f"SELECT {self.key}::bigint AS k{columns} FROM {self.name} "
                 f"WHERE {self.key} BETWEEN {lo} AND {hi}" + (f" AND ({where})" if where else ""))
        totals = "".join(f", sum({s})::text" for s in sums)
        sqls = [f"SELECT (k - {lo}) / {width} AS b, count(*){totals} FROM ({ranges.sql(inner, i)} OFFSET 0) "
                f"s GROUP BY 1" for i in range(ranges.parts)]
        out: list[dict[int, tuple[int, ...]]] = [{} for _ in sums]
        for part in self.snapshot.queries(sqls) if len(sqls) > 1 else [self.snapshot.query(sqls[0])]:
            for b, n, *values in part:
                for kept, value in zip(out, values, strict=True):
                    rows, total = kept.get(int(b), (0, 0))
                    kept[int(b)] = (rows + int(n), total + int(value))
        return out

    def fingerprints(self, lo: int, hi: int, width: int) -> dict[int, tuple[int, int]]:
        """{bucket: (rows, sum of the rows' version hashes)}: no column is rendered (reconcile/memo.py)."""
        return self._by_key_sums(lo, hi, width, ["f"], rendered=False)[0]  # type: ignore[return-value]

    def buckets_with_fingerprints(self, lo: int, hi: int, width: int
                                  ) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
        """:meth:`buckets` and :meth:`fingerprints` of [lo, hi] in one pass over the rows."""
        sums, prints = self._by_key_sums(lo, hi, width, [self.checksum, "f"], rendered=True)
        return sums, prints  # type: ignore[return-value]

    def checksums_in(self, buckets: Sequence[int], lo: int, hi: int, width: int
                     ) -> dict[int, tuple[int, int]]:
        """:meth:`buckets` of the named buckets only (their key ranges, over the key's index)."""
        spans = [(lo + b * width, min(hi, lo + b * width + width - 1)) for b in sorted(buckets)]
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        out: dict[int, tuple[int, int]] = {}
        for i in range(0, len(merged), RANGES_PER_QUERY):
            where = ranges_sql(self.key, merged[i:i + RANGES_PER_QUERY])
            sums = self._by_key_sums(lo, hi, width, [self.checksum], rendered=True, where=where)[0]
            out.update(sums)  # type: ignore[arg-type]
        return out

    def _parts(self, lo: int, hi: int) -> BlockRanges:
        """How a bucket pass over [lo, hi] splits the heap: in block ranges when it covers every row
        (by the key's bounds, or every hash position), else one part (the key's index narrows it)."""
        if self.by_key:
            low, high = self.bounds
            every = low is not None and high is not None and lo <= low and high <= hi
        else:
            every = (lo, hi) == (0, POSITIONS - 1)
        return BlockRanges(self.blocks, max(1, self.blocks // PART_BLOCKS) if every else 1)

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
