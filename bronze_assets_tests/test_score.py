"""The §3 per-record score: every rule kind on crafted source rows, caps, NULL counted once."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest

from bronze_assets.contracts import (
    Cadence,
    Comparison,
    Contract,
    LoadPattern,
    Partitioning,
    PgType,
    QualityRules,
    RangeRule,
    RegexRule,
)
from bronze_assets.contracts.model import Column
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.enrich.score import score_expr
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

CRAFTED = {
    "products": [  # (row values, expected score)
        ("(900001, 'Good', 'Tools', 10.00, 'TLS-900001', now())", 100),
        ("(900002, NULL, 'Tools', 10.00, 'TLS-900002', now())", 90),          # 1 null
        ("(900003, NULL, NULL, NULL, 'TLS-900003', now())", 70),              # 3 nulls, NULL price no range
        ("(900004, 'Bad SKU', 'Tools', 10.00, 'tls_900004', now())", 95),     # regex
        ("(900005, 'Neg', 'Tools', -0.01, 'TLS-900005', now())", 98),         # range >= 0
        ("(900006, 'No SKU', 'Tools', 0.00, NULL, now())", 100),              # NULL optional: no format
        ("(900007, NULL, 'Tools', -5.00, 'x', now())", 83),                   # 10 + 5 + 2
    ],
    "suppliers": [
        ("(900001, 'S', '+1 415-555-0100', 'a@b.co', 1, now())", 100),
        ("(900002, 'S', 'N/A', 'not-an-email', 1, now())", 90),               # 2 regex rules
        ("(900003, NULL, NULL, 'x@y', NULL, now())", 65),                     # 3 nulls + 1 format
    ],
    "orders": [
        ("(900001, 1, current_date, 'PENDING', 1.00, now())", 100),
        ("(900002, 1, current_date, 'UNKNOWN', 1.00, now())", 95),            # value set
        ("(900003, 1, current_date + 10, 'PENDING', 1.00, now())", 98),       # after load date
        ("(900004, 1, current_date + 10, 'PENDING', -1.00, now())", 96),      # two range rules
        ("(900005, 1, NULL, 'shipped', 1.00, now())", 85),                    # null + format
    ],
    "order_details": [
        ("(900001, 1, 1, 0, 1.00, now())", 98),                               # quantity > 0
        ("(900002, 1, 1, -1, -1.00, now())", 96),
        ("(900003, NULL, NULL, NULL, NULL, now())", 70),
    ],
    "warehouses": [("(900001, 'Reno, NV', 0, now())", 98), ("(900002, NULL, NULL, now())", 80)],
    "customers": [("(900001, 'A B', 'a b@c.com', now())", 95), ("(900002, NULL, NULL, now())", 80)],
}


@pytest.mark.integration
def test_crafted_rows_get_exact_scores(seed_db: SeedDb, tmp_path: Path) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    for table, rows in CRAFTED.items():
        query(fresh_dsn, f"INSERT INTO tests.{table} VALUES {', '.join(r for r, _ in rows)}")
        bronze.load_direct(table)
        pk = bronze.read(table).columns[0]
        got = bronze.read(table).filter(pl.col(pk) >= 900001).sort(pk)["data_quality_score"].to_list()
        assert got == [score for _, score in rows], table
        clean = bronze.read(table).filter(pl.col(pk) < 900001)["data_quality_score"]
        assert clean.min() == 100, f"{table}: clean generated rows must score 100"


SYNTHETIC = Contract(
    name="synthetic", description="caps", load_pattern=LoadPattern.FULL, cadence=Cadence.DAILY,
    partitioning=Partitioning.none(), zorder_columns=(),
    columns=tuple(Column(n, t) for n, t in [
        ("id", PgType.INTEGER), *[(f"r{i}", PgType.TEXT) for i in range(4)],
        *[(f"f{i}", PgType.TEXT) for i in range(5)], *[(f"n{i}", PgType.INTEGER) for i in range(6)],
        ("updated_at", PgType.TIMESTAMPTZ),
    ]),
    primary_key=("id",),
    quality=QualityRules(
        required=tuple(f"r{i}" for i in range(4)),
        formats=tuple(RegexRule(f"f{i}", "^ok$") for i in range(5)),
        ranges=tuple(RangeRule(f"n{i}", Comparison.GE, 0) for i in range(6)),
    ),
)


def _frame(nulls: int, formats: int, ranges: int) -> pl.DataFrame:
    row: dict[str, object] = {"id": 1}
    row |= {f"r{i}": (None if i < nulls else "x") for i in range(4)}
    row |= {f"f{i}": ("bad" if i < formats else "ok") for i in range(5)}
    row |= {f"n{i}": (-1 if i < ranges else 1) for i in range(6)}
    return pl.DataFrame([row], schema_overrides={f"r{i}": pl.String for i in range(4)})


@pytest.mark.parametrize(
    ("nulls", "formats", "ranges", "schema_fail", "expected"),
    [
        (0, 0, 0, False, 100),
        (2, 0, 0, False, 80),
        (4, 0, 0, False, 70),     # nulls capped at 30
        (0, 3, 0, False, 85),
        (0, 5, 0, False, 80),     # formats capped at 20
        (0, 0, 4, False, 92),
        (0, 0, 6, False, 90),     # ranges capped at 10
        (0, 0, 0, True, 60),      # schema fail
        (4, 5, 6, True, 0),       # everything: floor at 0
    ],
)
def test_score_caps(nulls: int, formats: int, ranges: int, schema_fail: bool, expected: int) -> None:
    frame = _frame(nulls, formats, ranges)
    score = frame.select(score_expr(SYNTHETIC, date(2026, 1, 1), {"n0": pl.lit(schema_fail)})).item()
    assert score == expected


def test_an_unreadable_value_is_a_schema_fail_once_not_a_null() -> None:
    frame = pl.DataFrame({"id": [1], **{f"r{i}": [None if i < 2 else "x"] for i in range(4)},
                          **{f"f{i}": ["ok"] for i in range(5)}, **{f"n{i}": [1] for i in range(6)}},
                         schema_overrides={f"r{i}": pl.String for i in range(4)})
    flags = {"r0": pl.lit(True), "r1": pl.lit(True)}  # r0/r1 were present but could not be read
    assert frame.select(score_expr(SYNTHETIC, date(2026, 1, 1), flags)).item() == 60
    assert frame.select(score_expr(SYNTHETIC, date(2026, 1, 1), {"r0": pl.lit(True)})).item() == 50


def test_null_never_counts_as_format_or_range() -> None:
    frame = pl.DataFrame({"id": [1], **{f"r{i}": ["x"] for i in range(4)},
                          **{f"f{i}": [None] for i in range(5)}, **{f"n{i}": [None] for i in range(6)}},
                         schema_overrides={**{f"f{i}": pl.String for i in range(5)},
                                           **{f"n{i}": pl.Int32 for i in range(6)}})
    assert frame.select(score_expr(SYNTHETIC, date(2026, 1, 1))).item() == 100
