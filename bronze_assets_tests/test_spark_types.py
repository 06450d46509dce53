"""Both engines load every PostgreSQL type family alike (ARCHITECTURE §2.10): the nasty-values
table of :mod:`test_pg_types` through the local engine and through Spark (local Spark +
delta-spark, JDBC against the embedded PostgreSQL) gives the same Delta schema, values, hashes,
scores and quarantine records; each engine's table is readable by the other's reader.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.lib.source.introspect import discover_contract
from bronze_assets.lib.spark.jdbc import UnwritableColumnNames
from bronze_assets.lib.spark.load import SparkLoader
from bronze_assets_tests.bronze_helpers import bronze_frame, env_storage
from bronze_assets_tests.conftest import query
from bronze_assets_tests.test_pg_types import NASTY, create_table, fill, postgres_says, spec_hash_sql

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("spark")]

T1 = datetime(2026, 11, 27, 10, tzinfo=UTC)


def _rows(root: Path) -> pl.DataFrame:
    return bronze_frame(root / "bz_all_types").drop("batch_id").sort("k")


def _quarantined(root: Path) -> Counter:
    """The quarantine records, each with the set of columns its reason names (the local engine
    lists them sorted, the Spark engine in column order)."""
    frame = pl.from_arrow(DeltaTable(str(root / QUARANTINE_TABLE)).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    listed = re.compile(r"in column\(s\) (.*?) — ")

    def columns(reason: str) -> frozenset[str]:
        match = listed.search(reason)
        assert match, reason
        return frozenset(match[1].split(", "))

    return Counter((json.dumps(json.loads(r), sort_keys=True), columns(reason))
                   for r, reason in frame.select("record", "reason").iter_rows())


def test_both_engines_load_every_type_alike(fresh_dsn: str, spark, tmp_path: Path) -> None:
    create_table(fresh_dsn, "all_types")
    fill(fresh_dsn, "all_types", NASTY)
    # delta-spark refuses column names with any of ' ,;{}()\n\t=' unless the table uses column
    # mapping (delta-rs writes them): the Spark engine loads the rest of the table's names as they are
    query(fresh_dsn, 'ALTER TABLE tests.all_types RENAME COLUMN "with space" TO "With""Quote"')
    contract = discover_contract(fresh_dsn, "all_types", "tests")
    local, spark_root = tmp_path / "local", tmp_path / "spark"
    staged = extract_and_stage(contract, fresh_dsn, local, batch_time=T1)
    try:
        BronzeMerger(contract, local).merge(staged)
    finally:
        staged.cleanup()
    result = SparkLoader(spark, env_storage(spark_root)).load(contract, fresh_dsn, batch_time=T1)
    assert result.merge.inserted == result.rows == len(NASTY)

    a, b = _rows(local), _rows(spark_root)
    assert a.schema == b.schema
    for column in a.columns:
        # NaN never equals itself: compare floats by their text
        left, right = a[column], b[column]
        if left.dtype in (pl.Float32, pl.Float64):
            left, right = left.cast(pl.String), right.cast(pl.String)
        assert left.to_list() == right.to_list(), column
    names = [c.name for c in contract.columns]
    assert dict(zip(b["k"].to_list(), b["record_hash"].to_list(), strict=True)) == \
        dict(postgres_says(fresh_dsn, spec_hash_sql("all_types", names)))
    assert _quarantined(local) == _quarantined(spark_root)

    # each engine's table is readable by the other's reader (timestampNtz included)
    read_back = spark.read.format("delta").load(str(local / "bz_all_types")).orderBy("k")
    assert read_back.count() == len(NASTY)
    assert dict(read_back.dtypes)["ts"] == "timestamp_ntz"
    assert [r["ts"] for r in read_back.select("ts").collect()] == a["ts"].to_list()
    assert "timestampNtz" in (DeltaTable(str(spark_root / "bz_all_types")).protocol().reader_features or [])


def test_names_delta_spark_cannot_write_fail_at_once(fresh_dsn: str, spark, tmp_path: Path) -> None:
    create_table(fresh_dsn, "all_types")  # has a column "with space"
    fill(fresh_dsn, "all_types", NASTY[:2])
    contract = discover_contract(fresh_dsn, "all_types", "tests")
    with pytest.raises(UnwritableColumnNames, match=r"'with space'.*BRONZE_ENGINE=local"):
        SparkLoader(spark, env_storage(tmp_path / "spark")).load(contract, fresh_dsn, batch_time=T1)
    assert not (tmp_path / "spark" / "bz_all_types").exists()
