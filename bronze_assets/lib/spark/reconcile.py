"""The bronze side of a reconciliation on Spark, for tables the Spark engine loads: the same
buckets and checksums as :class:`~bronze_assets.lib.reconcile.bronze_side.BronzeTable`, computed
by Spark SQL over the Delta table (``conv`` turns the hash's last 15 hex digits into a number, and
its first 15 into the hash position of a table not keyed by one integer column; the sums are
exact ``decimal(38,0)``), so only the bucket sums reach the driver."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl
from deltalake import DeltaTable

from bronze_assets.contracts import Contract
from bronze_assets.lib.enrich.metadata import ACTIVE
from bronze_assets.lib.reconcile.bronze_side import empty_rows, int_bounds, logged_key_range
from bronze_assets.lib.reconcile.checksum import (
    hash_ranges_sql,
    spark_checksum_sql,
    spark_position_sql,
)
from bronze_assets.lib.reconcile.keys import STATUS, by_integer_key, keyed_rows
from bronze_assets.lib.reconcile.run import BronzeSideFactory
from bronze_assets.lib.reconcile.source_side import RANGES_PER_QUERY, Ranges, ranges_sql

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


class SparkBronzeTable:
    """``bz_<table>`` read by Spark, compared by its integer key, or by its rows' hash positions
    with keys named by text (rendered on the driver, for the rows of differing buckets only)."""

    def __init__(self, contract: Contract, dt: DeltaTable, spark: SparkSession) -> None:
        self.contract, self.dt, self.uri, self.spark = contract, dt, dt.table_uri, spark
        self.by_key = by_integer_key(contract)
        self.key = f"`{contract.primary_key[0]}`"
        self.at = f"CAST({self.key} AS BIGINT)" if self.by_key else spark_position_sql("record_hash")

    def _table(self) -> DataFrame:
        return self.spark.read.format("delta").load(self.uri)

    def _sql(self, select: str, where: str) -> DataFrame:
        view = f"bz_reconcile_{self.contract.name}"
        self._table().createOrReplaceTempView(view)
        return self.spark.sql(f"SELECT {select} FROM {view} WHERE {where}")

    def key_range(self) -> tuple[int | None, int | None, int]:
        """As the local side's: from the Delta log, read with delta-rs (no Spark job); a key
        without statistics in some file is read by Spark (ACTIVE rows)."""
        bounds, rows = logged_key_range(self.dt, self.contract.primary_key[0], self.by_key)
        if bounds is None:
            row = self._sql(f"min({self.key}) AS lo, max({self.key}) AS hi",
                            f"{STATUS} = '{ACTIVE}'").collect()[0]
            bounds = int_bounds(row["lo"], row["hi"])
        return bounds[0], bounds[1], rows

    def buckets(self, lo: int, hi: int, width: int) -> dict[int, tuple[int, int]]:
        checksum = f"CAST({spark_checksum_sql('record_hash')} AS DECIMAL(38,0))"
        rows = self._sql(
            f"({self.at} - {lo}) DIV {width} AS b, count(*) AS n, CAST(sum({checksum}) AS STRING) AS s",
            f"{STATUS} = '{ACTIVE}' AND {self._within([(lo, hi)])} GROUP BY 1").collect()
        return {int(r["b"]): (int(r["n"]), int(r["s"])) for r in rows}

    def _within(self, ranges: Ranges) -> str:
        return ranges_sql(self.key, ranges) if self.by_key else hash_ranges_sql("record_hash", ranges)

    def rows(self, ranges: Ranges) -> pl.DataFrame:
        pieces = []
        for i in range(0, len(ranges), RANGES_PER_QUERY):
            where = self._within(ranges[i:i + RANGES_PER_QUERY])
            pieces.append(self._rows(where))
        return pl.concat(pieces) if pieces else empty_rows(self.by_key)

    def _rows(self, where: str) -> pl.DataFrame:
        if not self.by_key:
            columns = ", ".join(f"`{c}`" for c in [*self.contract.primary_key, "record_hash", STATUS])
            return keyed_rows(self._sql(columns, where).toArrow(), self.contract)
        select = f"CAST({self.key} AS BIGINT) AS key, record_hash AS bronze_hash, {STATUS} AS status"
        frame = pl.from_arrow(self._sql(select, where).toArrow())
        assert isinstance(frame, pl.DataFrame)
        return frame.cast({"bronze_hash": pl.Utf8, "status": pl.Utf8})

    def others(self, keys: pl.Series) -> pl.DataFrame:
        """As :meth:`~bronze_assets.lib.reconcile.bronze_side.BronzeTable.others`."""
        if self.by_key or not keys.len():
            return empty_rows(self.by_key)
        return self._rows(f"{STATUS} <> '{ACTIVE}'").filter(pl.col("key").is_in(keys.implode()))


def spark_bronze_side(spark: SparkSession) -> BronzeSideFactory:
    """A bronze-side factory for :func:`~bronze_assets.lib.reconcile.reconcile` that reads with
    ``spark`` (the table's location, and its key range, are taken from the opened Delta table)."""

    def side(contract: Contract, dt: DeltaTable) -> SparkBronzeTable:
        return SparkBronzeTable(contract, dt, spark)

    return side
