"""History (SCD type 2, ARCHITECTURE §2.7): ``bz_<name>_history`` holds every version of each key
of ``bz_<name>``, written by the same load from the same MERGE plan, on either engine.

Each commit chunk of the current table's MERGE is preceded by one history MERGE of the same plan
piece (:func:`history_merge`, the same statement on both engines): it closes the key's current
version (``_valid_to`` = the batch time) and inserts the new one. Only inserted, changed,
soft-deleted and returning keys reach it: the upserted rows are the ones the current table's MERGE
writes (PII already protected), a soft-deleted key's version is its row in ``bz_<name>`` marked
deleted; so crypto-shredding covers them.

Idempotent by the statement itself: a new version equal to the key's current one (same
``record_hash`` and deletion state) matches it and is not inserted, and the current one is then
not closed, so a retried chunk or a load killed after its history commit and repeated under a new
batch id adds nothing twice (and a MERGE that changes nothing commits nothing on delta-rs). A
history table missing while ``bz_<name>`` exists (history just turned on, or a first load killed
between its commits) is first seeded from the current rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.change_feed import BRONZE_PROPERTIES, ensure_properties
from bronze_assets.lib.delta.key_ranges import key_range_sql, key_ranges
from bronze_assets.lib.delta.load_commit import commit_metadata, commit_properties
from bronze_assets.lib.delta.merge_plan import OP
from bronze_assets.lib.delta.merge_rule import DELETE, INSERT, UPDATE
from bronze_assets.lib.delta.query import read_columns
from bronze_assets.lib.delta.staged_file import slices
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.delta.write_options import SEED_BATCH_ROWS, target_file_bytes, writer_properties
from bronze_assets.lib.enrich.metadata import ACTIVE, DELETED, TS
from bronze_assets.lib.source.ddl import quote_ident

log = logging.getLogger(__name__)

VALID_FROM, VALID_TO, IS_DELETED = "_valid_from", "_valid_to", "_is_deleted"
HISTORY_FIELDS = (pa.field(VALID_FROM, TS), pa.field(VALID_TO, TS), pa.field(IS_DELETED, pa.bool_()))
HISTORY_COLUMNS = tuple(f.name for f in HISTORY_FIELDS)
# the batch that seeded the history (not a batch key: the batch's own chunks are still to write)
SEEDED_BY_KEY = "bronze.history_seeded_by"
HOP = "_bronze_hop"  # a history MERGE source row: 'close' ends the current version, 'open' adds one
CLOSE, OPEN = "close", "open"
VERSION_OPS = (INSERT, UPDATE)  # plan operations whose staged row is a new version (not a re-hash)


def adds_versions(ops: Iterable[str]) -> bool:
    """Whether a MERGE plan (piece) with operations ``ops`` adds history versions: an inserted,
    updated or soft-deleted key does; a re-hash-only plan (v1 → v2, no data changed) adds none, so
    neither engine runs a history MERGE for it."""
    return any(op in VERSION_OPS or op == DELETE for op in ops)


def history_schema(schema: pa.Schema) -> pa.Schema:
    """The history table's schema: ``schema`` (the current table's) and the version columns."""
    return pa.schema([*(f for f in schema if f.name not in HISTORY_COLUMNS), *HISTORY_FIELDS])


@dataclass(frozen=True)
class HistoryMerge:
    """The history MERGE of both engines, as SQL of the engine's dialect (``quote``). Its source
    holds each new version twice: an ``open`` row (the version) and a ``close`` row (key, hash,
    deletion state, ``_valid_from``). A ``close`` row matches the key's current version only when
    that differs from the new one, and sets its ``_valid_to``; an ``open`` row matches it only
    when it equals the new one, and is inserted otherwise. At most one source row matches a
    target row (delta-spark refuses more)."""

    predicate: str
    close_when: str
    close_set: dict[str, str]
    open_when: str
    open_values: dict[str, str]


def history_merge(pk: Sequence[str], columns: Sequence[str], quote: Callable[[str], str],
                  narrow: str | None = None) -> HistoryMerge:
    """The statement for keys ``pk`` inserting ``columns``; ``narrow``: a condition on the target
    (e.g. the keys' ranges) that lets the engine skip files."""
    def t(c: str) -> str:
        return f"t.{quote(c)}"

    def s(c: str) -> str:
        return f"s.{quote(c)}"

    same = (f"({t('record_hash')} IS NOT DISTINCT FROM {s('record_hash')}) "
            f"AND ({t(IS_DELETED)} = {s(IS_DELETED)})")
    terms = [f"{t(k)} = {s(k)}" for k in pk] + [f"{t(VALID_TO)} IS NULL"] + ([narrow] if narrow else [])
    predicate = " AND ".join([*terms, f"((s.{HOP} = '{CLOSE}' AND NOT ({same})) OR "
                                      f"(s.{HOP} = '{OPEN}' AND {same}))"])
    return HistoryMerge(predicate, f"s.{HOP} = '{CLOSE}'", {quote(VALID_TO): s(VALID_FROM)},
                        f"s.{HOP} = '{OPEN}'", {quote(c): s(c) for c in columns})


def history_metadata(contract: Contract, storage: Storage, batch_id: str, version: int | None,
                     versions_added: int | None = None) -> dict[str, Any]:
    """The history asset's materialization metadata as plain values, either engine (``table_uri``
    is a path; ``delta_version`` -1 while the table does not exist)."""
    meta: dict[str, Any] = {"table_uri": storage.uri(contract.history_table), "batch_id": batch_id,
                            "delta_version": -1 if version is None else version}
    if versions_added is not None:
        meta["versions_added"] = versions_added
    return meta


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns (cast; missing ones NULL)."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names
            else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _seed_rows(batch: pa.RecordBatch, schema: pa.Schema, target: pa.Schema) -> pa.RecordBatch:
    """One batch of the current table's rows (``schema``) as first versions in the history
    table's ``target`` schema: valid from their ``update_timestamp``, deleted when DELETED."""
    table = _conform(pa.Table.from_batches([batch]), schema)
    table = table.append_column(VALID_FROM, table.column("update_timestamp").cast(TS))
    table = table.append_column(IS_DELETED, pc.equal(table.column("record_status"), DELETED))
    return pa.RecordBatch.from_arrays([c.combine_chunks() for c in _conform(table, target).columns],
                                      schema=target)


class HistoryWriter:
    """Writes the versions of one contract's keys to ``bz_<name>_history`` with delta-rs (see the
    module). One instance per load: the history table is opened once and kept current."""

    def __init__(self, contract: Contract, storage: Storage) -> None:
        self.contract, self.storage = contract, storage
        self.table = contract.history_table
        self.uri = storage.uri(self.table)
        self.pk = list(contract.merge_key)
        self._dt: DeltaTable | None = None
        self._created = False  # this writer's seed created the table (its version 0), not opened since

    @property
    def version(self) -> int | None:
        """The history table's version as this writer last left it (None: no history table)."""
        if self._dt is None and self._created:
            return 0
        dt = self._open()
        return dt.version() if dt is not None else None

    def reopen(self) -> None:
        """Open the history table again at its next use (after a commit conflict)."""
        self._dt, self._created = None, False

    def _open(self) -> DeltaTable | None:
        if self._dt is None:
            self._dt = self.storage.open(self.table)
        return self._dt

    def _properties(self, dt: DeltaTable | None, batch_id: str, batch_time: datetime, chunk: int = 0,
                    chunks: int = 1) -> CommitProperties:
        meta = commit_metadata(batch_id, "history", None, chunk, chunks, batch_time=batch_time)
        return commit_properties(dt, self.contract, meta, table=self.table)

    def seed(self, batch_id: str, batch_time: datetime, replace: bool = False,
             written: Callable[[], pa.RecordBatchReader] | None = None,
             current: DeltaTable | None = None) -> bool:
        """Create the history table from the current table's rows (one version each, valid from
        its ``update_timestamp``) when it does not exist yet (``replace``: in place of the one
        there is); True when it was written. ``written``: the rows of the current table as the
        load that created it just wrote them (streamed, not read back); ``current``: that table
        as the load left it (else opened)."""
        if self._open() is not None and not replace:
            return False
        current = current if current is not None else self.storage.open(self.contract.bronze_table)
        if current is None:
            return False
        schema = pa.schema(current.schema().to_arrow())
        target = history_schema(schema)
        # the rows as written stream batch by batch into the one commit; read back, they are read
        # whole (a DataFusion scan cannot stream into a delta-rs write: one runtime inside
        # another). A seed that fails leaves no table, so it is redone.
        batches = written() if written is not None else \
            read_columns(current, schema.names).to_batches()
        rows = pa.RecordBatchReader.from_batches(
            target, (_seed_rows(piece, schema, target) for piece in slices(batches, SEED_BATCH_ROWS)))
        file_bytes = target_file_bytes(self.contract, self.storage.settings)
        write_deltalake(self.uri, rows,
                        mode="overwrite" if replace else "error",
                        schema_mode="overwrite" if replace else None,
                        storage_options=self.storage.delta_options, target_file_size=file_bytes,
                        writer_properties=writer_properties(self.contract, self.storage.settings),
                        configuration={"delta.targetFileSize": str(file_bytes), **BRONZE_PROPERTIES},
                        commit_properties=commit_properties(self._dt, self.contract,
                                                            {SEEDED_BY_KEY: batch_id}, table=self.table))
        self._dt, self._created = None, not replace  # a create is version 0 (mode error)
        log.info("%s: history seeded from %s (version %d)", self.uri, self.contract.bronze_table,
                 current.version())
        return True

    def write(self, batches: list[pa.RecordBatch], current: DeltaTable, batch_id: str, batch_time: datetime,
              chunk: int, chunks: int) -> int:
        """Add the versions of one chunk of the current table's MERGE: ``batches`` is its source
        (protected rows of inserted / updated keys, delete markers; column ``OP``), ``current``
        the current table before that MERGE (a deleted key's row). Returns the versions added."""
        dt = self._open()
        if dt is None:
            raise RuntimeError(f"{self.table}: the history table is missing; it is seeded before the "
                               f"first MERGE that writes it (HistoryWriter.seed)")
        if ensure_properties(dt):
            dt = self._dt = self.storage.open(self.table) or dt
        rows = pl.from_arrow(pa.Table.from_batches(batches)) if batches else None
        if not isinstance(rows, pl.DataFrame) or not rows.height:
            return 0
        target = pa.schema(dt.schema().to_arrow())
        versions = self._versions(rows, current, target, batch_id, batch_time)
        if not versions.height:
            return 0
        return self._merge(dt, versions, target, batch_id, batch_time, chunk, chunks)

    def _deleted(self, current: DeltaTable, keys: pl.DataFrame) -> pl.DataFrame:
        """The rows of ``keys`` in the current table (their last content, which a deletion keeps)."""
        where = key_range_sql(quote_ident(self.pk[0]), key_ranges(keys.get_column(self.pk[0])))
        schema = pa.schema(current.schema().to_arrow())
        found = pl.from_arrow(_conform(read_columns(current, schema.names, where), schema))
        assert isinstance(found, pl.DataFrame)
        return found.join(keys.cast({k: found.schema[k] for k in self.pk}), on=self.pk, how="semi")

    def _versions(self, rows: pl.DataFrame, current: DeltaTable, target: pa.Schema, batch_id: str,
                  batch_time: datetime) -> pl.DataFrame:
        """The new versions: the inserted and updated rows, and each deleted key's row marked deleted
        (a re-hashed row is no new version)."""
        at = pl.lit(batch_time).cast(pl.Datetime("us", "UTC"))
        upserts = rows.filter(pl.col(OP).is_in(VERSION_OPS)).drop(OP).with_columns(
            pl.lit(ACTIVE).alias("record_status"), at.alias(VALID_FROM), pl.lit(False).alias(IS_DELETED))
        gone = rows.filter(pl.col(OP) == DELETE).select(self.pk)
        deletions = self._deleted(current, gone).with_columns(
            pl.lit(DELETED).alias("record_status"), pl.lit(batch_id).alias("batch_id"),
            at.alias("update_timestamp"), at.alias(VALID_FROM), pl.lit(True).alias(IS_DELETED)) \
            if gone.height else None
        schema = history_schema(pa.schema([*target, *(f for f in upserts.to_arrow().schema
                                                      if f.name not in target.names)]))
        parts = [pl.from_arrow(_conform(f.to_arrow(), schema)) for f in (upserts, deletions)
                 if f is not None and f.height]
        return pl.concat(parts, how="vertical") if parts else pl.DataFrame()  # type: ignore[arg-type]

    def _merge(self, dt: DeltaTable, versions: pl.DataFrame, target: pa.Schema, batch_id: str,
               batch_time: datetime, chunk: int, chunks: int) -> int:
        """One MERGE (:func:`history_merge`); returns the versions it inserted."""
        opened = versions.with_columns(pl.lit(OPEN).alias(HOP))
        closing = versions.select(*self.pk, "record_hash", IS_DELETED, VALID_FROM, pl.lit(CLOSE).alias(HOP))
        source = pl.concat([opened, closing], how="diagonal_relaxed")
        narrow = key_range_sql(f"t.{quote_ident(self.pk[0])}", key_ranges(versions.get_column(self.pk[0])))
        statement = history_merge(self.pk, versions.columns, quote_ident, narrow)
        metrics: dict[str, Any] = (
            dt.merge(source.to_arrow(), predicate=statement.predicate, source_alias="s", target_alias="t",
                     merge_schema=any(c not in target.names for c in versions.columns),
                     writer_properties=writer_properties(self.contract, self.storage.settings),
                     commit_properties=self._properties(dt, batch_id, batch_time, chunk, chunks))
            .when_matched_update(statement.close_set, predicate=statement.close_when)
            .when_not_matched_insert(statement.open_values, predicate=statement.open_when)
            .execute()
        )
        added = int(metrics.get("num_target_rows_inserted", 0))
        log.info("%s: chunk %d/%d of batch %s: %d versions", self.uri, chunk + 1, chunks, batch_id, added)
        return added
