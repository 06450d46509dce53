"""Landing-zone files on the Spark engine (ARCHITECTURE §2.6): the same contract, rows, ledger
and commit as the local engine (:mod:`bronze_assets.lib.load.stage_files`).

Two halves, as Auto Loader splits them on Databricks:

* **The reader** yields *Auto Loader's shape*: the contract's columns typed, the added fields,
  ``_rescued_data`` (a JSON object of what did not fit, with ``_file_path``), ``_corrupt_record``
  (a bad line's raw text, every other column NULL) and ``_metadata`` (file_path, file_size,
  file_modification_time). On Databricks that is Auto Loader itself
  (:mod:`bronze_assets.lib.spark.autoloader`); elsewhere :func:`read_files` builds it from
  Spark's own readers — every file read whole (``text(wholetext=True)``, gunzipped by Hadoop's
  codecs; CSV and Parquet with Spark's CSV and Parquet readers), split into numbered lines, each
  validated and parsed with ``from_json`` (strict JSON), each value cast with ``try_cast`` — and
  the rare rescued record written by the same function as the local engine's
  (:func:`~bronze_assets.lib.load.landing_records.rescued_data`, in ``mapInArrow``).
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from bronze_assets.contracts import Contract
from bronze_assets.contracts.arrow import arrow_type
from bronze_assets.contracts.model import LandingFormat
from bronze_assets.contracts.types import PgType
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.landing_ledger import LEDGER_KEY, committed_rows, ledger_metadata
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
    Columns,
    bad_line_ids,
    bad_line_records,
    enrich_records,
    landed_elsewhere,
    landing_extras,
    ledger_rows,
    plan_columns,
    rescued_data,
)
from bronze_assets.lib.load.landing_schema import (
    StoredColumn,
    StoredSchema,
    evolved_types,
    new_column,
    write_schema,
)
from bronze_assets.lib.load.landing_source import FileSelection, LandingFile
from bronze_assets.lib.source.schema import SchemaDrift

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from bronze_assets.lib.spark.load import SparkLoader, SparkStaged

CORRUPT, METADATA, LINE_NO = "_corrupt_record", "_metadata", "_line_no"
FILE_PATH, FILE_SIZE, FILE_TIME = "file_path", "file_size", "file_modification_time"
_LINE, _HAS, _NEW = "_line", "_has:", "_new:"
_METADATA_TYPE = f"STRUCT<{FILE_PATH}: STRING, {FILE_SIZE}: BIGINT, {FILE_TIME}: TIMESTAMP>"
# strict JSON, as the local engine's DuckDB reads it (Spark's reader allows 'single quotes' and NaN)
STRICT_JSON = {"allowSingleQuotes": "false", "allowNonNumericNumbers": "false", "mode": "PERMISSIVE"}
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def spark_type(type_: PgType) -> str:
    """The Spark SQL type a column of PostgreSQL type ``type_`` is stored as."""
    from pyspark.sql.pandas.types import from_arrow_type

    return str(from_arrow_type(arrow_type(type_)).simpleString())


def spark_types(contract: Contract) -> dict[str, str]:
    """The Spark SQL type of each contract column (the types the table stores)."""
    return {c.name: spark_type(c.type) for c in contract.columns}


def _cast(text: Column, spark_type: str) -> Column:
    """``text`` as ``spark_type``, NULL where it does not parse, as the local engine casts: an
    integer takes integer text only; a date or timestamp starts with a digit (Spark would also read
    'yesterday', 'now' or 'epoch')."""
    from pyspark.sql import functions as F

    cast = text.try_cast(spark_type)
    if spark_type in ("tinyint", "smallint", "int", "bigint"):
        return F.when(text.rlike(r"^ *[+-]?[0-9]+ *$"), cast)
    if spark_type in ("date", "timestamp", "timestamp_ntz"):
        return F.when(text.rlike(r"^\s*[+-]?[0-9]"), cast)
    return cast


# what Spark's schema_of_variant says a JSON value is, as DuckDB's json_type names it (inference)
_VARIANT_JSON_TYPES = {"BIGINT": "BIGINT", "INT": "BIGINT", "SMALLINT": "BIGINT", "TINYINT": "BIGINT",
                       "DECIMAL": "DOUBLE", "DOUBLE": "DOUBLE", "FLOAT": "DOUBLE", "STRING": "VARCHAR",
                       "BOOLEAN": "BOOLEAN", "OBJECT": "OBJECT", "ARRAY": "ARRAY", "VOID": "NULL"}
_TEXT_CASTS = ("bigint", "double precision", "boolean", "timestamp with time zone")  # CSV inference


def _infer(contract: Contract, name: str, good: DataFrame, uri: str) -> StoredColumn:
    """The column new field ``name`` becomes, from its values in file ``uri`` (the first file that
    has it), by the local engine's rule (:func:`~bronze_assets.lib.load.landing_schema.new_column`)."""
    from pyspark.sql import functions as F

    assert contract.landing is not None
    values = good.filter(F.col(f"{METADATA}.{FILE_PATH}") == uri)
    if contract.landing.format is LandingFormat.CSV:  # text values: which types do they all cast to
        text = F.col("_map").getItem(name)
        counts = values.select(F.count(text), *[F.count(_cast(text, spark_type(PgType.parse(t))))
                                                for t in _TEXT_CASTS]).first()
        assert counts is not None
        casts = {t: counts[0] > 0 and c == counts[0] for t, c in zip(_TEXT_CASTS, counts[1:], strict=True)}
        return new_column(contract, name, set(), casts)
    path = '$["' + name.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    kind = F.expr("schema_of_variant(variant_get(try_parse_json(`_line`), " + _sql_text(path) + "))")
    found = {r[0] for r in values.select(kind).distinct().collect() if r[0] is not None}
    return new_column(contract, name, {_VARIANT_JSON_TYPES.get(k.split("(")[0].split("<")[0], "VARCHAR")
                                       for k in found}, None)


