"""Type-coverage benchmark (issue #22): an initial load of a table with one column of each type
family against tables of today's seven types with the same number of rows.

On a scratch embedded PostgreSQL, three tables of ``--rows`` rows (default 1 M) are built
server-side (``generate_series``):

* ``seven``   — today's seven types, as the shipped tables use them (8 columns);
* ``seven_wide`` — today's seven types cycled to the column count of ``every`` (36 columns): the
  same row count *and* width, so its ratio isolates the cost of the new types from that of more
  columns;
* ``every``   — one column of each type family (smallint … domain, 36 columns).

Each table is loaded ``--repeat`` times (rounds interleave the three tables, so other load on the
machine hits them alike) into an empty bronze root through the normal path
(:func:`~bronze_assets.lib.load.extract_and_stage` +
:class:`~bronze_assets.lib.delta.merger.BronzeMerger`, contracts from
:func:`~bronze_assets.contracts.discovery.discover_contract`); ratios are the median of the per-round ratios.
A second measurement isolates what asking PostgreSQL for ``col::text`` costs: a plain ADBC fetch
of the ``text``/``parsed``-mode columns of ``every`` as their binary values (what the driver can
read, lossy for some) against the same columns as ``::text``.

Usage: python benchmarks/bench_types.py [--rows 1000000] [--repeat 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

SEVEN = [("i", "integer", "(g * 7 % 2000000000)::int"), ("b", "bigint", "g::bigint * 1000003"),
         ("t", "text", "'product name ' || g"), ("d", "date", "DATE '2000-01-01' + (g % 10000)::int"),
         ("n10", "numeric(10,2)", "(g % 100000 * 1.37)::numeric(10,2)"),
         ("n12", "numeric(12,2)", "(g * 3.01)::numeric(12,2)"),
         ("tz", "timestamptz", "TIMESTAMPTZ '2020-01-01 00:00:00+00' + g * interval '1.5 second'")]
EVERY = [
    ("sm", "smallint", "(g % 30000)::smallint"), ("i", "integer", "(g * 7 % 2000000000)::int"),
    ("bi", "bigint", "g::bigint * 1000003"), ("n", "numeric", "round(g / 7.0, (g % 6)::int)"),
    ("n18", "numeric(18,4)", "(g * 1.2345)::numeric(18,4)"),
    ("n10", "numeric(10,2)", "(g % 100000 * 1.37)::numeric(10,2)"),
    ("r", "real", "(g / 3.0)::real"), ("dp", "double precision", "(g / 7.0)::double precision"),
    ("bo", "boolean", "g % 2 = 0"), ("t", "text", "'product name ' || g"),
    ("vc", "varchar(40)", "('sku-' || g)::varchar(40)"), ("ch", "char(5)", "(g % 1000)::text::char(5)"),
    ("d", "date", "DATE '2000-01-01' + (g % 10000)::int"),
    ("ts", "timestamp", "TIMESTAMP '2020-01-01' + g * interval '1.5 second'"),
    ("tz", "timestamptz", "TIMESTAMPTZ '2020-01-01 00:00:00+00' + g * interval '1.5 second'"),
    ("tm", "time", "(g * interval '1.5 second')::time"),
    ("ttz", "timetz", "(g * interval '1 second')::time::timetz"),
    ("iv", "interval", "g * interval '1 minute 1.5 second'"), ("u", "uuid", "md5(g::text)::uuid"),
    ("j", "json", "json_build_object('k', g, 'v', 'x')"),
    ("jb", "jsonb", "jsonb_build_object('k', g, 'v', 'x')"),
    ("by", "bytea", "decode(md5(g::text), 'hex')"),
    ("e", "bench_mood", "(ARRAY['sad','ok','happy'])[g % 3 + 1]::bench_mood"),
    ("ai", "integer[]", "ARRAY[g::int, g::int + 1, NULL]"), ("at", "text[]", "ARRAY['a' || g, NULL]"),
    ("ip", "inet", "('10.' || (g >> 16 & 255) || '.' || (g >> 8 & 255) || '.' || (g & 255))::inet"),
    ("cd", "cidr", "('10.' || (g >> 16 & 255) || '.' || (g >> 8 & 255) || '.0/24')::cidr"),
    ("mac", "macaddr", "substr(md5(g::text), 1, 12)::macaddr"),
    ("m", "money", "(g / 100.0)::numeric::money"), ("dom", "bench_posint", "(g % 1000 + 1)::bench_posint"),
    ("t2", "text", "'note ' || (g % 977)"), ("i2", "integer", "(g % 1234)::int"),
    ("d2", "date", "DATE '2020-01-01' + (g % 500)::int"), ("n2", "numeric(12,2)", "(g * 0.5)::numeric(12,2)"),
    ("b2", "bigint", "g::bigint"),
]


def _create(cur, name: str, columns: list[tuple[str, str, str]], rows: int) -> None:
    cols = ", ".join(f"{c} {t}" for c, t, _ in columns)
    values = ", ".join(expr for _, _, expr in columns)
    cur.execute(f"DROP TABLE IF EXISTS tests.{name}")
    cur.execute(f"CREATE TABLE tests.{name} (k bigint PRIMARY KEY, {cols}, updated_at timestamptz)")
    cur.execute(f"INSERT INTO tests.{name} SELECT g, {values}, TIMESTAMPTZ '2024-01-01 00:00:00+00' "
                f"+ g * interval '1 second' FROM generate_series(1, {rows}) g")
    cur.execute(f"VACUUM (ANALYZE) tests.{name}")


def build(dsn: str, rows: int) -> dict[str, int]:
    from bronze_assets.lib.source.postgres import connect

    wide = [(f"{c}{i}", t, e) for i in range(len(EVERY) // len(SEVEN) + 1) for c, t, e in SEVEN][: len(EVERY)]
    with connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("CREATE SCHEMA IF NOT EXISTS tests")
        cur.execute("DROP TABLE IF EXISTS tests.every")
        cur.execute("DROP TYPE IF EXISTS bench_mood")
        cur.execute("DROP DOMAIN IF EXISTS bench_posint")
        cur.execute("CREATE TYPE bench_mood AS ENUM ('sad', 'ok', 'happy')")
        cur.execute("CREATE DOMAIN bench_posint AS integer CHECK (VALUE > 0)")
        _create(cur, "seven", SEVEN, rows)
        _create(cur, "seven_wide", wide, rows)
        _create(cur, "every", EVERY, rows)
        sizes = {}
        for name in ("seven", "seven_wide", "every"):
            cur.execute(f"SELECT pg_table_size('tests.{name}')")
            sizes[name] = cur.fetchall()[0][0] / 2**20
    return {name: (width, sizes[name]) for name, width in
            (("seven", len(SEVEN) + 2), ("seven_wide", len(wide) + 2), ("every", len(EVERY) + 2))}


def load(dsn: str, table: str, root: Path) -> float:
    from bronze_assets.lib.delta.merger import BronzeMerger
    from bronze_assets.lib.load import extract_and_stage
    from bronze_assets.lib.source.introspect import discover_contract

    contract = discover_contract(dsn, table, "tests")
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    staged = extract_and_stage(contract, dsn, root)
    try:
        BronzeMerger(contract, root).merge(staged)
    finally:
        staged.cleanup()
    return time.perf_counter() - started


def fetch(dsn: str, sql: str) -> float:
    from bronze_assets.lib.source.postgres import connect

    started = time.perf_counter()
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        for _ in cur.fetch_record_batch():
            pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from bronze_assets.contracts.types import ReadMode
    from bronze_assets.lib.source.embedded import EmbeddedPostgres
    from bronze_assets.lib.source.introspect import discover_contract

    with tempfile.TemporaryDirectory(prefix="bench-types-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        dsn = server.start()
        try:
            t0 = time.perf_counter()
            widths = build(dsn, args.rows)
            print(f"built 3 tables of {args.rows:,} rows in {time.perf_counter() - t0:.1f} s")
            results: dict[str, dict] = {}
            tables = ("seven", "seven_wide", "every")
            # rounds interleave the tables, so load from other processes on the machine hits all
            # three alike; the ratios are the medians of the per-round ratios
            rounds = [{t: load(dsn, t, Path(tmp) / "bronze" / t) for t in tables} for _ in range(args.repeat)]
            for table in tables:
                times = [r[table] for r in rounds]
                width, mb = widths[table]
                results[table] = {"columns": width, "heap_mb": round(mb), "seconds": round(min(times), 2),
                                  "all": [round(t, 2) for t in times]}
                print(f"{table:11s} {width:3d} cols {mb:6.0f} MB  best {min(times):6.2f} s  "
                      f"({args.rows / min(times):,.0f} rows/s, {mb / min(times):5.1f} MB/s)  "
                      f"runs {results[table]['all']}")
            for base in ("seven", "seven_wide"):
                ratio = statistics.median(r["every"] / r[base] for r in rounds)
                results[f"ratio_every_vs_{base}"] = round(ratio, 2)
                print(f"every / {base}: {ratio:.2f}x (median of per-round ratios; best/best "
                      f"{results['every']['seconds'] / results[base]['seconds']:.2f}x)")
            contract = discover_contract(dsn, "every", "tests")
            texty = [c.name for c in contract.columns if c.type.read is not ReadMode.BINARY]
            binary_sql = f"SELECT {', '.join(texty)} FROM tests.every"
            text_sql = f"SELECT {', '.join(f'{c}::text' for c in texty)} FROM tests.every"
            fb = min(fetch(dsn, binary_sql) for _ in range(args.repeat))
            ft = min(fetch(dsn, text_sql) for _ in range(args.repeat))
            results["server_text"] = {"columns": texty, "binary_fetch_s": round(fb, 2),
                                      "text_fetch_s": round(ft, 2)}
            print(f"fetch of the {len(texty)} text/parsed-mode columns: binary {fb:.2f} s, ::text {ft:.2f} s "
                  f"({ft / fb:.2f}x)")
        finally:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
