"""History (SCD type 2, ARCHITECTURE §2.7): ``bz_<name>_history`` holds every version of each key
of ``bz_<name>``, written by the same load from the same MERGE plan.

Each commit chunk of the current table's MERGE is preceded by one history MERGE of the same plan
piece: it closes the key's current version (``_valid_to`` = the batch time) and inserts the new
one. Only inserted, changed, soft-deleted and returning keys reach it. The rows are the ones the
current table's MERGE writes (PII already protected by the hook), so crypto-shredding covers them.

Idempotent twice over: a chunk already in the history's commit log (batch id + chunk, as the data
commits) is skipped, and a version equal to the key's current one (same ``record_hash`` and
deletion state) is never added, so a load killed after its history commit and repeated under a
new batch id adds nothing twice. A history table missing while ``bz_<name>`` exists (history just
turned on, or a first load killed between its commits) is first seeded from the current rows.
"""

from __future__ import annotations

import logging
from datetime import datetime

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.change_feed import BRONZE_PROPERTIES, ensure_properties
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.key_ranges import key_range_sql, key_ranges
from bronze_assets.lib.delta.load_commit import commit_metadata, commit_properties
from bronze_assets.lib.delta.merge_plan import OP
from bronze_assets.lib.delta.query import read_columns
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.enrich.metadata import ACTIVE, DELETED, TS
from bronze_assets.lib.source.ddl import quote_ident

log = logging.getLogger(__name__)

VALID_FROM, VALID_TO, IS_DELETED = "_valid_from", "_valid_to", "_is_deleted"
HISTORY_FIELDS = (pa.field(VALID_FROM, TS), pa.field(VALID_TO, TS), pa.field(IS_DELETED, pa.bool_()))
HISTORY_COLUMNS = tuple(f.name for f in HISTORY_FIELDS)
# the batch that seeded the history (not a batch key: the batch's own chunks are still to write)
SEEDED_BY_KEY = "bronze.history_seeded_by"
HOP = "_bronze_hop"  # a history MERGE source row: 'close' ends the current version, 'open' adds one


def history_schema(schema: pa.Schema) -> pa.Schema:
    """The history table's schema: ``schema`` (the current table's) and the version columns."""
    return pa.schema([*(f for f in schema if f.name not in HISTORY_COLUMNS), *HISTORY_FIELDS])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns (cast; missing ones NULL)."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names
            else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