def _sql_text(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def spark_file_path(spark: SparkSession, uri: str) -> str:
    """``uri`` as Spark's ``_metadata.file_path`` spells it (Hadoop's URI: ``file:/…``, escaped)."""
    text = str(spark._jvm.org.apache.hadoop.fs.Path(uri).toUri().toString())  # type: ignore[union-attr]
    return "file:/" + text.removeprefix("file:///") if text.startswith("file:///") else text


def _files_frame(spark: SparkSession, files: list[LandingFile]) -> DataFrame:
    """One row per selected file: Spark's path for it, and the ``_metadata`` the reader gives it
    (the URI, size and modification time of the listing, so both engines order files alike)."""
    from pyspark.sql import functions as F

    rows = [(spark_file_path(spark, f.uri), f.uri, f.size, f.modification_time) for f in files]
    frame = spark.createDataFrame(rows, "_spark_path STRING, _uri STRING, _size BIGINT, _mtime TIMESTAMP")
    listed = F.struct(F.col("_uri").alias(FILE_PATH), F.col("_size").alias(FILE_SIZE),
                      F.col("_mtime").alias(FILE_TIME))
    return frame.select("_spark_path", listed.alias(METADATA))


def _with_files(read: DataFrame, files: DataFrame, selection: FileSelection) -> DataFrame:
    """``read`` (with Spark's ``_spark_path``) joined to the listing's ``_metadata``; a path that
    matches no listed file is an error (never a record silently without its file)."""
    joined = read.join(files, "_spark_path", "left")
    missing = joined.filter(joined[METADATA].isNull()).select("_spark_path").distinct().limit(3).collect()
    if missing:
        raise RuntimeError(f"{selection.contract.bronze_table}: Spark read files the listing did not name: "
                           f"{', '.join(r[0] for r in missing)}")
    return joined.drop("_spark_path")


def _json_lines(spark: SparkSession, paths: list[str]) -> DataFrame:
    """Every line of the JSON Lines files, numbered from 1 (blank lines dropped after numbering)."""
    from pyspark.sql import functions as F

    whole = spark.read.text(paths, wholetext=True).select(
        F.col("value"), F.col(f"{METADATA}.{FILE_PATH}").alias("_spark_path"))
    lines = whole.select("_spark_path", F.posexplode(F.split("value", "\n", -1)).alias("_pos", _LINE))
    return lines.select("_spark_path", (F.col("_pos") + 1).cast("bigint").alias(LINE_NO),
                        F.regexp_replace(F.col(_LINE), "\r$", "").alias(_LINE)) \
        .filter(F.trim(F.col(_LINE)) != "")


def _csv_records(spark: SparkSession, paths: list[str]) -> DataFrame:
    """The records of CSV files with a header, each as a JSON object of its text fields; a row
    Spark's CSV reader finds malformed (wrong field count, bad quoting) is a bad line, numbered by
    its line (header = 1; a file Spark reads in one partition, below its split size). One read per
    file (each file has its own header)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    frames = []
    for path in paths:
        header = spark.read.option("header", True).csv(path).columns
        if not header:
            continue
        schema = ", ".join(f"{_q(c)} STRING" for c in header) + f", {CORRUPT} STRING"
        read = spark.read.options(header="true", mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT) \
            .schema(schema).csv(path)
        ok = F.col(CORRUPT).isNull()
        at = read.select("*", F.col(f"{METADATA}.{FILE_PATH}").alias("_spark_path"),
                         F.monotonically_increasing_id().alias("_at"))
        # accepted records numbered 1…n (their order, a keyless record's key), a bad row by its line
        number = F.when(ok, F.row_number().over(Window.partitionBy(ok).orderBy("_at"))) \
            .otherwise(F.col("_at") + 2)
        frames.append(at.select(
            "_spark_path", number.cast("bigint").alias(LINE_NO),
            F.when(F.col(CORRUPT).isNull(), F.to_json(F.struct(*[F.col(_q(c)) for c in header])))
            .otherwise(F.col(CORRUPT)).alias(_LINE),
            F.col(CORRUPT).isNull().alias("_csv_ok")))
    if not frames:
        return spark.createDataFrame(
            [], f"_spark_path STRING, {LINE_NO} BIGINT, {_LINE} STRING, _csv_ok BOOLEAN")
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def _parquet_records(spark: SparkSession, paths: list[str]) -> tuple[DataFrame, list[tuple[str, str]]]:
    """The rows of Parquet files, each as a JSON object of its values, numbered from 1; a file
    Spark cannot read is one bad record (no line) holding the reader's message."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.utils import AnalysisException

    frames, unreadable = [], []
    for path in paths:
        try:
            read = spark.read.parquet(path)
            read.schema  # noqa: B018 (reading the footer is the check)
        except (AnalysisException, Exception) as exc:  # a file Spark cannot read: quarantined
            unreadable.append((path, f"unreadable Parquet file: {str(exc).splitlines()[0]}"))
            continue
        data = [F.col(_q(c)) for c in read.columns]
        order = Window.orderBy(F.monotonically_increasing_id())
        frames.append(read.select(F.col(f"{METADATA}.{FILE_PATH}").alias("_spark_path"),
                                  F.row_number().over(order).cast("bigint").alias(LINE_NO),
                                  F.to_json(F.struct(*data)).alias(_LINE)))
    if not frames:
        return spark.createDataFrame([], f"_spark_path STRING, {LINE_NO} BIGINT, {_LINE} STRING"), unreadable
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out, unreadable


def read_files(spark: SparkSession, selection: FileSelection, evolved: list[StoredColumn], batch_id: str
               ) -> tuple[DataFrame, Columns, list[StoredColumn]]:
    """The selected files in Auto Loader's shape (the module's docstring), what the batch does
    with their new fields (the contract's evolution, as on the local engine) and the columns it
    adds, typed by hint or inference."""
    from pyspark.sql import functions as F

    contract = selection.contract
    landing = contract.landing
    assert landing is not None
    files = _files_frame(spark, selection.files)
    paths = [spark_file_path(spark, f.uri) for f in selection.files]
    unreadable: list[tuple[str, str]] = []
    if landing.format is LandingFormat.CSV:
        read = _csv_records(spark, paths)
        structured = F.col("_csv_ok")
    elif landing.format is LandingFormat.PARQUET:
        read, unreadable = _parquet_records(spark, paths)
        structured = F.lit(True)
    else:
        read = _json_lines(spark, paths)
        structured = F.lit(True)
    parsed = F.from_json(F.col(_LINE), "MAP<STRING, STRING>", STRICT_JSON)
    lines = _with_files(read, files, selection).select(
        METADATA, LINE_NO, _LINE, parsed.alias("_map"),
        (structured & parsed.isNotNull() & F.ltrim(F.col(_LINE)).startswith("{")).alias("_ok")).cache()
    keys = lines.filter("_ok").select(F.col(f"{METADATA}.{FILE_PATH}").alias("uri"),
                                      F.explode(F.map_keys("_map")).alias("key")).distinct().collect()
    by_file: dict[str, set[str]] = {f.uri: set() for f in selection.files}
    for row in keys:
        by_file[row["uri"]].add(row["key"])
    columns = plan_columns(contract, by_file.items(), [c.name for c in evolved], batch_id)
    first = {c: next(uri for uri, keys in by_file.items() if c in keys) for c in columns.added}
    ok = lines.filter("_ok")
    added = [_infer(contract, c, ok, first[c]) for c in columns.added]
    extras = [*evolved, *added]
    columns = replace(columns, types={c.name: c.pg_type for c in extras})
    types = spark_types(contract) | {c.name: spark_type(c.pg_type) for c in extras}
    value = {c: F.col("_map").getItem(c) for c in [*types, *columns.rescued]}
    good = ok.select(
        METADATA, LINE_NO, _LINE,
        *[_cast(value[c], t).alias(c) for c, t in types.items()],
        *[value[c].isNotNull().alias(_HAS + c) for c in types],
        *[F.map_contains_key("_map", c).alias(_NEW + c) for c in columns.rescued])
    rescue = _rescuer(list(types), columns.rescued)
    out_schema = good.drop(_LINE, *[_HAS + c for c in types],
                           *[_NEW + c for c in columns.rescued]).schema.add(RESCUED, "string")
    typed = good.withColumn(SOURCE_FILE, F.col(f"{METADATA}.{FILE_PATH}")).mapInArrow(
        rescue, out_schema.add(SOURCE_FILE, "string")).drop(SOURCE_FILE)
    bad = lines.filter(~F.col("_ok")).select(METADATA, LINE_NO, F.col(_LINE).alias(CORRUPT))
    if unreadable:
        listed = {spark_file_path(spark, f.uri): f for f in selection.files}
        rows = [((listed[p].uri, listed[p].size, listed[p].modification_time), None, message)
                for p, message in unreadable]
        shape = f"{METADATA} {_METADATA_TYPE}, {LINE_NO} BIGINT, {CORRUPT} STRING"
        bad = bad.unionByName(spark.createDataFrame(rows, shape))
    frame = typed.withColumn(CORRUPT, F.lit(None).cast("string")).unionByName(bad, allowMissingColumns=True)
    return frame, columns, added


ArrowMap = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]  # a mapInArrow function


