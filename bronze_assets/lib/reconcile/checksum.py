"""The per-row checksum both sides sum per key bucket (reladiff's: the last 60 bits of the row's
md5 as an integer), in PostgreSQL, DataFusion-read Arrow (Polars) and Spark SQL.

``record_hash`` is 32 hex digits; characters 18–32 (1-based) are the 15 hex digits = 60 bits. A
bucket's checksum is the exact sum of its rows' checksums: PostgreSQL sums into ``numeric``;
Polars sums the high 28 and low 32 bits separately (7 and 8 hex digits; each sum fits 64 bits
for 2^31 rows) and they
are joined in Python's exact integers; Spark sums into ``decimal(38,0)``.
"""

from __future__ import annotations

import polars as pl

HEX_FROM = 18  # 1-based first of the last 15 hex digits
HIGH_DIGITS = 7  # hex digits of the high word; the low word is the last 8 (32 bits)
LOW_BITS = 32


def checksum_sql(hash_expr: str) -> str:
    """PostgreSQL: the 60-bit checksum of an md5 hex text, as bigint."""
    return f"('x' || substr({hash_expr}, {HEX_FROM}))::bit(60)::bigint"


def spark_checksum_sql(hash_expr: str) -> str:
    """Spark SQL: the same checksum (``conv`` turns hex into decimal text)."""
    return f"CAST(conv(substr({hash_expr}, {HEX_FROM}), 16, 10) AS BIGINT)"


def checksum_words(hash_column: str) -> list[pl.Expr]:
    """Polars: the checksum's high 28 and low 32 bits (``_hi``, ``_lo``), to be summed."""
    text = pl.col(hash_column)
    return [text.str.slice(HEX_FROM - 1, HIGH_DIGITS).str.to_integer(base=16).alias("_hi"),
            text.str.slice(HEX_FROM - 1 + HIGH_DIGITS).str.to_integer(base=16).alias("_lo")]


def join_words(high: int, low: int) -> int:
    """The exact sum from the summed words."""
    return (int(high) << LOW_BITS) + int(low)
