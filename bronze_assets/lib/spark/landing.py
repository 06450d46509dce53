"""Landing-zone files on the Spark engine (ARCHITECTURE §2.6): the same contract, rows, ledger
and commit as the local engine (:mod:`bronze_assets.lib.load.stage_files`).

Two halves, as Auto Loader splits them on Databricks:

* **The reader** yields *Auto Loader's shape*: the contract's columns typed, the added fields,
  ``_rescued_data`` (a JSON object of what did not fit, with ``_file_path``), ``_corrupt_record``
  (a bad line's raw text, every other column NULL) and ``_metadata`` (file_path, file_size,
  file_modification_time). On Databricks that is Auto Loader itself
  (:mod:`bronze_assets.lib.spark.autoloader`, its micro-batch read by
  :mod:`~bronze_assets.lib.spark.landing_stream`); elsewhere
  :func:`~bronze_assets.lib.spark.landing_read.read_files` builds it from Spark's own readers.
* **The batch body** (:func:`stage_frame`, what ``foreachBatch`` runs on Databricks): bad lines
  to ``bz_quarantine`` with file and line, one record per key (the newest file, then the later
  line), the hash and score by the local engine's own Arrow code
  (:func:`~bronze_assets.lib.load.landing_records.enrich_records` in ``mapInArrow``), the rows
  staged for the MERGE, and the ledger rows that ride in the MERGE's commit (``userMetadata``,
  beside the Delta app transaction): the local engine reads them back, so either engine
  continues the other's table.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from bronze_assets.contracts import Contract
from bronze_assets.contracts.arrow import arrow_type
from bronze_assets.contracts.types import PgType
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.landing_ledger import LEDGER_KEY, ledger_metadata
from bronze_assets.lib.delta.load_commit import commit_metadata
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE, quarantine_once
from bronze_assets.lib.delta.staging import stage_dir
from bronze_assets.lib.delta.writers import SPARK, check_target
from bronze_assets.lib.enrich.metadata import ACTIVE, BatchContext, bronze_schema, staged_schema
from bronze_assets.lib.load.landing_records import (
    BAD_LINES_REASON,
    LANDING_SOURCE_SYSTEM,
    RESCUED,
    SOURCE_FILE,
    bad_line_ids,
    bad_line_records,
    enrich_records,
    landed_since_listing,
    landing_extras,
    ledger_rows,
)
from bronze_assets.lib.load.landing_schema import StoredColumn, StoredSchema, evolved_types, write_schema
from bronze_assets.lib.load.landing_source import FileSelection, LandingFile
from bronze_assets.lib.source.schema import SchemaDrift
from bronze_assets.lib.spark.landing_columns import quote, spark_type
from bronze_assets.lib.spark.landing_read import (
    CORRUPT,
    FILE_PATH,
    FILE_TIME,
    LINE_NO,
    METADATA,
    ArrowMap,
    empty_records,
    read_files,
    spark_file_path,
)
from bronze_assets.lib.spark.landing_stream import StreamedFiles, streamed_records

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from bronze_assets.lib.spark.load import SparkLoader, SparkStaged

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()




def _enricher(contract: Contract, ctx: BatchContext, extras: list[tuple[str, PgType]], schema: pa.Schema
              ) -> ArrowMap:
    """The ``mapInArrow`` function that hashes and scores the records (the local engine's code);
    a table without a primary key gets its record_key from the records' lines."""

    def enrich(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows:
                lines = batch.column(LINE_NO) if contract.keyless else None
                out = enrich_records(batch, contract, ctx, extras, lines)
                yield pa.RecordBatch.from_arrays([out.column(f.name).cast(f.type) for f in schema],
                                                 schema=schema)

    return enrich


def stage_frame(loader: SparkLoader, contract: Contract, frame: DataFrame, extras: list[StoredColumn],
                added: list[StoredColumn], stored: StoredSchema | None, ctx: BatchContext,
                files: list[LandingFile], commits: CommitLog, started: float
                ) -> tuple[SparkStaged, list[Any]]:
    """The batch body: ``frame`` (Auto Loader's shape, ``extras``: its columns beyond the
    contract's, ``added`` by this batch) staged for the MERGE — bad lines quarantined once, one
    record per key (a table without one appends), hashed and scored — with the ledger rows of
    ``files`` in the commit's metadata; the stored schema written first when it changed. Returns
    the staged load and its ledger rows."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from bronze_assets.lib.spark.load import ENGINE, SparkStaged

    spark, storage = loader.spark, loader.storage
    folder = stage_dir(storage.settings.stage_dir) / f"spark-{contract.bronze_table}-{ctx.batch_id}"
    try:
        frame = frame.cache()
        corrupt = frame[CORRUPT].isNotNull() if CORRUPT in frame.columns else F.lit(False)
        raw = F.col(CORRUPT) if CORRUPT in frame.columns else F.lit(None).cast("string")
        if contract.primary_key:  # Auto Loader's record without its key: a bad line, its fields as JSON
            fields = [c for c in (*contract.column_names, RESCUED) if c in frame.columns]
            record = F.to_json(F.struct(*[F.col(quote(c)) for c in fields]))
            raw = F.coalesce(raw, record)
            for name in contract.primary_key:
                corrupt = corrupt | frame[quote(name)].isNull()
        bad_rows = frame.filter(corrupt).select(F.col(f"{METADATA}.{FILE_PATH}").alias("uri"),
                                                F.col(f"{METADATA}.{FILE_TIME}").alias("mtime"),
                                                F.col(LINE_NO) if LINE_NO in frame.columns
                                                else F.lit(None).cast("bigint").alias(LINE_NO),
                                                raw.alias(CORRUPT)).collect()
        bad_rows.sort(key=lambda r: (r["mtime"], r["uri"], r[LINE_NO] is not None, r[LINE_NO] or 0))
        good = frame.filter(~corrupt)
        per_file = {r[0]: int(r[1]) for r in good.groupBy(F.col(f"{METADATA}.{FILE_PATH}")).count().collect()}
        typed = [(c.name, c.pg_type) for c in extras]
        names = [*contract.column_names, *(c for c, _ in typed)]
        unfit = good.filter(F.exists(F.json_object_keys(F.col(RESCUED)), lambda k: k.isin(names))).count()
        line = F.col(LINE_NO) if LINE_NO in frame.columns else F.monotonically_increasing_id()
        if contract.primary_key:
            order = [F.col(f"{METADATA}.{FILE_TIME}").desc(), F.col(f"{METADATA}.{FILE_PATH}").desc(),
                     line.desc()]
            good = good.withColumn("_n", F.row_number().over(Window.partitionBy(*contract.primary_key)
                                                              .orderBy(*order))).filter("_n = 1")
        elif LINE_NO not in frame.columns:
            raise ValueError(f"{contract.bronze_table}: Auto Loader gives no line numbers, which a landing "
                             f"table without a primary key needs (its record_key); declare a primary key")
        schema = bronze_schema(contract, landing_extras([pa.field(c, arrow_type(t)) for c, t in typed]))
        staged = staged_schema(schema)
        records = good.select(*[F.col(quote(c)) for c in contract.column_names],
                              *[F.col(quote(c)).cast(spark_type(t)).alias(c) for c, t in typed],
                              F.col(RESCUED).cast("string").alias(RESCUED),
                              F.col(f"{METADATA}.{FILE_PATH}").alias(SOURCE_FILE),
                              *([F.col(LINE_NO)] if contract.keyless else []))
        enriched = records.mapInArrow(_enricher(contract, ctx, typed, staged), from_arrow_schema(staged))
        at = ctx.batch_time.astimezone(UTC)
        at_column = F.lit(at).cast("timestamp")
        constants = {"load_timestamp": at_column, "update_timestamp": at_column,
                     "source_system": F.lit(ctx.source_system), "record_status": F.lit(ACTIVE),
                     "batch_id": F.lit(ctx.batch_id)}
        enriched.select(*[constants[f.name].alias(f.name) if f.name in constants else F.col(quote(f.name))
                          for f in schema]).write.parquet(str(folder / "rows"))
        histogram = loader._histogram(spark.read.parquet(str(folder / "rows")))
        digests = _digests(spark, files)
        frame.unpersist()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if added or stored is None:  # before the commit: a re-run after a kill keeps the types
        write_schema(storage, contract, extras, ctx.batch_id, stored)
    bad = bad_line_records((r["uri"], r[LINE_NO], r[CORRUPT]) for r in bad_rows)
    if bad:
        ids = bad_line_ids(contract.name, ((r["uri"], digests[r["uri"]], r[LINE_NO]) for r in bad_rows))
        quarantine_once(storage, contract.name, ctx.batch_id,
                        BAD_LINES_REASON.format(table=contract.bronze_table),
                        list(zip(ids, bad, strict=True)), since=min(f.modification_time for f in files))
    facts = ((f.uri, f.size, f.modification_time, digests[f.uri], per_file.get(f.uri, 0)) for f in files)
    ledger = ledger_rows(contract, facts, ctx.batch_id, datetime.now(UTC))
    label = f"{len(files)} landing file(s)"
    meta = commit_metadata(ctx.batch_id, label, None, extra={
        "bronze.engine": ENGINE,
        **({"bronze.new_columns": ", ".join(f"{c.name} {c.type}" for c in added)} if added else {}),
        **({"bronze.unreadable_records": str(unfit)} if unfit else {}),
        **({"bronze.bad_lines": str(len(bad)), "bronze.quarantine": QUARANTINE_TABLE} if bad else {})},
        final=ledger_metadata(ledger) if ledger else {}, batch_time=ctx.batch_time)
    # always a drift (maybe empty), as for a database table: the Pipes job reports schema_contract
    drift = SchemaDrift(contract.bronze_table, added=[(c.name, c.type) for c in added],
                        source=f"landing {contract.name}")
    return SparkStaged(contract, ctx, None, folder, False, histogram, unfit, drift, None, meta,
                       round(time.perf_counter() - started, 3), commit_always=bool(ledger), commits=commits,
                       label=label, deletes=False), ledger


def _digests(spark: SparkSession, files: list[LandingFile]) -> dict[str, str]:
    """The SHA-256 of each file's bytes as stored (compressed or not), read by Spark."""
    from pyspark.sql import functions as F

    found: dict[str, str] = {}
    if files:
        by_path = {spark_file_path(spark, f.uri): f.uri for f in files}
        read = spark.read.format("binaryFile").load(list(by_path)).select(
            F.col(f"{METADATA}.{FILE_PATH}"), F.sha2("content", 256))
        found = {by_path[path]: digest for path, digest in read.collect() if path in by_path}
    for f in files:
        if f.uri not in found:
            if f.size:
                raise RuntimeError(f"Spark did not read {f.uri}: its digest is unknown")
            found[f.uri] = EMPTY_SHA256  # Spark lists no 0-byte file
    return found


def stage_landing(loader: SparkLoader, selection: FileSelection, commits: CommitLog,
                  batch_time: datetime | None = None) -> SparkStaged:
    """Stage the selected files on Spark (the plain reader, then the batch body); the ledger rows
    go in ``selection.ledger`` for the read's acknowledgement."""
    started = time.perf_counter()
    contract = selection.contract
    if contract.landing is None:
        raise ValueError(f"{contract.bronze_table} is not a landing table (its contract has no 'landing')")
    storage = loader.storage
    check_target(storage, contract.bronze_table, SPARK, commits.table)  # one engine per S3 table
    ctx = BatchContext(str(uuid.uuid4()), batch_time or datetime.now(UTC), LANDING_SOURCE_SYSTEM)
    table = commits.table
    stored, evolved = evolved_types(contract, storage,
                                    None if table is None else pa.schema(table.schema().to_arrow()))
    spark = loader.spark
    spark.conf.set("spark.sql.mapKeyDedupPolicy", "LAST_WIN")  # a repeated field: its last value
    added: list[StoredColumn] = []
    if isinstance(selection, StreamedFiles):  # Auto Loader's micro-batch (Databricks)
        frame, added = streamed_records(selection, evolved, ctx.batch_id)
    elif selection.files:
        frame, _, added = read_files(spark, selection, evolved, ctx.batch_id)
    else:
        frame = empty_records(spark, contract, evolved)
    staged, selection.ledger = stage_frame(loader, contract, frame, [*evolved, *added], added, stored, ctx,
                                           selection.files, commits, started)
    staged.before_commit = lambda: drop_landed_elsewhere(loader, staged, selection)
    return staged


def drop_landed_elsewhere(loader: SparkLoader, staged: SparkStaged, selection: FileSelection) -> None:
    """Before the commit: drop from the batch the files that commits made since the listing
    (another run at once, either engine) have landed — their records and ledger rows — so every
    record and file lands once (both engines' rule, :func:`landed_since_listing`)."""
    from pyspark.sql import functions as F

    storage, contract = loader.storage, staged.contract
    gone = landed_since_listing(contract, storage, storage.open(contract.bronze_table), selection,
                                staged.ctx.batch_id)
    if not gone:
        return
    rows = loader.spark.read.parquet(str(staged.rows_path))
    kept = staged.folder / "rows-kept"
    rows.filter(~F.col(SOURCE_FILE).isin(sorted(gone))).write.parquet(str(kept))
    shutil.rmtree(staged.rows_path)
    kept.rename(staged.rows_path)
    staged.score_histogram = loader._histogram(loader.spark.read.parquet(str(staged.rows_path)))
    selection.ledger = [r for r in selection.ledger if r.path not in gone]
    staged.meta = {k: v for k, v in staged.meta.items() if k != LEDGER_KEY} \
        | (ledger_metadata(selection.ledger) if selection.ledger else {})
    staged.commit_always = bool(selection.ledger)
