"""The bronze side of a reconciliation on Spark, for tables the Spark engine loads: the same key
buckets and checksums as :class:`~bronze_assets.lib.reconcile.bronze_side.BronzeTable`, computed
by Spark SQL over the Delta table (``conv`` turns the hash's last 15 hex digits into a number;
the sums are exact ``decimal(38,0)``), so only the bucket sums reach the driver."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl
from deltalake import DeltaTable

from bronze_assets.contracts import Contract
from bronze_assets.lib.enrich.metadata import ACTIVE
from bronze_assets.lib.reconcile.checksum import spark_checksum_sql
from bronze_assets.lib.reconcile.run import BronzeSideFactory
from bronze_assets.lib.reconcile.source_side import RANGES_PER_QUERY, Ranges, ranges_sql

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

STATUS = "record_status"


class SparkBronzeTable:
    """``bz_<table>`` read by Spark, compared by its (one, integer) primary key."""

    def __init__(self, contract: Contract, uri: str, spark: SparkSession) -> None:
        self.contract, self.uri, self.spark = contract, uri, spark
        self.key = f"`{contract.primary_key[0]}`"

    def _table(self) -> DataFrame:
        return self.spark.read.format("delta").load(self.uri)

    def _sql(self, select: str, where: str) -> DataFrame:
        view = f"bz_reconcile_{self.contract.name}"
        self._table().createOrReplaceTempView(view)
        return self.spark.sql(f"SELECT {select} FROM {view} WHERE {where}")

    def key_range(self) -> tuple[int | None, int | None, int]:
        row = self._sql(f"min({self.key}) AS lo, max({self.key}) AS hi, count(*) AS n",
                        f"{STATUS} = '{ACTIVE}'").collect()[0]
        return (None if row["lo"] is None else int(row["lo"])), \
            (None if row["hi"] is None else int(row["hi"])), int(row["n"])

    def buckets(self, lo: int, hi: int, width: int) -> dict[int, tuple[int, int]]:
        checksum = f"CAST({spark_checksum_sql('record_hash')} AS DECIMAL(38,0))"
        rows = self._sql(
            f"(CAST({self.key} AS BIGINT) - {lo}) DIV {width} AS b, count(*) AS n, "
            f"CAST(sum({checksum}) AS STRING) AS s",
            f"{STATUS} = '{ACTIVE}' AND {self.key} BETWEEN {lo} AND {hi} GROUP BY 1").collect()
        return {int(r["b"]): (int(r["n"]), int(r["s"])) for r in rows}

    def rows(self, ranges: Ranges) -> pl.DataFrame:
        pieces = []
        for i in range(0, len(ranges), RANGES_PER_QUERY):
            select = f"CAST({self.key} AS BIGINT) AS key, record_hash AS bronze_hash, {STATUS} AS status"
            table = self._sql(select, ranges_sql(self.key, ranges[i:i + RANGES_PER_QUERY])).toArrow()
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            pieces.append(frame.cast({"bronze_hash": pl.Utf8, "status": pl.Utf8}))
        schema = {"key": pl.Int64, "bronze_hash": pl.Utf8, "status": pl.Utf8}
        return pl.concat(pieces) if pieces else pl.DataFrame(schema=schema)


def spark_bronze_side(spark: SparkSession) -> BronzeSideFactory:
    """A bronze-side factory for :func:`~bronze_assets.lib.reconcile.reconcile` that reads with
    ``spark`` (the table's location is taken from the opened Delta table)."""

    def side(contract: Contract, dt: DeltaTable) -> SparkBronzeTable:
        return SparkBronzeTable(contract, dt.table_uri, spark)

    return side