class HistoryWriter:
    """Writes the versions of one contract's keys to ``bz_<name>_history`` (see the module)."""

    def __init__(self, contract: Contract, storage: Storage) -> None:
        self.contract, self.storage = contract, storage
        self.table = contract.history_table
        self.uri = storage.uri(self.table)
        self.pk = list(contract.merge_key)

    def _properties(self, dt: DeltaTable | None, batch_id: str, batch_time: datetime, chunk: int = 0,
                    chunks: int = 1) -> CommitProperties:
        meta = commit_metadata(batch_id, "history", None, chunk, chunks, batch_time=batch_time)
        return commit_properties(dt, self.contract, meta, table=self.table)

    def seed(self, batch_id: str, batch_time: datetime) -> bool:
        """Create the history table from the current table's rows (one version each, valid from
        its ``update_timestamp``) when it does not exist yet; True when it was created."""
        if self.storage.open(self.table) is not None:
            return False
        current = self.storage.open(self.contract.bronze_table)
        if current is None:
            return False
        schema = pa.schema(current.schema().to_arrow())
        # read whole, then written in one commit (a DataFusion scan cannot stream into a delta-rs
        # write: one runtime inside another); a seed that fails leaves no table, so it is redone
        table = _conform(read_columns(current, schema.names), schema)
        table = table.append_column(VALID_FROM, table.column("update_timestamp").cast(TS))
        table = table.append_column(IS_DELETED, pc.equal(table.column("record_status"), DELETED))
        write_deltalake(self.uri, _conform(table, history_schema(schema)), mode="error",
                        storage_options=self.storage.delta_options, configuration=BRONZE_PROPERTIES,
                        commit_properties=commit_properties(None, self.contract, {SEEDED_BY_KEY: batch_id},
                                                            table=self.table))
        log.info("%s: history seeded from %s (version %d)", self.uri, self.contract.bronze_table,
                 current.version())
        return True

    def write(self, batches: list[pa.RecordBatch], batch_id: str, batch_time: datetime, chunk: int,
              chunks: int) -> int:
        """Add the versions of one chunk of the current table's MERGE: ``batches`` is its source
        (protected rows of inserted / updated keys, delete markers; column ``OP``). Returns the
        versions added (0 when the chunk is already in the history's log)."""
        dt = self.storage.open(self.table)
        if dt is None:
            raise RuntimeError(f"{self.table}: the history table is missing; it is seeded before the "
                               f"first MERGE that writes it (HistoryWriter.seed)")
        if chunk in CommitLog.read(dt).committed_chunks(batch_id):
            log.info("%s: chunk %d/%d of batch %s already committed", self.uri, chunk + 1, chunks, batch_id)
            return 0
        if ensure_properties(dt):
            dt = self.storage.open(self.table) or dt
        target = pa.schema(dt.schema().to_arrow())
        rows = pl.from_arrow(pa.Table.from_batches(batches))
        assert isinstance(rows, pl.DataFrame)
        if not rows.height:
            return 0
        current = self._current(dt, target, rows.select(self.pk))
        versions = self._versions(rows, current, target, batch_id, batch_time)
        if not versions.height:
            return 0
        self._merge(dt, versions, target, batch_id, batch_time, chunk, chunks)
        return versions.height

    def _current(self, dt: DeltaTable, target: pa.Schema, keys: pl.DataFrame) -> pl.DataFrame:
        """The current version of each of ``keys`` held by the history table."""
        ranges = key_ranges(keys.get_column(self.pk[0]))
        where = f"{quote_ident(VALID_TO)} IS NULL AND " + key_range_sql(quote_ident(self.pk[0]), ranges)
        found = pl.from_arrow(_conform(read_columns(dt, target.names, where), target))
        assert isinstance(found, pl.DataFrame)
        return found.join(keys.cast({k: found.schema[k] for k in self.pk}), on=self.pk, how="semi")

    def _versions(self, rows: pl.DataFrame, current: pl.DataFrame, target: pa.Schema, batch_id: str,
                  batch_time: datetime) -> pl.DataFrame:
        """The new versions: the upserted rows, and for each deleted key its current version marked
        deleted; none equal to the key's current version."""
        at = pl.lit(batch_time).cast(pl.Datetime("us", "UTC"))
        upserts = rows.filter(pl.col(OP) != "D").drop(OP).with_columns(
            pl.lit(ACTIVE).alias("record_status"), at.alias(VALID_FROM), pl.lit(False).alias(IS_DELETED))
        gone = rows.filter(pl.col(OP) == "D").select(self.pk)
        deletions = current.join(gone.cast({k: current.schema[k] for k in self.pk}), on=self.pk, how="semi") \
            .filter(~pl.col(IS_DELETED)).with_columns(
                pl.lit(DELETED).alias("record_status"), pl.lit(batch_id).alias("batch_id"),
                at.alias("update_timestamp"), at.alias(VALID_FROM), pl.lit(True).alias(IS_DELETED))
        schema = history_schema(pa.schema([*target, *(f for f in _arrow(upserts).schema
                                                      if f.name not in target.names)]))
        new = pl.concat([pl.from_arrow(_conform(_arrow(f), schema)) for f in (upserts, deletions)
                         if f.height], how="vertical")  # type: ignore[misc]
        if not current.height or not new.height:
            return new
        same = current.select(*self.pk, pl.col("record_hash").alias("_c_hash"),
                              pl.col(IS_DELETED).alias("_c_del"))
        joined = new.join(same.cast({k: new.schema[k] for k in self.pk}), on=self.pk, how="left")
        unchanged = (pl.col("_c_hash") == pl.col("record_hash")) & (pl.col("_c_del") == pl.col(IS_DELETED))
        return joined.filter(~unchanged.fill_null(False)).drop("_c_hash", "_c_del")

    def _merge(self, dt: DeltaTable, versions: pl.DataFrame, target: pa.Schema, batch_id: str,
               batch_time: datetime, chunk: int, chunks: int) -> None:
        """One MERGE: close each key's current version, insert its new one."""
        opened = versions.with_columns(pl.lit("open").alias(HOP))
        closing = versions.select(*self.pk, VALID_FROM, pl.lit("close").alias(HOP))
        source = pl.concat([opened, closing], how="diagonal_relaxed")
        evolve = any(c not in target.names for c in versions.columns)
        on = " AND ".join([f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in self.pk]
                          + [f"t.{quote_ident(VALID_TO)} IS NULL", f"s.{HOP} = 'close'",
                             key_range_sql(f"t.{quote_ident(self.pk[0])}",
                                           key_ranges(versions.get_column(self.pk[0])))])
        inserts = {quote_ident(c): f"s.{quote_ident(c)}" for c in versions.columns}
        (
            dt.merge(_arrow(source), predicate=on, source_alias="s", target_alias="t",
                     merge_schema=evolve, commit_properties=self._properties(dt, batch_id, batch_time, chunk,
                                                                              chunks))
            .when_matched_update({quote_ident(VALID_TO): f"s.{quote_ident(VALID_FROM)}"})
            .when_not_matched_insert(inserts, predicate=f"s.{HOP} = 'open'")
            .execute()
        )
        log.info("%s: chunk %d/%d of batch %s: %d versions", self.uri, chunk + 1, chunks, batch_id,
                 versions.height)


def _arrow(frame: pl.DataFrame) -> pa.Table:
    return frame.to_arrow()
