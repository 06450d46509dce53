"""A table without a primary key (a full snapshot, rows keyed by ``record_key`` = ``<hash>#<n>``)
compared with its source row identity by row identity: the source's identities are its §2.2
hashes numbered 1..n among identical rows, exactly as a load numbers them, so the comparison is
:func:`~bronze_assets.lib.reconcile.bisect.classify` over the whole table (no key ranges to bisect:
such a table is read whole by every load anyway). A source row is pending when the newest
``updated_at`` of its identical rows is at or after the table's pending time."""

from __future__ import annotations

import polars as pl
from deltalake import DeltaTable

from bronze_assets.contracts import ROW_KEY
from bronze_assets.contracts.model import ROW_KEY_SEPARATOR
from bronze_assets.lib.delta.query import query_tables
from bronze_assets.lib.enrich.metadata import ACTIVE
from bronze_assets.lib.reconcile.source_side import SourceTable
from bronze_assets.lib.source.pushdown import hash_sql


def source_rows(source: SourceTable) -> pl.DataFrame:
    """key (``<hash>#<n>``), source_hash, updated_at of every source row."""
    counted = pl.from_arrow(source.snapshot.arrow(
        f"SELECT {hash_sql(source.contract)} AS source_hash, count(*) AS n, max({source.updated_at}) "
        f"AS updated_at FROM {source.name} GROUP BY 1"))
    assert isinstance(counted, pl.DataFrame)
    numbered = counted.with_columns(pl.int_ranges(1, pl.col("n") + 1).alias("i")).explode("i")
    key = pl.concat_str(pl.col("source_hash"), pl.lit(ROW_KEY_SEPARATOR), pl.col("i").cast(pl.String))
    updated_at = pl.col("updated_at").cast(pl.Datetime("us", "UTC"))
    return numbered.select(key.alias("key"), "source_hash", updated_at)


def bronze_rows(dt: DeltaTable) -> pl.DataFrame:
    """key (``record_key``), bronze_hash, status of every bronze row."""
    frame = pl.from_arrow(query_tables({"t": dt}, f'SELECT "{ROW_KEY}" AS key, record_hash AS bronze_hash, '
                                                  f"record_status AS status FROM t"))
    assert isinstance(frame, pl.DataFrame)
    return frame.cast({"key": pl.String, "bronze_hash": pl.String, "status": pl.String})


def active_rows(bronze: pl.DataFrame) -> int:
    return int((bronze.get_column("status") == ACTIVE).sum())
