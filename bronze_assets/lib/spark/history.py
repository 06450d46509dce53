"""History (SCD type 2, ARCHITECTURE §2.7) on the Spark engine: the history MERGE of
:mod:`bronze_assets.lib.delta.history` (the same statement, :func:`history_merge`) with
delta-spark, before the current table's MERGE and from the same plan: its source is the
current MERGE's protected source (inserted and updated rows; a soft-deleted key's version is
its row in ``bz_<name>`` marked deleted). A missing history table is seeded from the current
rows first, as on the local engine."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.commit_log import commit_history
from bronze_assets.lib.delta.history import (
    CLOSE,
    HOP,
    IS_DELETED,
    OPEN,
    SEEDED_BY_KEY,
    VALID_FROM,
    VALID_TO,
    VERSION_OPS,
    history_merge,
)
from bronze_assets.lib.delta.load_commit import commit_metadata
from bronze_assets.lib.delta.merge_plan import OP
from bronze_assets.lib.delta.merge_rule import DELETE
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.enrich.metadata import ACTIVE, DELETED
from bronze_assets.lib.spark.commit import commit_with

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

ROUTE = "_bronze_route"  # a changed key's partition in bz_<name>, which the MERGE keeps


def _quoted(name: str) -> str:
    return f"`{name}`"


class SparkHistory:
    """Writes the versions of one contract's keys to ``bz_<name>_history`` with delta-spark."""

    def __init__(self, spark: SparkSession, contract: Contract, storage: Storage) -> None:
        self.spark, self.contract, self.storage = spark, contract, storage
        self.table = contract.history_table
        self.uri = storage.uri(self.table)
        self.current_uri = storage.uri(contract.bronze_table)
        self.pk = list(contract.merge_key)

    def version(self) -> int | None:
        """The history table's Delta version (None: it does not exist)."""
        dt = self.storage.open(self.table)
        return dt.version() if dt is not None else None

    def seed(self, batch_id: str) -> bool:
        """Create the history table from the current table's rows (one version each, valid from
        its ``update_timestamp``) when it does not exist yet; True when it was created."""
        from pyspark.sql import functions as F

        if self.storage.open(self.table) is not None or self.storage.open(self.contract.bronze_table) is None:
            return False
        rows = self.spark.read.format("delta").load(self.current_uri)
        seeded = rows.select("*", F.col("update_timestamp").alias(VALID_FROM),
                             F.lit(None).cast("timestamp").alias(VALID_TO),
                             (F.col("record_status") == F.lit(DELETED)).alias(IS_DELETED))
        commit_with(self.spark, self.contract, None, {SEEDED_BY_KEY: batch_id},
                    lambda: seeded.write.format("delta").mode("errorifexists").save(self.uri),
                    table=self.table)
        log.info("%s: history seeded from %s", self.uri, self.contract.bronze_table)
        return True

    def write(self, source: DataFrame, batch_id: str, batch_time: datetime, routes: DataFrame | None = None
              ) -> int:
        """Add the versions of the current table's MERGE ``source`` (protected rows, column ``OP``;
        evaluated before that MERGE). ``routes``: the partition (column ``ROUTE``) each existing
        key of a partitioned table keeps, which its version records too. Returns the versions
        added."""
        from delta.tables import DeltaTable
        from pyspark.sql import functions as F

        target = self.storage.open(self.table)
        if target is None:
            raise RuntimeError(f"{self.table}: the history table is missing; it is seeded before the "
                               f"first MERGE that writes it (SparkHistory.seed)")
        at = F.lit(batch_time.astimezone(UTC)).cast("timestamp")
        upserts = source.filter(F.col(OP).isin(*VERSION_OPS)).drop(OP).withColumns(
            {"record_status": F.lit(ACTIVE), VALID_FROM: at, IS_DELETED: F.lit(False)})
        part = self.contract.partitioning.delta_column
        if routes is not None and part:
            upserts = upserts.join(routes, self.pk, "left") \
                .withColumn(part, F.coalesce(F.col(ROUTE), F.col(part))).drop(ROUTE)
        gone = source.filter(F.col(OP) == DELETE).select(*self.pk)
        deleted = self.spark.read.format("delta").load(self.current_uri).join(gone, self.pk, "left_semi") \
            .withColumns({"record_status": F.lit(DELETED), "batch_id": F.lit(batch_id),
                          "update_timestamp": at, VALID_FROM: at, IS_DELETED: F.lit(True)})
        versions = upserts.unionByName(deleted, allowMissingColumns=True)
        merge_source = versions.withColumn(HOP, F.lit(OPEN)).unionByName(
            versions.select(*self.pk, "record_hash", IS_DELETED, VALID_FROM, F.lit(CLOSE).alias(HOP)),
            allowMissingColumns=True)
        statement = history_merge(self.pk, versions.columns, _quoted)
        meta = commit_metadata(batch_id, "history", None, batch_time=batch_time)
        before = target.version()

        def merge() -> None:
            (
                DeltaTable.forPath(self.spark, self.uri).alias("t")
                .merge(merge_source.alias("s"), statement.predicate)
                .whenMatchedUpdate(statement.close_when, statement.close_set)
                .whenNotMatchedInsert(statement.open_when, statement.open_values)
                .execute()
            )

        commit_with(self.spark, self.contract, target, meta, merge, table=self.table)
        after = self.storage.open(self.table)
        if after is None or after.version() == before:
            return 0
        (entry,) = commit_history(after, 1)
        added = int((entry.get("operationMetrics") or {}).get("numTargetRowsInserted", 0))
        log.info("%s: batch %s: %d versions", self.uri, batch_id, added)
        return added
