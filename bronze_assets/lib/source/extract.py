"""Contract-driven extraction: one snapshot-consistent, chunked binary-COPY read into Arrow.

The source is asked only for its typed columns. ``record_hash`` (ARCHITECTURE §2.2) is rendered
here, vectorised, exactly as PostgreSQL prints ``col::text`` (:mod:`bronze_assets.lib.enrich.pgtext`),
and the Delta partition value of a row comes from the load window (:mod:`.window`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bronze_assets.contracts import Contract, PgType, ReadMode
from bronze_assets.contracts.arrow import arrow_type
from bronze_assets.lib.enrich.pgtext import column_text, hash_texts, storable
from bronze_assets.lib.overlap import read_ahead
from bronze_assets.lib.source.ddl import qualified, quote_ident
from bronze_assets.lib.source.dsn import describe_dsn, redact
from bronze_assets.lib.source.postgres import SourceConnectionError, connect
from bronze_assets.lib.source.window import (
    KeyTexts,
    LoadWindow,
    missing_keys_sql,
    partition_values,
    window_predicate,
)
from bronze_assets.lib.stop import stop_point

BATCH_SIZE_HINT_BYTES = 32 * 1024 * 1024
_DONE = object()


INVALID_PREFIX, RAW_PREFIX = "_invalid:", "_raw:"
LEGACY_HASH = "_record_hash_v1"  # v1 record_hash, computed only to migrate a v1 table once


def read_sql(expr: str, type_: PgType) -> str:
    """How extraction reads a value of ``type_`` (the mapping table's read mode): as it is
    (binary COPY, rendered in the pipeline; a domain cast to its base type, which the driver
    knows), or as PostgreSQL's own ``::text`` (stored as that text, or parsed from it)."""
    if type_.read is not ReadMode.BINARY:
        return f"({expr})::text"
    return expr if type_.base is None else f"({expr})::{type_.base}"


def _select_column(contract: Contract, name: str, rescued: bool = False) -> str:
    """A column read as its type's mapping says (:func:`read_sql`).

    A rescued column (policy ``rescue``) is read per record from its text: a value PostgreSQL
    cannot read as the contract type (``pg_input_is_valid``, PostgreSQL 16+) becomes NULL and is
    flagged; its source text travels alongside (the record hash renders it).
    """
    ident = quote_ident(name)
    column_type = contract.column(name).type
    if not rescued:
        value = read_sql(ident, column_type)
        return ident if value == ident else f"{value} AS {ident}"
    type_ = column_type.value.replace("'", "''")
    valid = f"pg_input_is_valid({ident}::text, '{type_}')"
    value = read_sql(f"CASE WHEN {valid} THEN ({ident}::text)::{column_type.value} END", column_type)
    return (f"{value} AS {ident}"
            f", ({ident} IS NOT NULL AND NOT {valid}) AS {quote_ident(INVALID_PREFIX + name)}"
            f", {ident}::text AS {quote_ident(RAW_PREFIX + name)}")


def select_sql(
    contract: Contract, window: LoadWindow, schema: str | None = None, extra_columns: Sequence[str] = (),
    rescued: Sequence[str] = (),
) -> str:
    """The extraction query: typed source columns as they are, plus columns the contract lacks.

    Columns the source has but the contract does not (``extra_columns``) travel as text and are
    not part of ``record_hash``, so existing hashes stay stable (policy ``addNewColumns``).
    """
    cols = [_select_column(contract, c, c in rescued) for c in contract.column_names]
    cols += [f"{quote_ident(c)}::text AS {quote_ident(c)}" for c in extra_columns]
    sql = f"SELECT {', '.join(cols)} FROM {qualified(schema or contract.source_schema, contract.source_name)}"
    where = window_predicate(contract, window)
    return sql if where is None else f"{sql} WHERE ({where})"


def keys_sql(contract: Contract, schema: str | None = None) -> str:
    """Key-only scan used to find keys that vanished from the source (soft deletes); each key
    column read as rows read it (:func:`key_values` converts them)."""
    cols = ", ".join(_select_column(contract, c) for c in contract.primary_key)
    return f"SELECT {cols} FROM {qualified(schema or contract.source_schema, contract.source_name)}"


def key_schema(contract: Contract) -> pa.Schema:
    """The primary key columns in the types bronze stores them (as staged rows carry them)."""
    return pa.schema([pa.field(k, arrow_type(contract.column(k).type)) for k in contract.primary_key])


def key_values(batch: pa.RecordBatch | pa.Table, contract: Contract) -> pa.RecordBatch:
    """The primary key columns of a driver batch (of :func:`keys_sql`) as bronze stores them: uuid,
    text, numeric, dates and timestamps alike, composite keys column by column."""
    schema = key_schema(contract)
    columns = [storable(_plain(_one_array(batch.column(k))), contract.column(k).type)[0]
               for k in contract.primary_key]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _one_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _plain(arr: pa.Array) -> pa.Array:
    return arr.storage if isinstance(arr, pa.ExtensionArray) else arr


def prepare(batch: pa.RecordBatch, contract: Contract, window: LoadWindow | None = None,
            legacy: bool = False) -> pa.RecordBatch:
    """Turn a driver batch into bronze-ready columns: ``record_hash`` (rendered here, not
    in the source), values in the contract's types, the Delta partition value, and for every
    value bronze cannot hold (numeric NaN, ±infinity, years outside 1–9999) a NULL plus
    ``_invalid:<col>``/``_raw:<col>`` (its PostgreSQL text) for the score and the quarantine."""
    names = set(batch.schema.names)
    hashed: list[pa.Array | tuple] = []  # per source column: its text, or (array, type) rendered there
    out: dict[str, pa.Array] = {}
    for column in contract.columns:
        arr = _plain(batch.column(column.name))
        raw_name = RAW_PREFIX + column.name
        value, bad = storable(arr, column.type)
        out[column.name] = value
        text = None
        if raw_name in names:  # a rescued column: the source's own text is what gets hashed
            text = batch.column(raw_name).cast(pa.string())
            bad = pc.or_(bad, batch.column(INVALID_PREFIX + column.name).fill_null(False))
        hashed.append((arr, column.type) if text is None else text)
        if pc.any(bad).as_py():  # rare: only the flagged values are rendered for the quarantine
            out[INVALID_PREFIX + column.name] = bad
            out[RAW_PREFIX + column.name] = column_text(arr, column.type, where=bad) if text is None \
                else pc.if_else(bad, text, pa.nulls(len(text), pa.string()))
    out["record_hash"] = hash_texts(hashed)  # rendered, assembled and digested in one pass
    if legacy:
        out[LEGACY_HASH] = hash_texts(hashed, version=1)
    for name in batch.schema.names:
        if name not in out and not name.startswith((INVALID_PREFIX, RAW_PREFIX)):
            out[name] = batch.column(name).cast(pa.string())  # a column the contract does not know
    part = contract.partitioning.delta_column
    if part is not None and window is not None:
        out[part] = partition_values(batch, contract, window)
    return pa.RecordBatch.from_pydict(out)


_LOST = ("server closed the connection", "connection to server", "terminating connection",
         "no connection to the server", "could not receive data", "could not send data", "sqlstate: 08",
         "sqlstate: 57p0")


def _connection_lost(exc: Exception) -> bool:
    """Whether a driver error means the server went away (rather than a bad query)."""
    text = str(exc).lower()
    return any(marker in text for marker in _LOST)


@dataclass
class SourceSnapshot:
    """Facts read in the same snapshot as the data: server time and the safe watermark cap."""

    server_time: datetime
    oldest_open_xact_start: datetime | None
    snapshot_xmin: int

    def watermark_cap(self) -> datetime:
        """Highest watermark that cannot skip rows of transactions still in flight."""
        if self.oldest_open_xact_start is None:
            return self.server_time
        return min(self.server_time, self.oldest_open_xact_start - timedelta(microseconds=1))


MIN_BLOCKS_PER_PART = 128  # 1 MiB of heap: smaller tables are read on one connection


@dataclass(frozen=True)
class BlockRanges:
    """A table's heap split into ``parts`` block ranges of ``blocks`` blocks (``ctid`` TID range
    scans): how every engine reads one table over several connections. The split needs no key,
    so a table keyed by text, uuid, numeric, a date or several columns (or by none) is split as
    an integer-keyed one is, and each part scans only its own blocks."""

    blocks: int
    parts: int

    def sql(self, sql: str, part: int) -> str:
        """``sql`` restricted to the ``part``-th block range (the last one open-ended)."""
        if self.parts == 1:
            return sql
        step = -(-self.blocks // self.parts)
        clause = f"ctid >= '({part * step},0)'::tid"
        if part < self.parts - 1:
            clause += f" AND ctid < '({(part + 1) * step},0)'::tid"
        return f"{sql} AND ({clause})" if " WHERE " in sql else f"{sql} WHERE {clause}"


class SourceReader:
    """Reads one table in one REPEATABLE READ snapshot, optionally over several connections.

    With ``parallelism`` N > 1 the heap is split into N block ranges (``ctid`` TID range scans,
    as PeerDB and Debezium's incremental snapshots split a table) read over N connections that
    share the first connection's exported snapshot (as ``pg_dump -j`` does). Each backend scans
    only its own blocks, with no per-row split predicate, and each stream stays in heap order
    (for append-mostly tables, key order); this process prepares the batches on N threads, each
    fed by a thread decoding its connection's COPY one batch ahead, and a bounded queue keeps
    memory flat.
    """

    def __init__(
        self, dsn: str, contract: Contract, schema: str | None = None, parallelism: int = 1,
        snapshot_id: str | None = None,
    ) -> None:
        self.dsn, self.contract, self.schema = dsn, contract, schema or contract.source_schema
        self.table = qualified(self.schema, contract.source_name)  # quoted, for SQL
        self.parallelism = max(1, parallelism)
        self._conn = None
        self._import = snapshot_id  # read in this exported snapshot (e.g. a replication slot's)
        self._snapshot_id: str | None = None
        self._blocks = 0

    def __enter__(self) -> SourceReader:
        self._conn = self._open(self._import)
        # exported for the other connections: the parts of a parallel read, and the key sweep
        # that runs beside the rows
        (self._snapshot_id,) = self.query("SELECT pg_export_snapshot()")[0]
        if self.parallelism > 1:
            # read after the snapshot: every row it sees lives below this block count
            table = self.table.replace("'", "''")
            rows = self.query(f"SELECT pg_relation_size(to_regclass('{table}')) "
                              f"/ current_setting('block_size')::bigint")
            self._blocks = int(rows[0][0] or 0) if rows else 0
            self.parallelism = max(1, min(self.parallelism, self._blocks // MIN_BLOCKS_PER_PART))
        return self

    @property
    def snapshot_id(self) -> str | None:
        """The exported snapshot other connections (and other engines' readers) can join."""
        return self._snapshot_id

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._close(self._conn)
            self._conn = None

    def _open(self, snapshot_id: str | None = None):
        conn = connect(self.dsn, autocommit=True)
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if snapshot_id:
                cur.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
        return conn

    @staticmethod
    def _close(conn) -> None:
        try:
            with conn.cursor() as cur:
                cur.execute("COMMIT")
        except Exception as exc:  # a session the server already ended has nothing to commit
            if not _connection_lost(exc):
                raise
        finally:
            conn.close()

    def snapshot(self) -> SourceSnapshot:
        now, oldest, xmin = self.query(
            "SELECT now(), (SELECT min(xact_start) FROM pg_stat_activity "
            "  WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()), "
            "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        )[0]
        return SourceSnapshot(now, oldest, xmin)

    @property
    def block_ranges(self) -> BlockRanges:
        """How this reader splits the table: :attr:`parallelism` block ranges of the heap as the
        snapshot sees it (one part for a table under :data:`MIN_BLOCKS_PER_PART` blocks a part)."""
        return BlockRanges(self._blocks, self.parallelism)

    def query(self, sql: str) -> list[tuple]:
        """Run a small query in this reader's snapshot."""
        with self._conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def missing_keys(self, keys: Sequence[KeyTexts]) -> pa.Table:
        """The named ``keys`` (texts) this snapshot does not hold, as bronze's key values (read and
        converted as rows are)."""
        pk = self.contract.primary_key
        cols = ", ".join(_select_column(self.contract, k) for k in pk)
        with self._conn.cursor() as cur:
            cur.execute(f"SELECT {cols} FROM ({missing_keys_sql(self.contract, keys, self.schema)}) m")
            table = cur.fetch_arrow_table()
        return pa.Table.from_batches([key_values(table, self.contract)])

    def batches(
        self,
        window: LoadWindow,
        transform: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
        extra_columns: Sequence[str] = (),
        rescued: Sequence[str] = (),
        legacy: bool = False,
    ) -> Iterator[pa.RecordBatch]:
        """Stream the window's rows in bounded Arrow batches (binary COPY under the hood).

        ``transform`` runs on the reading threads, in parallel when there are several. A window of
        named keys (CDC) is read on this reader's connection: split into block ranges, each part
        would look every key up in the index again, on a connection more.
        """
        sql = select_sql(self.contract, window, self.schema, extra_columns, rescued)

        def convert(batch: pa.RecordBatch) -> pa.RecordBatch:
            ready = prepare(batch, self.contract, window, legacy)
            return ready if transform is None else transform(ready)

        yield from self._parallel(sql, convert, split=window.keys is None)

    def raw_json(self, window: LoadWindow, available: set[str]) -> Iterator[pa.RecordBatch]:
        """The window's rows as they are, one JSON text per row (for the quarantine).

        The window filter is applied only if every column it names still exists.
        """
        sql = f"SELECT row_to_json(t)::text AS record FROM {self.table} t"
        where = window_predicate(self.contract, window)
        needed = {"updated_at", self.contract.partitioning.business_date_column} - {None}
        if where is not None and needed <= available:
            sql += f" WHERE ({where})"
        yield from self._stream(self._conn, sql)

    def key_batches(self) -> Iterator[pa.RecordBatch]:
        """Stream every primary key in the snapshot, over connections of its own (so it can run
        beside :meth:`batches`), in the types bronze stores them (:func:`key_schema`)."""
        yield from self._parallel(keys_sql(self.contract, self.schema),
                                  lambda b: key_values(b, self.contract), own_connections=True)

    def _stream(self, conn, sql: str) -> Iterator[pa.RecordBatch]:
        try:
            with conn.cursor() as cur:
                cur.adbc_statement.set_options(
                    **{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_SIZE_HINT_BYTES)}
                )
                cur.execute(sql)
                for batch in _result_batches(cur):
                    if batch.num_rows:
                        yield batch
        except Exception as exc:
            if not _connection_lost(exc):
                raise
            raise SourceConnectionError(
                f"{self.contract.bronze_table}: lost the connection to the PostgreSQL source "
                f"({describe_dsn(self.dsn)}) while reading {self.schema}.{self.contract.source_name}: "
                f"{redact(str(exc).strip().splitlines()[0], self.dsn)}. Nothing was merged; check that the "
                f"server is up, then re-run (Dagster retries the step by itself)."
            ) from None

    def _parallel(
        self, sql: str, transform: Callable[[pa.RecordBatch], pa.RecordBatch] | None,
        own_connections: bool = False, split: bool = True,
    ) -> Iterator[pa.RecordBatch]:
        apply = transform or (lambda b: b)
        shared = not own_connections  # part 0 may use the reader's own connection
        if (self.parallelism == 1 or not split) and shared:
            for batch in self._stream(self._conn, sql):
                stop_point()
                yield apply(batch)
            return
        out: queue.Queue = queue.Queue(maxsize=2 * self.parallelism)
        stop = threading.Event()

        def work(part: int) -> None:
            conn = None
            try:
                conn = self._conn if part == 0 and shared else self._open(self._snapshot_id)
                # the next batch is read (the COPY decoded) on a thread of its own while this
                # one is transformed: the server keeps streaming meanwhile
                ranged = self.block_ranges.sql(sql, part)
                for batch in read_ahead(partial(self._stream, conn, ranged), depth=1,
                                        name=f"{self.contract.bronze_table}-read-{part}"):
                    if stop.is_set():
                        break
                    out.put(apply(batch))
                out.put(_DONE)
            except BaseException as exc:  # handed to the consumer, re-raised there
                out.put(exc)
            finally:
                if conn is not None and conn is not self._conn:
                    self._close(conn)

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(self.parallelism)]
        for t in threads:
            t.start()
        finished = 0
        try:
            while finished < len(threads):
                item = out.get()
                if item is _DONE:
                    finished += 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    stop_point()
                    yield item
        finally:
            stop.set()
            while any(t.is_alive() for t in threads):
                with contextlib.suppress(queue.Empty):
                    out.get(timeout=0.1)
            for t in threads:
                t.join()


def _result_batches(cur: Any) -> Iterator[pa.RecordBatch]:
    """The executed query's result, batch by batch, through ADBC's own reader: an error the
    server raises mid-stream (a division by zero in a row) then keeps its SQLSTATE, which the
    failure policy classifies by. ``fetch_record_batch`` hands out PyArrow's reader instead, whose
    errors are bare ``OSError``s (apache/arrow-adbc#1523)."""
    results = getattr(cur, "_results", None)
    reader = getattr(results, "reader", None)
    return iter(reader if reader is not None else cur.fetch_record_batch())
