"""``col::text``, the record hash and storable values rendered from ADBC's Arrow, bit for bit
against a real PostgreSQL (:mod:`bronze_assets.lib.enrich.pgtext`).

Values are generated as plain integers/strings and turned into dates, timestamps and numerics by
PostgreSQL itself, so nothing here depends on the renderer under test: the renderer's output for
what ADBC returns is compared with what the server prints for the same rows.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bronze_assets.contracts.model import Cadence, Column, Contract, LoadPattern, Partitioning, PgType
from bronze_assets.lib.enrich.pgtext import (
    DATE_NEG_INFINITY,
    DATE_POS_INFINITY,
    TS_NEG_INFINITY,
    TS_POS_INFINITY,
    column_text,
    hash_texts,
    record_hash,
    storable,
)
from bronze_assets.lib.source.postgres import connect
from bronze_assets_tests.conftest import query

pytestmark = pytest.mark.integration

COLUMNS = (
    Column("k", PgType.INTEGER),
    Column("i", PgType.INTEGER),
    Column("b", PgType.BIGINT),
    Column("t", PgType.TEXT),
    Column("d", PgType.DATE),
    Column("updated_at", PgType.TIMESTAMPTZ),
    Column("n10", PgType.NUMERIC_10_2),
    Column("n12", PgType.NUMERIC_12_2),
)
CONTRACT = Contract(
    name="rh", description="every contract column type", columns=COLUMNS, primary_key=("k",),
    load_pattern=LoadPattern.FULL, cadence=Cadence.DAILY, partitioning=Partitioning.none(),
    zorder_columns=(),
)
NAMES = [c.name for c in COLUMNS]

# PostgreSQL's own limits, in its internal units (days / µs of the day since 2000-01-01)
PG_DATE_MIN, PG_DATE_MAX = -2_451_545, 2_145_031_948  # 4714-11-24 BC .. 5874897-12-31
PG_TS_DAY_MAX = 106_751_982  # 294276-12-31, the last day a timestamptz can have
US_PER_DAY = 86_400_000_000
EPOCH_SHIFT_DAYS = 10_957  # 1970-01-01 .. 2000-01-01
INT32, INT64 = (-(2**31), 2**31 - 1), (-(2**63), 2**63 - 1)

STAGE_SCHEMA = pa.schema([
    ("k", pa.int32()), ("i", pa.int32()), ("b", pa.int64()), ("t", pa.string()),
    ("d_days", pa.int32()), ("d_special", pa.string()),
    ("ts_days", pa.int32()), ("ts_us", pa.int64()), ("ts_special", pa.string()),
    ("n10", pa.string()), ("n12", pa.string()),
])
# The staged integers/strings become typed values inside PostgreSQL (exact integer arithmetic).
FILL_SQL = """
INSERT INTO public.rh (k, i, b, t, d, updated_at, n10, n12)
SELECT k, i, b, t,
       CASE WHEN d_special IS NOT NULL THEN d_special::date
            WHEN d_days IS NOT NULL THEN DATE '2000-01-01' + d_days END,
       CASE WHEN ts_special IS NOT NULL THEN ts_special::timestamptz
            WHEN ts_days IS NOT NULL THEN
                 ((DATE '2000-01-01' + ts_days) + (ts_us * interval '1 microsecond')::time) AT TIME ZONE 'UTC'
       END,
       n10::numeric(10,2), n12::numeric(12,2)
