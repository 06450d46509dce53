"""One bronze load on Spark: JDBC read of the window → enrichment in Spark SQL → the §2.3 MERGE
with delta-spark. The same contract, window, watermark, hash, score, partition value and commit
metadata as the local engine, so a table stays exact whichever engine loads it next.

The plan is the local engine's: the staged keys and hashes are joined with the target's keys,
hashes and statuses; only new, changed and vanished keys go into the MERGE, so a load that
changes nothing commits nothing, a FORGOTTEN key is never written again, and the counts come
from the plan. The commit carries the batch id, the window and the watermark (in delta-spark's
``userMetadata``) and a Delta app transaction (``txnAppId``/``txnVersion``); before writing,
the table's history is read, so a batch that already landed is never applied twice.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from bronze_assets.contracts import ROW_KEY, Contract
from bronze_assets.contracts.model import ROW_KEY_SEPARATOR
from bronze_assets.lib.delta.change_feed import SPARK_PROPERTIES, ensure_properties
from bronze_assets.lib.delta.commit_log import (
    BATCH_KEY,
    HASH_VERSION,
    REHASHED_KEY,
    CommitLog,
    batch_metrics,
)
from bronze_assets.lib.delta.history import adds_versions
from bronze_assets.lib.delta.load_commit import (
    commit_metadata,
    commit_properties,
    commit_without_rows,
    partition_range_metadata,
)
from bronze_assets.lib.delta.merge_result import DuplicateKeyError, MergeResult
from bronze_assets.lib.delta.merge_rule import DELETE, INSERT, REHASH, UPDATE, PlanTerms, decide
from bronze_assets.lib.delta.outcome import LoadOutcome
from bronze_assets.lib.delta.protection import PiiHook, require_hook
from bronze_assets.lib.delta.query import table_stats
from bronze_assets.lib.delta.staging import score_sum, stage_dir
from bronze_assets.lib.delta.storage import StorageLike, as_storage, open_table
from bronze_assets.lib.delta.writers import S3_SCHEMES, SPARK, check_target
from bronze_assets.lib.enrich.metadata import ACTIVE, DELETED, FORGOTTEN, BatchContext, bronze_schema
from bronze_assets.lib.governance.pii import pii_protection
from bronze_assets.lib.load import (
    DEFAULT_OVERLAP,
    describe_window,
    inspect_source,
    next_watermark,
    plan_from_log,
    quarantine_unstorable,
)
from bronze_assets.lib.source.extract import LEGACY_HASH, SourceReader
from bronze_assets.lib.source.pushdown import HASH, PART, RESCUED, pushdown_select_sql, storable_sql
from bronze_assets.lib.source.schema import SchemaDrift
from bronze_assets.lib.source.window import LoadWindow, TableSelection, cdc_window
from bronze_assets.lib.spark.commit import commit_with
from bronze_assets.lib.spark.history import ROUTE, SparkHistory
from bronze_assets.lib.spark.jdbc import read_keys, read_query, typed_columns
from bronze_assets.lib.spark.score import score_column
from bronze_assets.lib.spark.session import RUNTIME_CONF, configure_object_store
from bronze_assets.settings import SOURCE_SYSTEM

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

OP = "_bronze_op"
T_HASH, T_STATUS, T_PART = "_t_hash", "_t_status", "_t_part"


class SparkEngineError(RuntimeError):
    """A load the Spark engine cannot do (yet); the message says what to run instead."""


ENGINE = "spark"


@dataclass
class SparkLoadResult:
    """What one Spark load read and did (the same figures the local engine publishes)."""

    batch_id: str
    batch_time: datetime
    window: str
    rows: int
    merge: MergeResult
    watermark: datetime | None = None
    extract_seconds: float = 0.0
    unreadable_records: int = 0  # rows with values bronze cannot store (listed in bz_quarantine)
    score_histogram: np.ndarray = field(default_factory=lambda: np.zeros(101, dtype=np.int64))
    validation: Any = None  # what ``validate`` returned for the staged rows
    schema_drift: SchemaDrift | None = None  # the source compared with the contract (nothing breaking)

    def outcome(self, contract: Contract) -> LoadOutcome:
        return LoadOutcome(contract, ENGINE, self.batch_id, self.batch_time, self.window, self.rows,
                           self.merge, self.extract_seconds, self.watermark)


@dataclass
class SparkStaged:
    """A Spark load read and staged (parquet under ``folder``), not yet merged."""

    contract: Contract
    ctx: BatchContext
    plan: LoadWindow | None  # None: not a window of a database table (landing files)
    folder: Path
    sweep: bool  # the source's key set was staged beside the rows (to find deletes)
    score_histogram: np.ndarray
    unreadable_records: int
    schema_drift: SchemaDrift | None
    watermark: datetime | None
    meta: dict[str, str]  # the commit's bronze metadata
    extract_seconds: float
    commit_always: bool = False  # commit (the metadata: a CDC position) even when nothing changed
    keep_after_merge: bool = False
    committed: bool | None = None
    pii: PiiHook | None = None  # protects the PII columns as the rows are written (as on the local engine)
    commits: CommitLog | None = None  # the table's commit log read when staging (the MERGE reuses it)
    label: str | None = None  # what was read, when ``plan`` is None (e.g. "3 landing file(s)")
    deletes: bool = True  # a key the source no longer has is soft-deleted (never for landing files)
    before_commit: Callable[[], None] | None = None  # e.g. drop the files another run landed meanwhile

    @property
    def rows(self) -> int:
        return int(self.score_histogram.sum())

    @property
    def rows_path(self) -> Path:
        return self.folder / "rows"

    @property
    def window(self) -> str:
        return describe_window(self.plan) if self.plan is not None else str(self.label)

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _quoted(name: str) -> str:
    return f"`{name}`"


def _enriched(raw: DataFrame, contract: Contract, ctx: BatchContext) -> DataFrame:
    """The pushed-down rows as bronze rows: typed source columns, metadata, score, partition (and
    the v1 hash while a v1 table is re-hashed)."""
    from pyspark.sql import functions as F

    bad = {c.name: F.get_json_object(F.col(RESCUED), f"$.{c.name}").isNotNull()
           for c in contract.columns if storable_sql(c.name, c.type) is not None}
    legacy = [_quoted(LEGACY_HASH)] if LEGACY_HASH in raw.columns else []
    typed = raw.select(*typed_columns(contract), HASH, RESCUED, *([PART] if PART in raw.columns else []),
                       *legacy)
    at = ctx.batch_time.astimezone(UTC)
    part = contract.partitioning.delta_column
    return typed.select(
        *[_quoted(c) for c in contract.column_names],
        F.lit(at).cast("timestamp").alias("load_timestamp"),
        F.lit(at).cast("timestamp").alias("update_timestamp"),
        F.lit(SOURCE_SYSTEM).alias("source_system"),
        F.lit(ACTIVE).alias("record_status"),
        score_column(contract, ctx.load_date, bad).alias("data_quality_score"),
        F.lit(ctx.batch_id).alias("batch_id"),
        F.col(HASH).alias("record_hash"),
        *([_row_key()] if contract.keyless else []),
        *([F.date_from_unix_date(F.col(PART)).alias(part)] if part else []),
        F.col(RESCUED),
        *legacy,
    )


def _row_key() -> Column:
    """A keyless table's ``record_key`` (:class:`bronze_assets.lib.enrich.metadata.RowKeys`):
    ``<record_hash>#<n>``, n numbering the identical rows of the snapshot."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    n = F.row_number().over(Window.partitionBy(HASH).orderBy(HASH))
    return F.concat(F.col(HASH), F.lit(ROW_KEY_SEPARATOR), n.cast("string")).alias(ROW_KEY)


