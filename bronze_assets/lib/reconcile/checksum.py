"""The per-row checksum both sides sum per key bucket (reladiff's: the last 60 bits of the row's
md5 as an integer), and a row's hash position (the first 60 bits: where a table not keyed by one
integer column is bucketed), in PostgreSQL, DataFusion-read Arrow (Polars) and Spark SQL.

``record_hash`` is 32 hex digits; characters 18–32 (1-based) are the 15 hex digits = 60 bits. A
bucket's checksum is the exact sum of its rows' checksums: PostgreSQL sums into ``numeric``;
Polars into ``Int128`` (2^60 × 2^31 rows fits 2^127); Spark into ``decimal(38,0)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

HEX_FROM = 18  # 1-based first of the last 15 hex digits
POSITION_DIGITS = 15  # the first 15 hex digits: a row's hash position
POSITIONS = 1 << (4 * POSITION_DIGITS)  # hash positions are 0 … POSITIONS - 1


HEX_INTEGERS = 160_000  # server_version_num from which PostgreSQL reads '0x…' as an integer


def _hex_sql(digits: str, hex_integers: bool) -> str:
    """PostgreSQL: 15 hex digits as bigint; ``hex_integers`` (PostgreSQL 16+): by the integer input
    function, about a third of the cost of the bit string route that works everywhere."""
    return f"('0x' || {digits})::bigint" if hex_integers else f"('x' || {digits})::bit(60)::bigint"


def checksum_sql(hash_expr: str, hex_integers: bool = False) -> str:
    """PostgreSQL: the 60-bit checksum of an md5 hex text, as bigint."""
    return _hex_sql(f"substr({hash_expr}, {HEX_FROM})", hex_integers)


def spark_checksum_sql(hash_expr: str) -> str:
    """Spark SQL: the same checksum (``conv`` turns hex into decimal text)."""
    return f"CAST(conv(substr({hash_expr}, {HEX_FROM}), 16, 10) AS BIGINT)"


def checksum(hash_column: str) -> pl.Expr:
    """Polars: the same checksum as ``Int128``, to be summed exactly."""
    return pl.col(hash_column).str.slice(HEX_FROM - 1).str.to_integer(base=16).cast(pl.Int128)


def position_sql(hash_expr: str, hex_integers: bool = False) -> str:
    """PostgreSQL: the hash position of an md5 hex text, as bigint."""
    return _hex_sql(f"substr({hash_expr}, 1, {POSITION_DIGITS})", hex_integers)


def spark_position_sql(hash_expr: str) -> str:
    """Spark SQL: the same hash position."""
    return f"CAST(conv(substr({hash_expr}, 1, {POSITION_DIGITS}), 16, 10) AS BIGINT)"


def position(hash_column: str) -> pl.Expr:
    """Polars: the same hash position (Int64)."""
    return pl.col(hash_column).str.slice(0, POSITION_DIGITS).str.to_integer(base=16)


def hash_ranges_sql(hash_column: str, ranges: Sequence[tuple[int, int]]) -> str:
    """SQL true for an md5 hex text whose position lies in any of the inclusive ``ranges``, as
    comparisons of the text itself (lowercase hex sorts like its value), so a Delta scan can skip
    files by their statistics (DataFusion and Spark; byte order, no collation)."""
    def bound(value: int) -> str:
        return f"'{value:0{POSITION_DIGITS}x}'"

    terms = []
    for lo, hi in ranges:
        upper = f" AND {hash_column} < {bound(hi + 1)}" if hi + 1 < POSITIONS else ""
        terms.append(f"({hash_column} >= {bound(lo)}{upper})")
    return " OR ".join(terms) or "FALSE"