FROM public.rh_stage
"""
CREATE_SQL = """
CREATE TABLE IF NOT EXISTS public.rh (
    k integer PRIMARY KEY, i integer, b bigint, t text, d date, updated_at timestamp with time zone,
    n10 numeric(10,2), n12 numeric(12,2)
)
"""
TEXT_SESSION = ["SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, MDY'"]


def _hash_sql(version: int) -> str:
    """The §2.2 hash written straight from its definition (independent of the module)."""
    if version == 1:
        parts = [f"coalesce({c}::text, '\\N')" for c in NAMES]
    else:
        parts = [f"coalesce(length({c}::text) || ':' || {c}::text, '\\N')" for c in NAMES]
    return f"md5(concat_ws(E'\\x1f', {', '.join(parts)}))"


EXPECTED_SQL = (
    f"SELECT {', '.join(f'{c}::text' for c in NAMES)}, {_hash_sql(1)}, {_hash_sql(2)} "
    "FROM public.rh ORDER BY rh.k"
)


# ---------------------------------------------------------------------------------------------
# staging and reading


def _cents_text(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _stage_row(k: int, row: tuple) -> dict:
    i, b, t, d, ts, n10, n12 = row
    d_days = d if isinstance(d, int) else None
    d_special = d if isinstance(d, str) else None
    ts_days = ts_us = ts_special = None
    if isinstance(ts, str):
        ts_special = ts
    elif ts is not None:
        ts_days, ts_us = ts
    return {"k": k, "i": i, "b": b, "t": t, "d_days": d_days, "d_special": d_special,
            "ts_days": ts_days, "ts_us": ts_us, "ts_special": ts_special, "n10": n10, "n12": n12}


def load_rows(dsn: str, rows: list[tuple]) -> None:
    """Replace the contents of public.rh with ``rows`` (i, b, t, d, ts, n10, n12), keyed 0..n-1."""
    stage = pa.Table.from_pylist([_stage_row(k, r) for k, r in enumerate(rows)], schema=STAGE_SCHEMA)
    with connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(CREATE_SQL)
        cur.execute("TRUNCATE public.rh")
        cur.adbc_ingest("rh_stage", stage, mode="replace", db_schema_name="public")
        cur.execute(FILL_SQL)


def read_batch(dsn: str) -> pa.RecordBatch:
    """``SELECT cols FROM t`` through ADBC exactly as extraction reads it (session in UTC)."""
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(NAMES)} FROM public.rh ORDER BY k")
        table = cur.fetch_arrow_table()
    return table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist(
        [], schema=table.schema)


def expected_text(dsn: str) -> dict[str, list]:
    """What PostgreSQL prints per column (``col::text``) and for the v1/v2 hash SQL."""
    with connect(dsn) as conn, conn.cursor() as cur:
        for statement in TEXT_SESSION:
            cur.execute(statement)
        cur.execute(EXPECTED_SQL)
        rows = cur.fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [()] * (len(NAMES) + 2)
    out = {name: list(values) for name, values in zip(NAMES, columns, strict=False)}
    out["v1"], out["v2"] = list(columns[-2]), list(columns[-1])
    return out


def assert_matches_postgres(dsn: str, rows: list[tuple]) -> pa.RecordBatch:
    load_rows(dsn, rows)
    batch = read_batch(dsn)
    want = expected_text(dsn)
    assert batch.num_rows == len(rows)
    for column in COLUMNS:
        arr = batch.column(column.name)
        got = column_text(arr, column.type)
        assert got.type == pa.string()
        mismatches = [(k, g, w) for k, (g, w) in enumerate(zip(got.to_pylist(), want[column.name],
                                                                strict=True)) if g != w]
        assert not mismatches, f"{column.name}: (row, rendered, PostgreSQL) {mismatches[:5]}"
        if isinstance(arr, pa.ExtensionArray):  # numeric: the plain string storage renders the same
            assert column_text(arr.storage, column.type).equals(got)
    texts = [column_text(batch.column(c.name), c.type) for c in COLUMNS]
    for version, key in ((1, "v1"), (2, "v2")):
        got = record_hash(batch, CONTRACT, version=version)
        assert got.type == pa.string()
        mismatches = [(k, g, w) for k, (g, w) in enumerate(zip(got.to_pylist(), want[key], strict=True))
                      if g != w]
        assert not mismatches, f"hash v{version}: (row, computed, PostgreSQL) {mismatches[:5]}"
        assert hash_texts(texts, version=version).equals(got), "hash of pre-rendered texts"
    assert_sql_forms_agree(dsn)
    return batch


def assert_sql_forms_agree(dsn: str) -> None:
    """The SQL the product runs equals §2.2's definition on every row: ``hash_sql`` (fields joined
    by ``||``, as written and over pre-rendered columns as reconcile renders them) and the
    checksum and hash position of PostgreSQL 16's hex integers and of bit strings."""
    from bronze_assets.lib.reconcile.checksum import checksum_sql, position_sql
    from bronze_assets.lib.source.pushdown import hash_sql

    rendered = ", ".join(f"{c}::text AS _t{i}" for i, c in enumerate(NAMES))
    pre = hash_sql(CONTRACT, [f"_t{i}" for i in range(len(NAMES))])
    forms = {"v1": hash_sql(CONTRACT, version=1), "v2": hash_sql(CONTRACT)}
    differ = " OR ".join([
        f"{forms['v1']} IS DISTINCT FROM {_hash_sql(1)}", f"{forms['v2']} IS DISTINCT FROM {_hash_sql(2)}",
        f"{pre} IS DISTINCT FROM {_hash_sql(2)}",
        f"{checksum_sql('h', True)} <> {checksum_sql('h', False)}",
        f"{position_sql('h', True)} <> {position_sql('h', False)}"])
    hex_integers = query(dsn, "SELECT current_setting('server_version_num')::int")[0][0] >= 160_000
    if not hex_integers:  # the bit-string forms only
        differ = differ.rsplit(" OR ", 2)[0]
    rows = query(dsn, f"SELECT count(*), count(*) FILTER (WHERE {differ}) "
                      f"FROM (SELECT *, {_hash_sql(2)} AS h, {rendered} FROM public.rh) s")
    assert rows[0][1] == 0 and rows[0][0] > 0, rows
    top = "repeat('f', 32)"
    edge = query(dsn, f"SELECT {checksum_sql(top, hex_integers)}, {position_sql(top, hex_integers)}")[0]
    assert edge == (2**60 - 1, 2**60 - 1)


