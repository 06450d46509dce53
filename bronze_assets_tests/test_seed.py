"""`bronze seed` against a real PostgreSQL: DDL, volumes, determinism, defects, integrity, --reset."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from bronze_assets.cli import main
from bronze_assets.contracts import (
    CONTRACTS,
    Comparison,
    Contract,
    NotAfterLoadDateRule,
    RangeRule,
    RegexRule,
    ValueSetRule,
)
from bronze_assets.demo.generator import SeedOptions, defect_kinds
from bronze_assets.demo.seed import SourceNotEmptyError, seed_source, source_row_counts
from bronze_assets_tests.conftest import AS_OF, query
from bronze_assets_tests.test_contracts import PG_NAMES, SEED_ROWS, SPEC_COLUMNS

pytestmark = pytest.mark.integration


def table_md5(dsn: str, contract: Contract) -> str:
    pk = ", ".join(contract.primary_key)
    sql = f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY {pk}), '')) FROM tests.{contract.name} t"
    return query(dsn, sql)[0][0]


def all_md5(dsn: str) -> dict[str, str]:
    return {name: table_md5(dsn, c) for name, c in CONTRACTS.items()}


def test_scale_zero_creates_exactly_the_spec_ddl(fresh_dsn: str) -> None:
    report = seed_source(fresh_dsn, SeedOptions(scale=0, as_of=AS_OF))
    assert report.total_rows == 0
    rows = query(
        fresh_dsn,
        """SELECT table_name, column_name, ordinal_position,
                  CASE WHEN data_type = 'numeric'
                       THEN format('numeric(%s,%s)', numeric_precision, numeric_scale)
                       ELSE data_type END
           FROM information_schema.columns WHERE table_schema = 'tests'
           ORDER BY table_name, ordinal_position""",
    )
    got: dict[str, list[tuple[str, str]]] = {}
    for table, column, _, type_ in rows:
        got.setdefault(table, []).append((column, type_))
    expected = {
        t: [(p.split()[0], PG_NAMES[p.split()[1]]) for p in spec.split(", ")]
        for t, spec in SPEC_COLUMNS.items()
    }
    assert got == expected
    pks = query(
        fresh_dsn,
        """SELECT tc.table_name, kcu.column_name FROM information_schema.table_constraints tc
           JOIN information_schema.key_column_usage kcu
             ON tc.constraint_name = kcu.constraint_name AND tc.table_schema = kcu.table_schema
           WHERE tc.table_schema = 'tests' AND tc.constraint_type = 'PRIMARY KEY'""",
    )
    assert dict(pks) == {t: spec.split()[0] for t, spec in SPEC_COLUMNS.items()}
    fks = query(fresh_dsn, "SELECT count(*) FROM information_schema.table_constraints "
                           "WHERE table_schema = 'tests' AND constraint_type = 'FOREIGN KEY'")
    assert fks == [(0,)]  # foreign keys are logical only (real sources carry orphans)
    assert source_row_counts(fresh_dsn) == dict.fromkeys(SPEC_COLUMNS, 0)


def test_row_counts_at_scale_one_hundredth(fresh_dsn: str) -> None:
    seed_source(fresh_dsn, SeedOptions(scale=0.01, as_of=AS_OF))
    expected = {t: max(1, round(n * 0.01)) for t, n in SEED_ROWS.items()}
    assert expected["warehouses"] == 1 and expected["order_details"] == 2_000
    assert source_row_counts(fresh_dsn) == expected


@pytest.mark.slow
def test_row_counts_at_scale_one(fresh_dsn: str) -> None:
    report = seed_source(fresh_dsn, SeedOptions(scale=1, as_of=AS_OF))
    assert source_row_counts(fresh_dsn) == SEED_ROWS
    assert report.total_rows == 486_050


def test_same_seed_same_data_other_seed_other_data(fresh_dsn: str) -> None:
    seed_source(fresh_dsn, SeedOptions(scale=0.02, seed=7, as_of=AS_OF))
    first = all_md5(fresh_dsn)
    seed_source(fresh_dsn, SeedOptions(scale=0.02, seed=7, as_of=AS_OF), reset=True)
    assert all_md5(fresh_dsn) == first
    seed_source(fresh_dsn, SeedOptions(scale=0.02, seed=8, as_of=AS_OF), reset=True)
    second = all_md5(fresh_dsn)
    assert all(second[t] != first[t] for t in CONTRACTS), "every table must change with the seed"


def violation_sql(contract: Contract, kind: str) -> str:
    """SQL counting the rows of ``contract`` that violate one defect kind (a NULL never counts)."""
    family, column = kind.split(":", 1)
    table = f"tests.{contract.name}"
    if family == "null":
        return f"SELECT count(*) FROM {table} WHERE {column} IS NULL"
    if family == "orphan":
        fk = next(f for f in contract.foreign_keys if f.column == column)
        return (f"SELECT count(*) FROM {table} c WHERE c.{column} IS NOT NULL AND NOT EXISTS "
                f"(SELECT 1 FROM tests.{fk.parent_table} p WHERE p.{fk.parent_column} = c.{column})")
    rules = {r.column: r for r in (*contract.quality.formats, *contract.quality.ranges)}
    rule = rules[column]
    if isinstance(rule, RegexRule):
        cond = f"{column} !~ '{rule.pattern}'"
    elif isinstance(rule, ValueSetRule):
        cond = f"{column} NOT IN ({', '.join(repr(v) for v in rule.values)})"
    elif isinstance(rule, NotAfterLoadDateRule):
        cond = f"{column} > DATE '{AS_OF.date()}'"
    elif isinstance(rule, RangeRule):
        cond = f"NOT ({column} {'>=' if rule.op is Comparison.GE else '>'} {rule.bound})"
    else:
        raise TypeError(rule)
    return f"SELECT count(*) FROM {table} WHERE {column} IS NOT NULL AND {cond}"


def test_defect_rates_per_kind_and_referential_integrity(fresh_dsn: str) -> None:
    rate = 0.02
    report = seed_source(fresh_dsn, SeedOptions(scale=0.1, defect_rate=rate, as_of=AS_OF))
    families: dict[str, list[int]] = {}
    for name, contract in CONTRACTS.items():
        n = report.rows[name]
        for kind in defect_kinds(contract):
            measured = query(fresh_dsn, violation_sql(contract, kind))[0][0]
            injected = report.defects[name][kind]
            # clean rows never violate a rule, so the SQL count is exactly what was injected;
            # for orphans this is the referential-integrity check outside the injected orphans
            assert measured == injected, f"{name} {kind}: measured {measured}, injected {injected}"
            if n * rate >= 10:
                assert abs(measured / n - rate) <= 0.3 * rate, f"{name} {kind}: {measured}/{n}"
            fam = families.setdefault(kind.split(":")[0], [0, 0])
            fam[0] += measured
            fam[1] += n
    assert set(families) == {"null", "format", "range", "orphan"}
    for family, (bad, total) in families.items():
        assert abs(bad / total - rate) <= 0.3 * rate, f"{family}: {bad}/{total}"


def test_realistic_values_and_time_spread(fresh_dsn: str) -> None:
    seed_source(fresh_dsn, SeedOptions(scale=0.1, defect_rate=0.0, as_of=AS_OF))
    future = query(fresh_dsn, " UNION ALL ".join(
        f"SELECT count(*) FROM tests.{t} WHERE updated_at >= TIMESTAMPTZ '{AS_OF.isoformat()}'"
        for t in CONTRACTS))
    assert all(r[0] == 0 for r in future), "no update may lie after the seed's as-of time"
    (span,) = query(fresh_dsn, "SELECT max(order_date) - min(order_date) FROM tests.orders")
    assert 1_000 <= span[0] <= 3 * 366
    recent, year_before = query(fresh_dsn, f"""
        SELECT count(*) FILTER (WHERE updated_at >= TIMESTAMPTZ '{AS_OF.isoformat()}' - interval '90 days'),
               count(*) FILTER (WHERE updated_at < TIMESTAMPTZ '{AS_OF.isoformat()}' - interval '365 days'
                                  AND updated_at >= TIMESTAMPTZ '{AS_OF.isoformat()}' - interval '455 days')
        FROM tests.inventory""")[0]
    assert recent > 3 * year_before, "recent updates must be more likely"
    december, february = query(fresh_dsn, """
        SELECT count(*) FILTER (WHERE extract(month FROM order_date) = 12) / 31.0::float8,
               count(*) FILTER (WHERE extract(month FROM order_date) = 2) / 28.25::float8
        FROM tests.orders WHERE order_date < date_trunc('year', DATE '2026-11-01')""")[0]
    assert december > 1.4 * february, "seasonality: December outsells February"
    shipped_before_order = query(fresh_dsn, """
        SELECT count(*) FROM tests.shipments s JOIN tests.orders o USING (order_id)
        WHERE s.shipment_date < o.order_date""")[0][0]
    assert shipped_before_order == 0
    totals_mismatch = query(fresh_dsn, """
        SELECT count(*) FROM tests.orders o JOIN (
            SELECT order_id, sum(quantity_ordered * unit_price) AS total
            FROM tests.order_details GROUP BY order_id) d USING (order_id)
        WHERE o.total_amount <> d.total""")[0][0]
    assert totals_mismatch == 0
    sample = query(fresh_dsn, "SELECT customer_name, email FROM tests.customers ORDER BY customer_id LIMIT 1")
    name, email = sample[0]
    assert " " in name and email.startswith(name.split()[0].lower() + ".")


def test_refuses_non_empty_source_unless_reset(fresh_dsn: str) -> None:
    seed_source(fresh_dsn, SeedOptions(scale=0.01, seed=1, as_of=AS_OF))
    before = all_md5(fresh_dsn)
    with pytest.raises(SourceNotEmptyError, match=r"tests\.products \(100 rows\).*--reset"):
        seed_source(fresh_dsn, SeedOptions(scale=0.01, seed=2, as_of=AS_OF))
    assert all_md5(fresh_dsn) == before, "a refused seed must not touch the data"

    runner = CliRunner()
    refused = runner.invoke(main, ["seed", "--scale", "0.01", "--dsn", fresh_dsn])
    assert refused.exit_code == 1 and "--reset" in refused.output

    done = runner.invoke(main, ["seed", "--scale", "0.02", "--seed", "2", "--reset",
                                "--as-of", AS_OF.isoformat(), "--dsn", fresh_dsn])
    assert done.exit_code == 0, done.output
    assert "total" in done.output and "9,721 rows" in done.output
    assert source_row_counts(fresh_dsn)["products"] == 200
    assert all_md5(fresh_dsn) != before


def test_reset_keeps_other_objects_in_the_schema(fresh_dsn: str) -> None:
    seed_source(fresh_dsn, SeedOptions(scale=0.01, as_of=AS_OF))
    query(fresh_dsn, "CREATE TABLE tests.keep_me (x int)")
    query(fresh_dsn, "INSERT INTO tests.keep_me VALUES (1)")
    seed_source(fresh_dsn, SeedOptions(scale=0, as_of=AS_OF), reset=True)
    assert query(fresh_dsn, "SELECT count(*) FROM tests.keep_me") == [(1,)]
    assert source_row_counts(fresh_dsn)["orders"] == 0


def test_rejects_defect_rate_too_high_for_a_table() -> None:
    from bronze_assets.demo.generator import InventoryGenerator

    gen = InventoryGenerator(SeedOptions(scale=0.1, defect_rate=0.25, as_of=AS_OF))
    with pytest.raises(ValueError, match="too high for products"):
        list(gen.generate_all())