def _rescuer(names: list[str], rescued: list[str]) -> ArrowMap:
    """The ``mapInArrow`` function that adds ``_rescued_data`` (the local engine's function): the
    values of ``names`` (the table's columns) that did not fit, the ``rescued`` new fields."""

    def rescue(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            unfit = {c: np.asarray(batch.column(_HAS + c).to_numpy(zero_copy_only=False)
                                   & batch.column(c).is_null().to_numpy(zero_copy_only=False), dtype=bool)
                     for c in names}
            new = {c: np.asarray(batch.column(_NEW + c).to_numpy(zero_copy_only=False), dtype=bool)
                   for c in rescued}
            data = rescued_data(batch.column(_LINE), batch.column(SOURCE_FILE), unfit, new)
            drop = {_LINE, *(_HAS + c for c in names), *(_NEW + c for c in rescued)}
            keep = [n for n in batch.schema.names if n not in drop and n != SOURCE_FILE]
            yield pa.RecordBatch.from_arrays(
                [*(batch.column(n) for n in keep), data, batch.column(SOURCE_FILE)],
                names=[*keep, RESCUED, SOURCE_FILE])

    return rescue


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
        bad_rows = frame.filter(corrupt).select(F.col(f"{METADATA}.{FILE_PATH}").alias("uri"),
                                                F.col(f"{METADATA}.{FILE_TIME}").alias("mtime"),
                                                F.col(LINE_NO) if LINE_NO in frame.columns
                                                else F.lit(None).cast("bigint").alias(LINE_NO),
                                                F.col(CORRUPT)).collect()
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
        records = good.select(*[F.col(_q(c)) for c in contract.column_names],
                              *[F.col(_q(c)).cast(spark_type(t)).alias(c) for c, t in typed],
                              F.col(RESCUED).cast("string").alias(RESCUED),
                              F.col(f"{METADATA}.{FILE_PATH}").alias(SOURCE_FILE),
                              *([F.col(LINE_NO)] if contract.keyless else []))
        enriched = records.mapInArrow(_enricher(contract, ctx, typed, staged), from_arrow_schema(staged))
        at = ctx.batch_time.astimezone(UTC)
        at_column = F.lit(at).cast("timestamp")
        constants = {"load_timestamp": at_column, "update_timestamp": at_column,
                     "source_system": F.lit(ctx.source_system), "record_status": F.lit(ACTIVE),
                     "batch_id": F.lit(ctx.batch_id)}
        enriched.select(*[constants[f.name].alias(f.name) if f.name in constants else F.col(_q(f.name))
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


@dataclass
class StreamedFiles(FileSelection):
    """A micro-batch of Auto Loader: its files (from ``_metadata``) and the batch itself."""

    frame: Any = None


# the JSON type (DuckDB's json_type names) a column Auto Loader inferred holds, for the stored schema
_SPARK_JSON_TYPES = {"bigint": "BIGINT", "int": "BIGINT", "double": "DOUBLE", "boolean": "BOOLEAN",
                     "string": "VARCHAR", "struct": "OBJECT", "array": "ARRAY", "map": "OBJECT"}


def streamed_records(selection: StreamedFiles, evolved: list[StoredColumn], batch_id: str
                     ) -> tuple[DataFrame, list[StoredColumn]]:
    """Auto Loader's micro-batch as the batch body reads it — the contract's columns and the
    added ones in their types, ``_rescued_data``, ``_corrupt_record`` and ``_metadata`` — and the
    columns it adds (typed by hint, else by what Auto Loader inferred, as the local engine would)."""
    from pyspark.sql import functions as F

    contract, frame = selection.contract, selection.frame
    known = {*contract.column_names, *(c.name for c in evolved), RESCUED, SOURCE_FILE, CORRUPT, METADATA}
    new = {c for c in frame.columns if c not in known}
    columns = plan_columns(contract, [(f"{len(selection.files)} file(s) of an Auto Loader batch", new)],
                           [c.name for c in evolved], batch_id)
    kinds = {f.name: f.dataType.typeName() for f in frame.schema.fields}
    added = [new_column(contract, c, {_SPARK_JSON_TYPES.get(kinds[c], "VARCHAR")}, None)
             for c in columns.added]
    present = set(frame.columns)

    def column(name: str, spark_type: str) -> Any:
        value = F.col(_q(name)) if name in present else F.lit(None)
        return value.cast(spark_type).alias(name)

    types = spark_types(contract) | {c.name: spark_type(c.pg_type) for c in [*evolved, *added]}
    return frame.select(*[column(c, t) for c, t in types.items()],
                        column(RESCUED, "string"), column(CORRUPT, "string"),
                        F.struct(F.col(f"{METADATA}.{FILE_PATH}"), F.col(f"{METADATA}.{FILE_SIZE}"),
                                 F.col(f"{METADATA}.{FILE_TIME}")).alias(METADATA)), added


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
        frame = _empty(spark, contract, evolved)
    staged, selection.ledger = stage_frame(loader, contract, frame, [*evolved, *added], added, stored, ctx,
                                           selection.files, commits, started)
    staged.before_commit = lambda: drop_landed_elsewhere(loader, staged, selection)
    return staged


def drop_landed_elsewhere(loader: SparkLoader, staged: SparkStaged, selection: FileSelection) -> None:
    """Before the commit: drop from the batch the files that commits made since the listing
    (another run at once, either engine) have landed — their records and ledger rows — so every
    record and file lands once (the local engine's rule, :func:`landed_elsewhere`)."""
    from pyspark.sql import functions as F

    storage, contract = loader.storage, staged.contract
    dt = storage.open(contract.bronze_table)
    if dt is None or not selection.ledger:
        return
    since = selection.table_version if selection.table_version is not None else -1
    committed = committed_rows(storage, contract.bronze_table, dt, newer_than=since)
    gone = landed_elsewhere(contract, selection.ledger, committed, staged.ctx.batch_id)
    selection.table_version = dt.version()
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


def _empty(spark: SparkSession, contract: Contract, evolved: list[StoredColumn]) -> DataFrame:
    types = spark_types(contract) | {c.name: spark_type(c.pg_type) for c in evolved}
    fields = [f"{_q(c)} {t}" for c, t in types.items()]
    fields += [f"{RESCUED} STRING", f"{CORRUPT} STRING", f"{LINE_NO} BIGINT", f"{METADATA} {_METADATA_TYPE}"]
    return spark.createDataFrame([], ", ".join(fields))
