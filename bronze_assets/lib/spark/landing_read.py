"""The Spark engine's reader of landing files where Auto Loader is not (ARCHITECTURE §2.6): the
selected files in *Auto Loader's shape* — the contract's columns typed, the added fields,
``_rescued_data`` (a JSON object of what did not fit, with ``_file_path``), ``_corrupt_record``
(a bad line's raw text, every other column NULL) and ``_metadata`` (file_path, file_size,
file_modification_time) — built from Spark's own readers: every file read whole
(``text(wholetext=True)``, gunzipped by Hadoop's codecs; CSV and Parquet with Spark's CSV and
Parquet readers), split into numbered lines, each validated and parsed with ``from_json`` (strict
JSON), each value cast with ``try_cast`` — and the rare rescued record written by the same
function as the local engine's (:func:`~bronze_assets.lib.load.landing_records.rescued_data`, in
``mapInArrow``). A new field's type is inferred by the local engine's rule."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from bronze_assets.contracts import Contract
from bronze_assets.contracts.model import LandingFormat
from bronze_assets.contracts.types import PgType
from bronze_assets.lib.load.landing_records import RESCUED, SOURCE_FILE, Columns, plan_columns, rescued_data
from bronze_assets.lib.load.landing_schema import TEXT_CASTS, StoredColumn, new_column
from bronze_assets.lib.load.landing_source import FileSelection, LandingFile
from bronze_assets.lib.spark.landing_columns import cast_text, json_type, quote, spark_type, spark_types

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

CORRUPT, METADATA, LINE_NO = "_corrupt_record", "_metadata", "_line_no"
FILE_PATH, FILE_SIZE, FILE_TIME = "file_path", "file_size", "file_modification_time"
LINE, HAS, NEW = "_line", "_has:", "_new:"
_METADATA_TYPE = f"STRUCT<{FILE_PATH}: STRING, {FILE_SIZE}: BIGINT, {FILE_TIME}: TIMESTAMP>"
# strict JSON, as the local engine's DuckDB reads it (Spark's reader allows 'single quotes' and NaN)
STRICT_JSON = {"allowSingleQuotes": "false", "allowNonNumericNumbers": "false", "mode": "PERMISSIVE"}


def infer_column(contract: Contract, name: str, good: DataFrame, uri: str) -> StoredColumn:
    """The column new field ``name`` becomes, from its values in file ``uri`` (the first file that
    has it), by the local engine's rule (:func:`~bronze_assets.lib.load.landing_schema.new_column`)."""
    from pyspark.sql import functions as F

    assert contract.landing is not None
    values = good.filter(F.col(f"{METADATA}.{FILE_PATH}") == uri)
    if contract.landing.format is LandingFormat.CSV:  # text values: which types do they all cast to
        text = F.col("_map").getItem(name)
        counts = values.select(F.count(text), *[F.count(cast_text(text, spark_type(PgType.parse(t))))
                                                for t in TEXT_CASTS]).first()
        assert counts is not None
        casts = {t: counts[0] > 0 and c == counts[0] for t, c in zip(TEXT_CASTS, counts[1:], strict=True)}
        return new_column(contract, name, set(), casts)
    path = '$["' + name.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    kind = F.expr("schema_of_variant(variant_get(try_parse_json(`_line`), " + _sql_text(path) + "))")
    found = {r[0] for r in values.select(kind).distinct().collect() if r[0] is not None}
    return new_column(contract, name, {json_type(k) for k in found}, None)


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
    lines = whole.select("_spark_path", F.posexplode(F.split("value", "\n", -1)).alias("_pos", LINE))
    return lines.select("_spark_path", (F.col("_pos") + 1).cast("bigint").alias(LINE_NO),
                        F.regexp_replace(F.col(LINE), "\r$", "").alias(LINE)) \
        .filter(F.trim(F.col(LINE)) != "")


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
        schema = ", ".join(f"{quote(c)} STRING" for c in header) + f", {CORRUPT} STRING"
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
            F.when(F.col(CORRUPT).isNull(), F.to_json(F.struct(*[F.col(quote(c)) for c in header])))
            .otherwise(F.col(CORRUPT)).alias(LINE),
            F.col(CORRUPT).isNull().alias("_csv_ok")))
    if not frames:
        return spark.createDataFrame(
            [], f"_spark_path STRING, {LINE_NO} BIGINT, {LINE} STRING, _csv_ok BOOLEAN")
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
        data = [F.col(quote(c)) for c in read.columns]
        order = Window.orderBy(F.monotonically_increasing_id())
        frames.append(read.select(F.col(f"{METADATA}.{FILE_PATH}").alias("_spark_path"),
                                  F.row_number().over(order).cast("bigint").alias(LINE_NO),
                                  F.to_json(F.struct(*data)).alias(LINE)))
    if not frames:
        return spark.createDataFrame([], f"_spark_path STRING, {LINE_NO} BIGINT, {LINE} STRING"), unreadable
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
    parsed = F.from_json(F.col(LINE), "MAP<STRING, STRING>", STRICT_JSON)
    lines = _with_files(read, files, selection).select(
        METADATA, LINE_NO, LINE, parsed.alias("_map"),
        (structured & parsed.isNotNull() & F.ltrim(F.col(LINE)).startswith("{")).alias("_ok")).cache()
    keys = lines.filter("_ok").select(F.col(f"{METADATA}.{FILE_PATH}").alias("uri"),
                                      F.explode(F.map_keys("_map")).alias("key")).distinct().collect()
    by_file: dict[str, set[str]] = {f.uri: set() for f in selection.files}
    for row in keys:
        by_file[row["uri"]].add(row["key"])
    columns = plan_columns(contract, by_file.items(), [c.name for c in evolved], batch_id)
    first = {c: next(uri for uri, keys in by_file.items() if c in keys) for c in columns.added}
    ok = lines.filter("_ok")
    added = [infer_column(contract, c, ok, first[c]) for c in columns.added]
    extras = [*evolved, *added]
    columns = replace(columns, types={c.name: c.pg_type for c in extras})
    types = spark_types(contract) | {c.name: spark_type(c.pg_type) for c in extras}
    value = {c: F.col("_map").getItem(c) for c in [*types, *columns.rescued]}
    good = ok.select(
        METADATA, LINE_NO, LINE,
        *[cast_text(value[c], t).alias(c) for c, t in types.items()],
        *[value[c].isNotNull().alias(HAS + c) for c in types],
        *[F.map_contains_key("_map", c).alias(NEW + c) for c in columns.rescued])
    bad = lines.filter(~F.col("_ok")).select(METADATA, LINE_NO, F.col(LINE).alias(CORRUPT))
    if contract.primary_key:  # a record without its key is a bad line, as on the local engine
        unkeyed = F.lit(False)
        for name in contract.primary_key:
            unkeyed = unkeyed | F.col(quote(name)).isNull()
        bad = bad.unionByName(good.filter(unkeyed).select(METADATA, LINE_NO, F.col(LINE).alias(CORRUPT)))
        good = good.filter(~unkeyed)
    rescue = _rescuer(list(types), columns.rescued)
    out_schema = good.drop(LINE, *[HAS + c for c in types],
                           *[NEW + c for c in columns.rescued]).schema.add(RESCUED, "string")
    typed = good.withColumn(SOURCE_FILE, F.col(f"{METADATA}.{FILE_PATH}")).mapInArrow(
        rescue, out_schema.add(SOURCE_FILE, "string")).drop(SOURCE_FILE)
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
            unfit = {c: np.asarray(batch.column(HAS + c).to_numpy(zero_copy_only=False)
                                   & batch.column(c).is_null().to_numpy(zero_copy_only=False), dtype=bool)
                     for c in names}
            new = {c: np.asarray(batch.column(NEW + c).to_numpy(zero_copy_only=False), dtype=bool)
                   for c in rescued}
            data = rescued_data(batch.column(LINE), batch.column(SOURCE_FILE), unfit, new)
            drop = {LINE, *(HAS + c for c in names), *(NEW + c for c in rescued)}
            keep = [n for n in batch.schema.names if n not in drop and n != SOURCE_FILE]
            yield pa.RecordBatch.from_arrays(
                [*(batch.column(n) for n in keep), data, batch.column(SOURCE_FILE)],
                names=[*keep, RESCUED, SOURCE_FILE])

    return rescue


def empty_records(spark: SparkSession, contract: Contract, evolved: list[StoredColumn]) -> DataFrame:
    types = spark_types(contract) | {c.name: spark_type(c.pg_type) for c in evolved}
    fields = [f"{quote(c)} {t}" for c, t in types.items()]
    fields += [f"{RESCUED} STRING", f"{CORRUPT} STRING", f"{LINE_NO} BIGINT", f"{METADATA} {_METADATA_TYPE}"]
    return spark.createDataFrame([], ", ".join(fields))
