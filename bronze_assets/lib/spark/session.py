"""The Spark session of the Spark engine: Delta Lake, UTC everywhere, the pinned jars."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bronze_assets.lib.delta.change_feed import SPARK_PROPERTIES
from bronze_assets.lib.spark.jars import jar_paths
from bronze_assets.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# The JVM's own zone never leaks into a value: java.sql dates and the JDBC driver's session
# zone follow it, so it is pinned to UTC like Spark's SQL session zone.
UTC_JVM = "-Duser.timezone=UTC"

# Settings every load needs, set on any session (also one Databricks built).
RUNTIME_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    # every new table gets the Spark engine's properties (lib/delta/change_feed.py): the change
    # data feed (ARCHITECTURE §2.7) and deletion vectors; an existing table gets them with its next
    # load (lib/spark/load.py). Column mapping stays off (delta-rs reads no CDF of a column-mapped table)
    **{f"spark.databricks.delta.properties.defaults.{name.removeprefix('delta.')}": value
       for name, value in SPARK_PROPERTIES.items()},
    # timestamps as int64 µs, as delta-rs writes them (INT96 holds ns: years 1–9999 overflow it);
    # dates and timestamps before 1582 written and read in the proleptic Gregorian calendar
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.datetimeRebaseModeInWrite": "CORRECTED",
    "spark.sql.parquet.datetimeRebaseModeInRead": "CORRECTED",
    "spark.sql.parquet.int96RebaseModeInWrite": "CORRECTED",
    "spark.sql.parquet.int96RebaseModeInRead": "CORRECTED",
}
# s3:// and s3a:// roots through hadoop-aws's S3A (Spark has no s3:// file system of its own; on
# Databricks s3:// is the cluster's). Credentials: the AWS SDK's chain (AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY, AWS_PROFILE, the instance profile), AWS_REGION included.
S3A_CONF: dict[str, str] = {
    "fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
    "fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A",
}


def s3a_conf(endpoint: str | None) -> dict[str, str]:
    """The Hadoop settings of S3 roots; an S3-compatible ``endpoint`` (``AWS_ENDPOINT_URL``: MinIO,
    a test server) is addressed path-style, without TLS for an ``http://`` one."""
    conf = dict(S3A_CONF)
    if endpoint:
        conf |= {"fs.s3a.endpoint": endpoint, "fs.s3a.path.style.access": "true",
                 "fs.s3a.connection.ssl.enabled": str(endpoint.startswith("https://")).lower()}
    return conf


def configure_object_store(spark: SparkSession, endpoint: str | None) -> None:
    """Apply :func:`s3a_conf` to a running session (file systems read it when first opened)."""
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in s3a_conf(endpoint).items():
        hadoop.set(key, value)


# Settings of a session this module builds (static ones included).
SESSION_CONF: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.driver.extraJavaOptions": UTC_JVM,
    "spark.executor.extraJavaOptions": UTC_JVM,
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "false",
    **RUNTIME_CONF,
}


def spark_session(settings: Settings, app_name: str = "bronze_assets") -> SparkSession:
    """The active Spark session (on Databricks: the cluster's), else a local one on
    ``settings.spark_master`` built with the Delta extension and the jars of
    :mod:`bronze_assets.lib.spark.jars` (in ``settings.spark_jars_dir``)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if settings.databricks_runtime:  # a Databricks task: the cluster's session, jars built in
        return SparkSession.builder.getOrCreate()
    # Python workers run this interpreter, so they import bronze_assets (and pyarrow) like this process
    os.environ["PYSPARK_PYTHON"] = settings.spark_python  # read by PySpark when the context starts
    jars = ",".join(jar_paths(settings.spark_jars_dir))
    builder = SparkSession.builder.master(settings.spark_master).appName(app_name) \
        .config("spark.jars", jars).config("spark.ui.enabled", "false") \
        .config("spark.driver.extraClassPath", os.pathsep.join(jar_paths(settings.spark_jars_dir,
                                                                          file_systems=True)))
    for key, value in SESSION_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