# ---------------------------------------------------------------------------------------------
# strategies (PostgreSQL-internal integers; the server builds the typed values)


def _maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([lo, hi, 0, -1, 1]), st.integers(lo, hi))


def _pg_days(d: date) -> int:
    return d.toordinal() - date(2000, 1, 1).toordinal()


TEXTS = st.one_of(
    st.sampled_from(["", "\x1f", "\\N", "\\", "a\x1fb", "'", '"', "\n\t\r", "é", "e\u0301",
                     "👨\u200d👩\u200d👧", "🇩🇪", "\uffff", "\U0010ffff", " 1:x"]),
    st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=40),
)
DATE_BOUNDARIES = [PG_DATE_MIN, PG_DATE_MAX, _pg_days(date(1, 1, 1)), _pg_days(date(1, 1, 1)) - 1,
                   _pg_days(date(9999, 12, 31)), _pg_days(date(9999, 12, 31)) + 1, 0, -1, -10_957]
DATES = st.one_of(
    st.sampled_from(["infinity", "-infinity", *DATE_BOUNDARIES]),
    st.integers(PG_DATE_MIN, PG_DATE_MAX),  # mostly far beyond year 9999
    st.integers(PG_DATE_MIN, _pg_days(date(1, 1, 1))),  # BC
    st.integers(_pg_days(date(1, 1, 1)) - 400, _pg_days(date(9999, 12, 31)) + 400),
    st.integers(_pg_days(date(1900, 1, 1)), _pg_days(date(2100, 1, 1))),
)
MICROS = st.one_of(
    st.sampled_from([0, 1, 999_999, 1_000_000, 500_000, US_PER_DAY - 1]),
    st.integers(0, US_PER_DAY - 1),
    st.integers(0, 86_399).map(lambda s: s * 1_000_000),  # whole seconds
    st.tuples(st.integers(0, 86_399), st.integers(1, 6), st.integers(1, 9)).map(  # a few frac digits
        lambda t: t[0] * 1_000_000 + t[2] * 10 ** (6 - t[1])),
)
TS_DAYS = st.one_of(
    st.sampled_from([PG_DATE_MIN, PG_TS_DAY_MAX, _pg_days(date(1, 1, 1)), _pg_days(date(1, 1, 1)) - 1,
                     _pg_days(date(9999, 12, 31)), _pg_days(date(9999, 12, 31)) + 1, -1, 0]),
    st.integers(PG_DATE_MIN, PG_TS_DAY_MAX),
    st.integers(PG_DATE_MIN, _pg_days(date(1, 1, 1))),  # BC
    st.integers(PG_TS_DAY_MAX - 20_000, PG_TS_DAY_MAX),  # arrives int64-wrapped from ~year 294247
    st.integers(_pg_days(date(1900, 1, 1)), _pg_days(date(2100, 1, 1))),
)
TIMESTAMPS = st.one_of(st.sampled_from(["infinity", "-infinity"]), st.tuples(TS_DAYS, MICROS))