def _protected(hook: PiiHook) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function that protects each batch with the writer's PII ``hook`` (the same
    hook as the local writer's, :func:`~bronze_assets.lib.governance.pii.pii_protection`). The
    driver prepared it for every subject written (their data keys created beforehand, in one
    commit); the prepared hook travels in the task, so executors need neither the key store nor
    the master key, and a subject it was not prepared for fails the write."""

    def protect(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield hook.protect(batch)

    return protect


class SparkLoader:
    """Loads bronze tables with Spark: one instance per Spark session and bronze root.

    ``spark`` is the session, or a function that starts it: then it starts when a load first
    needs it (after the source was checked), so a load that fails at its source (credentials,
    grants, a missing table, a schema mismatch) fails without starting a JVM."""

    def __init__(self, spark: SparkSession | Callable[[], SparkSession], storage: StorageLike,
                 parallelism: int | None = None) -> None:
        self._session, self.storage = spark, as_storage(storage)
        self._parallelism = parallelism

    @cached_property
    def spark(self) -> SparkSession:
        session = self._session() if callable(self._session) else self._session
        for key, value in RUNTIME_CONF.items():  # also on a session this module did not build
            session.conf.set(key, value)
        settings = self.storage.settings
        if self.storage.root.lower().startswith(S3_SCHEMES) and not settings.databricks_runtime:
            configure_object_store(session, settings.object_store_endpoint)  # Databricks has its own
        return session

    @cached_property
    def parallelism(self) -> int:
        return self._parallelism or max(2, self.spark.sparkContext.defaultParallelism)

    def uri(self, contract: Contract) -> str:
        return self.storage.uri(contract.bronze_table)

    def load(
        self, contract: Contract, dsn: str, *, partition: tuple[datetime, datetime] | None = None,
        batch_time: datetime | None = None, overlap: timedelta = DEFAULT_OVERLAP, changes_only: bool = False,
        validate: Callable[[Path, BatchContext], Any] | None = None,
    ) -> SparkLoadResult:
        """Read ``partition`` (UTC start/end; None = the whole table) of ``contract`` and MERGE it.

        ``validate`` (e.g. the GX suite) reads the staged rows (a parquet folder, source columns
        plaintext) in a driver thread while the MERGE runs; its answer is the result's ``validation``.
        """
        staged = self.stage(contract, TableSelection(dsn, partition, changes_only), batch_time=batch_time,
                            overlap=overlap)
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate") as pool:
                checking: Future[Any] | None = pool.submit(validate, staged.rows_path, staged.ctx) \
                    if validate is not None else None
                result = self.merge(staged)
                result.validation = checking.result() if checking is not None else None
        finally:
            staged.cleanup()
        return result

    def stage(self, contract: Contract, selection: TableSelection, *, batch_time: datetime | None = None,
              overlap: timedelta = DEFAULT_OVERLAP, commits: CommitLog | None = None) -> SparkStaged:
        """Read what ``selection`` names (the window; CDC keys or a slot's snapshot) in one snapshot
        and stage enriched rows (and the source's keys) as parquet for :meth:`merge`; nothing is
        written to the table here. ``commits``: the table's commit log (and table), when the
        caller read it already."""
        started = time.perf_counter()
        ctx = BatchContext(str(uuid.uuid4()), batch_time or datetime.now(UTC))
        if commits is None:
            commits = CommitLog.read(self.storage.open(contract.bronze_table))
        target = commits.table
        check_target(self.storage, contract.bronze_table, SPARK, target)  # one engine per S3 table
        legacy = target is not None and commits.hash_version() < HASH_VERSION  # re-hash v1 rows once (§2.2)
        dsn, partition = selection.dsn, selection.partition
        planned, previous = plan_from_log(contract, partition, ctx.batch_time, commits, overlap,
                                          selection.changes_only, settings=self.storage.settings)
        window = cdc_window(planned, selection.keys, selection.all_rows)
        folder = stage_dir(self.storage.settings.stage_dir) / f"spark-{contract.bronze_table}-{ctx.batch_id}"
        try:
            with SourceReader(dsn, contract, parallelism=self.parallelism,
                              snapshot_id=selection.snapshot_id) as reader:
                drift = inspect_source(reader, contract, window, ctx.batch_id, self.storage)
                if drift.added or drift.rescued:
                    raise SparkEngineError(
                        f"{contract.bronze_table}: the source has columns or types the contract does not "
                        f"name ({drift.describe()}); the Spark engine does not evolve schemas yet. Load "
                        f"this table with the local engine (BRONZE_ENGINE=local), or update the contract.")
                snapshot, ranges = reader.snapshot(), reader.block_ranges
                select = pushdown_select_sql(contract, window, legacy=legacy)
                raw = read_query(self.spark, dsn, contract, select, snapshot_id=reader.snapshot_id,
                                 partitioned=contract.partitioning.delta_column is not None,
                                 ranges=ranges)
                # staged while the snapshot is held: every JDBC partition reads the same state
                _enriched(raw, contract, ctx).write.parquet(str(folder / "rows"))
                sweep = not window.covers_table and window.keys is None and target is not None
                if sweep:
                    read_keys(self.spark, dsn, contract, snapshot_id=reader.snapshot_id,
                              ranges=ranges).write.parquet(str(folder / "keys"))
            histogram = self._histogram(self.spark.read.parquet(str(folder / "rows")))
            unreadable = self._quarantine(contract, self.spark.read.parquet(str(folder / "rows")), ctx)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        watermark = next_watermark(window, snapshot.watermark_cap(), previous)
        meta = commit_metadata(ctx.batch_id, describe_window(window), watermark, extra={
            "bronze.engine": ENGINE, "bronze.snapshot_xmin": str(snapshot.snapshot_xmin),
            **partition_range_metadata(partition)},
            final=dict(selection.final_metadata), batch_time=ctx.batch_time)
        return SparkStaged(contract, ctx, window, folder, sweep, histogram, unreadable, drift, watermark,
                           meta, round(time.perf_counter() - started, 3),
                           commit_always=selection.commit_always, pii=pii_protection(contract, self.storage),
                           commits=commits)

    def merge(self, staged: SparkStaged) -> SparkLoadResult:
        """Apply §2.3 to the table from the staged rows (the staged folder stays: see
        :meth:`SparkStaged.cleanup`)."""
        contract, window = staged.contract, staged.plan
        merge_started = time.perf_counter()
        if staged.before_commit is not None:
            staged.before_commit()
        rows_frame = self.spark.read.parquet(str(staged.rows_path))
        keys = self.spark.read.parquet(str(staged.folder / "keys")) if staged.sweep \
            else rows_frame.select(*contract.merge_key)
        cdc_keys = window.keys if window is not None else None
        if cdc_keys is not None:  # the changed keys the source no longer has
            named = self.spark.createDataFrame([(k,) for k in cdc_keys],
                                               f"`{contract.primary_key[0]}` BIGINT")
            keys = named.join(keys, list(contract.primary_key), "left_anti")
        rows = staged.rows
        result = self._write(contract, self.uri(contract), rows_frame.drop(RESCUED), keys, rows,
                             staged.meta, staged.ctx, keys_are_gone=cdc_keys is not None,
                             commit_always=staged.commit_always, pii=staged.pii, commits=staged.commits,
                             soft_deletes=staged.deletes)
        result.merge_seconds = round(time.perf_counter() - merge_started, 3)
        result.avg_quality_score = round(score_sum(staged.score_histogram) / rows, 2) if rows else None
        return SparkLoadResult(staged.ctx.batch_id, staged.ctx.batch_time, staged.window, rows,
                               result, staged.watermark, staged.extract_seconds, staged.unreadable_records,
                               staged.score_histogram, None, staged.schema_drift)

    @staticmethod
    def _histogram(staged: DataFrame) -> np.ndarray:
        """Rows per data_quality_score 0..100 (one aggregation; count and average follow from it)."""
        histogram = np.zeros(101, dtype=np.int64)
        for row in staged.groupBy("data_quality_score").count().collect():
            histogram[int(row[0])] = int(row[1])
        return histogram

    def _quarantine(self, contract: Contract, staged: DataFrame, ctx: BatchContext) -> int:
        """List the rows with unstorable values in ``bz_quarantine`` (rare: collected)."""
        from pyspark.sql import functions as F

        identity = contract.primary_key or ("record_hash",)  # a keyless table's row: its content hash
        bad = staged.filter(F.col(RESCUED).isNotNull()) \
            .select(*identity, RESCUED, *contract.encrypted_columns).collect()
        if not bad:
            return 0
        records, columns = [], set()
        order = contract.column_names
        for row in bad:
            values = json.loads(row[RESCUED])
            columns |= set(values)
            record: dict[str, Any] = {k: row[k] for k in identity}
            record |= {c: values[c] for c in order if c in values}
            for c in contract.encrypted_columns:
                record.setdefault(c, row[c])
            records.append(json.dumps(record, default=str))
        batch = pa.RecordBatch.from_arrays([pa.array(records, pa.string())], names=["record"])
        quarantine_unstorable(contract, ctx.batch_id, [batch], [c for c in order if c in columns],
                              self.storage)
        return len(records)

    def _write(self, contract: Contract, uri: str, staged: DataFrame, keys: DataFrame, rows: int,
               meta: dict[str, str], ctx: BatchContext, keys_are_gone: bool = False,
               commit_always: bool = False, pii: PiiHook | None = None, commits: CommitLog | None = None,
               soft_deletes: bool = True) -> MergeResult:
        """MERGE ``staged``; ``keys`` is the source's key set (keys missing from it become
        DELETED) or with ``keys_are_gone`` the keys the source no longer has (log-based CDC);
        without ``soft_deletes`` no key is soft-deleted (landing files: absence is not a delete).
        ``commit_always``: commit (the metadata) even when nothing changed. ``pii`` protects the
        PII columns (required when the contract has any: never plaintext by omission). ``commits``:
        the table's commit log read when staging (reused when nothing was committed since)."""
        from delta.tables import DeltaTable
        from pyspark.sql import functions as F

        pk = list(contract.merge_key)
        pii = require_hook(contract, pii, "write") if contract.encrypted_columns else None
        extra = staged.groupBy(*pk).count().agg(F.sum(F.col("count") - 1)).first()[0]
        if extra:  # rows more than keys, as the local engine counts them
            raise DuplicateKeyError.repeated(contract.bronze_table, pk, int(extra))
        target = self.storage.open(contract.bronze_table)
        if target is not None and meta[BATCH_KEY] in CommitLog.current(target, commits).committed_batch_ids():
            return MergeResult(uri, rows, committed=True)
        part = contract.partitioning.delta_column
        history = SparkHistory(self.spark, contract, self.storage) if contract.history else None
        if target is None:
            result = MergeResult(uri, rows, inserted=rows)
            if part:
                result.partitions = sorted(str(r[0]) for r in staged.select(part).distinct().collect())
            self._commit(contract, None, meta, lambda: self._create(contract, uri, staged, pii))
            result.committed, result.commits = True, 1
            if history is not None:  # every created row is its key's first version
                history.seed(ctx.batch_id)
                result.history_versions = rows
            return self._finish(result, uri, meta[BATCH_KEY], history)
        if history is not None:  # history turned on, or a first load killed before its seed
            history.seed(ctx.batch_id)
        current = self.spark.read.format("delta").load(uri).select(
            *pk, F.col("record_hash").alias(T_HASH), F.col("record_status").alias(T_STATUS),
            *([F.col(part).alias(T_PART)] if part else []))
        legacy = [LEGACY_HASH] if LEGACY_HASH in staged.columns else []  # a v1 table: re-hashed once
        status = F.col(T_STATUS)
        decision = decide(PlanTerms(
            is_new=status.isNull(), status=lambda value: status.eqNullSafe(F.lit(value)),
            hash_differs=~F.col(T_HASH).eqNullSafe(F.col("record_hash")),
            v1_hash_equal=F.col(T_HASH).eqNullSafe(F.col(LEGACY_HASH)) if legacy else None,
            rewrite_unchanged=F.lit(False), false=F.lit(False)))
        (first, name), *rest = decision.operations
        chosen = F.when(first, name)
        for condition, name in rest:
            chosen = chosen.when(condition, name)
        op = F.coalesce(chosen, F.when(decision.forgotten, "F"), F.lit("="))
        plan = staged.select(*pk, "record_hash", *legacy, *([part] if part else [])) \
            .join(current, pk, "left").withColumn(OP, op).drop("record_hash", *legacy, T_HASH, T_STATUS)
        staged = staged.drop(*legacy)
        if soft_deletes:
            vanished = current.filter(F.col(T_STATUS) == ACTIVE).join(
                keys, pk, "left_semi" if keys_are_gone else "left_anti") \
                .select(*pk, *([F.col(T_PART)] if part else []), F.lit(DELETE).alias(OP))
            plan = plan.unionByName(vanished, allowMissingColumns=True)
        plan = plan.cache()
        counts = {r[OP]: int(r["count"]) for r in plan.groupBy(OP).count().collect()}
        result = MergeResult(uri, rows, inserted=counts.get(INSERT, 0), updated=counts.get(UPDATE, 0),
                             unchanged=counts.get("=", 0) + counts.get(REHASH, 0),
                             soft_deleted=counts.get(DELETE, 0), forgotten_skipped=counts.get("F", 0),
                             rehashed_v1=counts.get(REHASH, 0))
        if result.rehashed_v1:
            meta = meta | {REHASHED_KEY: str(result.rehashed_v1)}
            log.info("%s: %d unchanged rows re-hashed from record_hash v1 to v2", uri, result.rehashed_v1)
        if result.rows_changed:
            if part:
                where = F.coalesce(F.col(T_PART), F.col(part))
                result.partitions = sorted(str(r[0]) for r in plan.filter(
                    F.col(OP).isin(INSERT, UPDATE, REHASH, DELETE)).select(where).distinct().collect())
            deletes = plan.filter(F.col(OP) == DELETE).select(
                *pk, OP, F.lit(ctx.batch_time.astimezone(UTC)).cast("timestamp").alias("update_timestamp"),
                F.lit(ctx.batch_id).alias("batch_id"))
            source = staged.join(plan.filter(F.col(OP).isin(INSERT, UPDATE, REHASH)).select(*pk, OP), pk) \
                .unionByName(deletes, allowMissingColumns=True)
            target = self._ensure_properties(contract, target)
            table = DeltaTable.forPath(self.spark, uri)
            protected = self._protect(contract, source, pii)
            if history is not None and adds_versions(op for op, n in counts.items() if n):
                # protected once (checkpointed), written to both tables, history first
                protected = protected.localCheckpoint()
                routes = plan.filter(F.col(T_PART).isNotNull()).select(*pk, F.col(T_PART).alias(ROUTE)) \
                    if part else None
                result.history_versions = history.write(protected, ctx.batch_id, ctx.batch_time, routes)
            self._commit(contract, target, meta, lambda: self._merge(contract, table, protected))
            result.committed, result.commits = True, 1
        elif commit_always:  # a commit without rows that records the metadata (e.g. a CDC position)
            target = self._ensure_properties(contract, target)
            commit_without_rows(target, commit_properties(target, contract, meta), self.storage.delta_options)
            result.committed, result.commits = True, 1
        plan.unpersist()
        return self._finish(result, uri, meta[BATCH_KEY], history)

    def _ensure_properties(self, contract: Contract, target: Any) -> Any:
        """Turn on the change data feed (ARCHITECTURE §2.7) and deletion vectors of a table created
        without them, with delta-spark, in a commit of its own before the load's commit (outside
        :meth:`_commit`, so it carries no bronze metadata); returns the table as it is now."""
        uri = self.uri(contract).replace("`", "``")

        def alter(missing: dict[str, str]) -> None:
            pairs = ", ".join(f"'{name}' = '{value}'" for name, value in sorted(missing.items()))
            self.spark.sql(f"ALTER TABLE delta.`{uri}` SET TBLPROPERTIES ({pairs})")

        if ensure_properties(target, SPARK_PROPERTIES, apply=alter):
            return self.storage.open(contract.bronze_table) or target
        return target

    def _finish(self, result: MergeResult, uri: str, batch_id: str, history: SparkHistory | None = None
                ) -> MergeResult:
        if history is not None:
            result.history_version = history.version()
        final = open_table(uri, self.storage.delta_options)
        if final is not None:
            result.version = final.version()
            result.size_bytes, result.num_files = table_stats(final)
            result.engine_metrics = batch_metrics(final, batch_id, result.commits)
        return result

    @staticmethod
    def _protect(contract: Contract, rows: DataFrame, pii: PiiHook | None) -> DataFrame:
        """``rows`` with the PII columns protected by the writer's hook, prepared first for every
        data subject among them (e.g. their keys created, in one commit)."""
        if pii is None:
            return rows
        subject = contract.data_subject
        if subject is not None:
            from pyspark.sql import functions as F

            pii.prepare([r[0] for r in rows.select(subject).filter(F.col(subject).isNotNull())
                         .distinct().collect()])
        return rows.mapInArrow(_protected(pii), rows.schema)

    def _create(self, contract: Contract, uri: str, staged: DataFrame, pii: PiiHook | None) -> None:
        part = contract.partitioning.delta_column
        rows = self._protect(contract, staged, pii)
        ordered = rows.sortWithinPartitions(*contract.merge_key)
        writer = ordered.write.format("delta").mode("errorifexists")
        if part:
            writer = writer.partitionBy(part)
        writer.save(uri)

    def _merge(self, contract: Contract, table: Any, source: DataFrame) -> None:
        """The §2.3 MERGE of ``source``; its columns beyond the contract's (a landing table's
        ``_source_file``, ``_rescued_data`` and added fields) are updated too, and a column the
        table lacks joins it in the same commit (schema evolution)."""
        pk = contract.merge_key
        known = set(bronze_schema(contract).names) | {OP}
        extras = [c for c in source.columns if c not in known]
        source_cols = [*contract.column_names, *extras]
        updates = {c: f"s.{_quoted(c)}" for c in
                   [*source_cols, "record_hash", "data_quality_score", "batch_id", "update_timestamp"]}
        updates["record_status"] = f"'{ACTIVE}'"
        inserts = {c: f"s.{_quoted(c)}" for c in source.columns if c != OP}
        merge = (
            table.alias("t")
            .merge(source.alias("s"), " AND ".join(f"t.{_quoted(k)} = s.{_quoted(k)}" for k in pk))
            .whenMatchedUpdate(f"s.{OP} = 'U' AND t.record_status <> '{FORGOTTEN}'", updates)
            .whenMatchedUpdate(f"s.{OP} = 'H'", {"record_hash": "s.record_hash"})
            .whenMatchedUpdate(f"s.{OP} = 'D' AND t.record_status = '{ACTIVE}'",
                               {"record_status": f"'{DELETED}'", "update_timestamp": "s.update_timestamp",
                                "batch_id": "s.batch_id"})
            .whenNotMatchedInsert(f"s.{OP} = 'I'", inserts)
        )
        if set(extras) - set(table.toDF().columns):
            merge = merge.withSchemaEvolution()
        merge.execute()

    def _commit(self, contract: Contract, target: Any, meta: dict[str, str], write: Any) -> None:
        """Run ``write`` as the load's commit (:func:`~bronze_assets.lib.spark.commit.commit_with`)."""
        commit_with(self.spark, contract, target, meta, write)
