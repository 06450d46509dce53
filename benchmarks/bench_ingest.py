"""Ingestion benchmark (issue #3): raw COPY vs bronze loads through Dagster, in one run.

For each scale, on a fresh embedded PostgreSQL and an empty bronze root:
  (a) raw ``COPY … TO STDOUT (FORMAT binary)`` of the ten tables through psql to /dev/null,
  (b) the initial bronze load of all ten tables through Dagster (in-process executor),
  (c) an unchanged re-load, (d) a re-load after 1 % of the rows of every table changed;
  (b +checks) the initial load again into a second empty root with every asset check
  (schema gate, GX quality suite, key uniqueness, referential integrity); (b, c, d) run without.
Each phase runs in a child process so its peak RSS is its own; times exclude interpreter
start-up and imports. Dagster materializes a
partition range in one run but records one materialization event per partition; the
``data s`` column is the part spent reading, enriching and merging (sum over assets).

Usage: python benchmarks/bench_ingest.py [--scales 1 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASE_SCRIPT = Path(__file__).resolve()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_seed(scale: float) -> dict:
    from bronze_assets.demo.generator import SeedOptions
    from bronze_assets.demo.seed import seed_source
    from bronze_assets.lib.source.postgres import resolve_source_dsn

    report = seed_source(resolve_source_dsn(), SeedOptions(scale=scale), reset=True, progress=False)
    return {"rows": report.total_rows}


def phase_copy() -> dict:
    from pgserver._commands import POSTGRES_BIN_PATH

    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.source.postgres import resolve_source_dsn

    dsn = resolve_source_dsn()
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        for name in CONTRACTS:
            subprocess.run([str(POSTGRES_BIN_PATH / "psql"), dsn, "-c",
                            f"COPY tests.{name} TO STDOUT (FORMAT binary)"], stdout=sink, check=True)
    return {"seconds": time.perf_counter() - started}


def phase_load(with_checks: bool = False) -> dict:
    import dagster as dg

    from bronze_assets.definitions import defs
    from bronze_assets.demo.run import materialize_all
    from bronze_assets.lib.source.postgres import resolve_source_dsn

    dsn = resolve_source_dsn()
    definitions = defs()
    started = time.perf_counter()
    meta = materialize_all(definitions, dsn, dg.DagsterInstance.ephemeral(), with_checks=with_checks)
    return {
        "seconds": time.perf_counter() - started,
        "rows": sum(int(m["rows_read"]) for m in meta.values()),
        "data_seconds": sum(float(m["duration_seconds"]) for m in meta.values()),
        "written": sum(int(m["rows_inserted"]) + int(m["rows_updated"]) for m in meta.values()),
    }


def phase_change() -> dict:
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.source.postgres import connect, resolve_source_dsn

    with connect(resolve_source_dsn()) as conn, conn.cursor() as cur:
        for name, c in CONTRACTS.items():
            cur.execute(f"UPDATE tests.{name} SET updated_at = now() WHERE {c.primary_key[0]} % 100 = 0")
        conn.commit()
    return {}


PHASES = {
    "seed": phase_seed, "copy": phase_copy, "load": phase_load, "change": phase_change,
    "load_checks": lambda: phase_load(with_checks=True),
}


def run_phase(name: str, env: dict[str, str], *args: str) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(PHASE_SCRIPT), "--phase", name, *args],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"phase {name} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall"] = result.get("seconds", time.perf_counter() - started)
    return result


def bench(scale: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        env = os.environ | {"BRONZE_DATA_DIR": f"{tmp}/data", "BRONZE_STAGE_DIR": f"{tmp}/stage"}
        env.pop("BRONZE_SOURCE_DSN", None)
        env.pop("BRONZE_ROOT", None)
        from bronze_assets.lib.source.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(Path(tmp) / "data" / "pgdata")
        server.start()  # keep one handle so the server survives between phases
        try:
            seeded = run_phase("seed", env, "--scale", str(scale))
            results = {
                "a copy": run_phase("copy", env),
                "b initial": run_phase("load", env),
                "b +checks": run_phase("load_checks", env | {"BRONZE_ROOT": f"{tmp}/bronze_checks"}),
                "c unchanged": run_phase("load", env),
            }
            run_phase("change", env)
            results["d 1% changed"] = run_phase("load", env)
        finally:
            server.stop()
    a = results["a copy"]["wall"]
    rows = seeded["rows"]
    print(f"\nscale {scale:g}: {rows:,} source rows")
    print(f"{'phase':<14} {'wall s':>8} {'rows/s':>11} {'peak RSS MB':>12} {'x (a)':>7} "
          f"{'data s':>7} {'written':>9}")
    for name, r in results.items():
        print(f"{name:<14} {r['wall']:>8.2f} {rows / r['wall']:>11,.0f} {r['rss_mb']:>12,.0f} "
              f"{r['wall'] / a:>7.2f} {r.get('data_seconds', 0):>7.2f} {r.get('written', 0):>9,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--phase", choices=sorted(PHASES))
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    if args.phase:
        import logging

        logging.disable(logging.WARNING)
        result = PHASES[args.phase](args.scale) if args.phase == "seed" else PHASES[args.phase]()
        result["rss_mb"] = _rss_mb()
        print(json.dumps(result))
        return
    for scale in args.scales:
        bench(scale)


if __name__ == "__main__":
    main()