def _numerics(precision: int) -> st.SearchStrategy[str]:
    top = 10**precision - 1
    return st.one_of(
        st.sampled_from(["NaN", "nan", "0", "-0", "0.5", "-0.5", "1.1", "7", "100", "0.01", "-0.01",
                         "1.005", "-2.675", "1e3", "10000000", "-10000000"]),
        _ints(-top, top).map(_cents_text),
        st.integers(-(10**6), 10**6).map(_cents_text),
    )


ROWS = st.tuples(
    _maybe(_ints(*INT32)), _maybe(_ints(*INT64)), _maybe(TEXTS), _maybe(DATES), _maybe(TIMESTAMPS),
    _maybe(_numerics(10)), _maybe(_numerics(12)),
)


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(rows=st.lists(ROWS, min_size=100, max_size=300))
def test_rendering_and_hash_equal_postgres(fresh_dsn: str, rows: list[tuple]) -> None:
    assert_matches_postgres(fresh_dsn, rows)


# ---------------------------------------------------------------------------------------------
# hand-picked hostile values, and the driver facts the renderer relies on

HOSTILE_ROWS: list[tuple] = [
    (None, None, None, None, None, None, None),
    (INT32[0], INT64[0], "", "infinity", "infinity", "NaN", "NaN"),
    (INT32[1], INT64[1], "\x1f", "-infinity", "-infinity", "99999999.99", "9999999999.99"),
    (0, 0, "\\N", _pg_days(date(9999, 12, 31)), (_pg_days(date(9999, 12, 31)), US_PER_DAY - 1),
     "-99999999.99", "-9999999999.99"),
    (-1, -1, "a\x1f\\Nb", _pg_days(date(9999, 12, 31)) + 1, (_pg_days(date(9999, 12, 31)) + 1, 0),
     "-0.50", "0.00"),
    (1, 1, "é👨\u200d👩\u200d👧", _pg_days(date(1, 1, 1)), (_pg_days(date(1, 1, 1)), 0), "1.1", "7"),
    (2, 2, "line\nbreak", _pg_days(date(1, 1, 1)) - 1, (_pg_days(date(1, 1, 1)) - 1, 500_000),
     "12345678.90", "0.01"),
    (3, 3, " ", PG_DATE_MIN, (PG_DATE_MIN, 0), "-0.01", "-12345.6"),
    (4, 4, "x" * 1000, PG_DATE_MAX, (PG_TS_DAY_MAX, US_PER_DAY - 1), "0", "100"),
    (5, 5, "NULL", -10_957, (-10_957, 59_999_999), "0.10", "-0.10"),
    (6, 6, "\\", _pg_days(date(2024, 2, 29)), (_pg_days(date(2024, 1, 1)), 43_200_000_000), None, "5"),
    (7, 7, "'", None, (_pg_days(date(2024, 1, 1)), 43_200_500_000), "3", None),
    (8, 8, None, _pg_days(date(2000, 1, 1)), "4713-01-01 00:00:00+00 BC", "0.05", "0.05"),
    (9, 9, "\x7f", "0044-03-15 BC", "294276-12-31 23:59:59+00", "1", "1"),
]
# What PostgreSQL prints for some of them (the claims the renderer is written against).
CLAIMS = {
    ("d", 3): "9999-12-31", ("d", 4): "10000-01-01", ("d", 5): "0001-01-01", ("d", 6): "0001-12-31 BC",
    ("d", 7): "4714-11-24 BC", ("d", 8): "5874897-12-31", ("d", 10): "2024-02-29",
    ("d", 1): "infinity", ("d", 2): "-infinity", ("d", 13): "0044-03-15 BC",
    ("updated_at", 3): "9999-12-31 23:59:59.999999+00", ("updated_at", 6): "0001-12-31 00:00:00.5+00 BC",
    ("updated_at", 7): "4714-11-24 00:00:00+00 BC", ("updated_at", 8): "294276-12-31 23:59:59.999999+00",
    ("updated_at", 10): "2024-01-01 12:00:00+00", ("updated_at", 11): "2024-01-01 12:00:00.5+00",
    ("updated_at", 12): "4713-01-01 00:00:00+00 BC", ("updated_at", 13): "294276-12-31 23:59:59+00",
    ("updated_at", 1): "infinity", ("updated_at", 2): "-infinity",
    ("n10", 1): "NaN", ("n10", 4): "-0.50", ("n10", 5): "1.10", ("n12", 5): "7.00", ("n12", 4): "0.00",
    ("n10", 6): "12345678.90", ("n12", 7): "-12345.60", ("n12", 9): "-0.10",
}


def test_hostile_values_equal_postgres(fresh_dsn: str) -> None:
    batch = assert_matches_postgres(fresh_dsn, HOSTILE_ROWS)
    want = expected_text(fresh_dsn)
    for (column, row), text in CLAIMS.items():
        assert want[column][row] == text, (column, row)

    # the driver facts: int32/int64 wraparound of the epoch shift, numerics as opaque text
    days = batch.column("d").cast(pa.int32()).to_pylist()
    assert (days[1], days[2]) == (DATE_POS_INFINITY, DATE_NEG_INFINITY)
    assert (days[7], days[8], days[13]) == (-2_440_588, 2_145_042_905, -735_160)
    micros = batch.column("updated_at").cast(pa.int64()).to_pylist()
    assert (micros[1], micros[2]) == (TS_POS_INFINITY, TS_NEG_INFINITY)
    assert micros[12] == -210_863_520_000_000_000
    assert micros[13] == -9_222_426_057_710_551_616 and micros[13] + 2**64 > 0  # wrapped
    numeric = batch.column("n10")
    assert isinstance(numeric, pa.ExtensionArray) and numeric.type.extension_name == "arrow.opaque"
    assert numeric.storage.to_pylist()[:2] == [None, "nan"]

    # the per-column text of NULLs is NULL; a row of NULLs hashes as \N joined by \x1f
    assert all(column_text(batch.column(c), t).to_pylist()[0] is None for c, t in
               ((c.name, c.type) for c in COLUMNS if c.name != "k"))
    assert want["v2"][0] == query(fresh_dsn, "SELECT md5('1:0' || repeat(E'\\x1f\\\\N', 7))")[0][0]

    # several threads hashing at once get the same answer
    expected = record_hash(batch, CONTRACT)
    results: list[pa.Array] = []
    threads = [threading.Thread(target=lambda: results.append(record_hash(batch, CONTRACT)))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and all(r.equals(expected) for r in results)


def test_empty_and_sliced_batches(fresh_dsn: str) -> None:
    batch = assert_matches_postgres(fresh_dsn, HOSTILE_ROWS)
    assert len(record_hash(batch.slice(0, 0), CONTRACT)) == 0
    tail = batch.slice(5, 4)
    assert record_hash(tail, CONTRACT).equals(record_hash(batch, CONTRACT).slice(5, 4))
    for column in COLUMNS:
        whole = column_text(batch.column(column.name), column.type)
        assert column_text(tail.column(column.name), column.type).equals(whole.slice(5, 4))


# ---------------------------------------------------------------------------------------------
# storable values


def test_storable(fresh_dsn: str) -> None:
    rows = [
        (None, None, None, None, None, None, None),
        (1, 1, "a", "infinity", "infinity", "NaN", "NaN"),
        (2, 2, "b", "-infinity", "-infinity", "99999999.99", "-9999999999.99"),
        (3, 3, "c", _pg_days(date(9999, 12, 31)), (_pg_days(date(9999, 12, 31)), US_PER_DAY - 1),
         "-0.50", "0.01"),
        (4, 4, "d", _pg_days(date(1, 1, 1)), (_pg_days(date(1, 1, 1)), 0), "12345678.90", "1.1"),
        (5, 5, "e", _pg_days(date(1, 1, 1)) - 1, (_pg_days(date(1, 1, 1)) - 1, US_PER_DAY - 1), "0", "-0.10"),
        (6, 6, "f", _pg_days(date(9999, 12, 31)) + 1, (_pg_days(date(9999, 12, 31)) + 1, 0), "7", "7"),
        (7, 7, "g", "0044-03-15 BC", "294276-12-31 23:59:59+00", "0.05", "0.05"),
        (8, 8, "h", _pg_days(date(2024, 2, 29)), (_pg_days(date(2024, 2, 29)), 43_200_000_001), "1", "2"),
    ]
    load_rows(fresh_dsn, rows)
    batch = read_batch(fresh_dsn)

    dates, flags = storable(batch.column("d"), PgType.DATE)
    assert dates.type == pa.date32()
    assert dates.to_pylist() == [None, None, None, date(9999, 12, 31), date(1, 1, 1), None, None, None,
                                 date(2024, 2, 29)]
    assert flags.to_pylist() == [False, True, True, False, False, True, True, True, False]

    stamps, flags = storable(batch.column("updated_at"), PgType.TIMESTAMPTZ)
    assert stamps.type == pa.timestamp("us", tz="UTC")
    assert stamps.to_pylist() == [
        None, None, None, datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC), None, None, None, datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC)]
    assert flags.to_pylist() == [False, True, True, False, False, True, True, True, False]

    for name, type_, values in (
        ("n10", PgType.NUMERIC_10_2, [None, None, "99999999.99", "-0.50", "12345678.90", "0.00", "7.00",
                                      "0.05", "1.00"]),
        ("n12", PgType.NUMERIC_12_2, [None, None, "-9999999999.99", "0.01", "1.10", "-0.10", "7.00",
                                      "0.05", "2.00"]),
    ):
        for arr in (batch.column(name), batch.column(name).storage):  # extension and plain text
            decimals, flags = storable(arr, type_)
            assert decimals.type == pa.decimal128(*type_.precision_scale)
            assert decimals.to_pylist() == [None if v is None else Decimal(v) for v in values]
            assert [str(v) if v is not None else None for v in decimals.to_pylist()] == values
            assert flags.to_pylist() == [False, True] + [False] * 7

    for name, type_ in (("k", PgType.INTEGER), ("b", PgType.BIGINT), ("t", PgType.TEXT)):
        values, flags = storable(batch.column(name), type_)
        assert values.equals(batch.column(name).cast(values.type))
        assert not any(flags.to_pylist())
