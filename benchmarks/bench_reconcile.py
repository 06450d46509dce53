"""Reconciliation benchmark (issue #25): ``bronze reconcile`` of all ten tables with nothing wrong,
against the unchanged re-load of the same run, and the source's CPU against a raw COPY.

On a fresh embedded PostgreSQL seeded at the given scale (go-live today, as bench_ingest): raw
binary COPY of the ten tables (psql → /dev/null; again at the end: "PG cpu x COPY" divides by
their median), the initial load through Dagster (no checks),
then ``rounds`` times: an unchanged re-load and a *cold* reconcile of the ten tables (one source
snapshot, the local engine's DataFusion side; the incremental state deleted first, as a first run
sees it), another unchanged re-load and a *warm* reconcile (the state of the cold one): each must
find nothing. Then the floors of hashing in SQL,
one pass over the ten tables each: the §2.2 hash of every row alone (no buckets, no checksums), and
md5 over each row's own text (``md5(t::text)``: one rendering of the row, no lengths); and over the
integer-keyed tables on one connection, the first-level §2.2 bucket pass against the row-version
fingerprints a warm run computes instead (reconcile/memo.py). Each phase
runs in a process of its own; "wall s" is in-process after imports, "cpu s" the phase process's
user+sys (imports included), "PG cpu s" the PostgreSQL server's CPU during the phase, read from
``/proc``.

Usage: python benchmarks/bench_reconcile.py [--scale 10] [--rounds 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest  # the seed, copy and load phases, the phase runner, the scratch source

SCRIPT = Path(__file__).resolve()


def phase_reconcile(cold: bool = False) -> dict[str, Any]:
    """A reconcile of the ten tables; ``cold``: without the state of the runs before (the first run)."""
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.delta.storage import Storage
    from bronze_assets.lib.reconcile import reconcile
    from bronze_assets.lib.reconcile.memo import state_path
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings

    settings = Settings.from_env()
    dsn, storage = resolve_source_dsn(settings), Storage(settings.bronze_root, settings=settings)
    if cold:
        for contract in CONTRACTS.values():
            storage.delete_file(state_path(contract.bronze_table))
    started = time.perf_counter()
    run = reconcile(list(CONTRACTS.values()), dsn, storage)
    seconds = time.perf_counter() - started
    if not run.healthy or any(t.mismatches for t in run.tables):
        raise SystemExit(f"reconcile found differences in an unchanged bronze: {run.as_json()}")
    return {"seconds": seconds, "rows": sum(t.source_rows for t in run.tables),
            "buckets": sum(t.buckets_compared for t in run.tables),
            "buckets_hashed": sum(t.buckets_hashed for t in run.tables),
            "buckets_from_state": sum(t.buckets_from_state for t in run.tables),
            "tables": {t.table: round(t.seconds, 2) for t in run.tables}}


FLOORS = {"hash": "the §2.2 hash alone", "md5row": "md5(row::text)",
          "buckets": "first-level §2.2 bucket pass, integer-keyed tables",
          "prints": "first-level row-version fingerprints, integer-keyed tables"}


def phase_floor(kind: str) -> dict[str, Any]:
    """One pass over the ten tables computing only the hash of ``kind`` (see :data:`FLOORS`); the
    bucket passes on one connection, over the tables the incremental reconcile serves."""
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.reconcile.keys import by_integer_key
    from bronze_assets.lib.reconcile.source_side import SourceSnapshot
    from bronze_assets.lib.source.ddl import qualified
    from bronze_assets.lib.source.postgres import connect, resolve_source_dsn
    from bronze_assets.lib.source.pushdown import hash_sql
    from bronze_assets.settings import Settings

    dsn = resolve_source_dsn(Settings.from_env())
    started = time.perf_counter()
    if kind in ("buckets", "prints"):
        with SourceSnapshot(dsn) as snapshot:
            for contract in (c for c in CONTRACTS.values() if by_integer_key(c)):
                source = snapshot.table(contract)
                lo, hi, rows = source.key_range()
                if lo is None or hi is None:
                    continue
                width = max(1, -(-(hi - lo + 1) // max(1, min(16_384, -(-rows // 1024)))))
                (source.buckets if kind == "buckets" else source.fingerprints)(lo, hi, width)
        return {"seconds": time.perf_counter() - started}
    with connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        for contract in CONTRACTS.values():
            expr = hash_sql(contract) if kind == "hash" else "md5(t::text)"
            table = qualified(contract.source_schema, contract.source_name)
            cur.execute(f"SELECT count({expr}) FROM {table} t")
            cur.fetchall()
    return {"seconds": time.perf_counter() - started}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench(scale: float, rounds: int) -> dict[str, Any]:
    with bench_ingest.scratch_source("bench-reconcile-") as (tmp, env):
        root = Path(tmp) / "bronze"
        env = env | {"BRONZE_ROOT": str(root)}
        pgdata = Path(tmp) / "data" / "pgdata"
        results: dict[str, Any] = {"load": os.getloadavg()}

        def phase(label: str, name: str, script: Path = bench_ingest.PHASE_SCRIPT) -> dict[str, Any]:
            pg, cpu = bench_ingest.pg_cpu_seconds(pgdata), _children_cpu()
            result = bench_ingest.run_phase(name, env, script=script)
            after = bench_ingest.pg_cpu_seconds(pgdata)
            result["pg_cpu_seconds"] = None if pg is None or after is None else after - pg
            result["cpu_seconds"] = _children_cpu() - cpu
            results.setdefault(label, []).append(result)
            print(f"  {label}: {result['wall']:.1f} s, cpu {result['cpu_seconds']:.1f} s, "
                  f"PG cpu {result['pg_cpu_seconds']:.2f} s", file=sys.stderr, flush=True)
            return result

        bench_ingest.run_phase("seed", env, "--scale", str(scale), script=bench_ingest.PHASE_SCRIPT)
        phase("copy", "copy")
        phase("initial", "load")
        for _ in range(rounds):
            phase("unchanged", "load")
            phase("cold", "reconcile-cold", script=SCRIPT)  # no state: a full pass, which writes it
            phase("unchanged", "load")
            phase("warm", "reconcile", script=SCRIPT)  # the state of the run before it
        for kind in FLOORS:
            phase(kind, f"floor-{kind}", script=SCRIPT)
        phase("copy", "copy")  # again, pages warm like the others' (the first also sets hint bits)
        results["load_after"] = os.getloadavg()
        return results


def report(scale: float, results: dict[str, Any]) -> None:
    copy_cpu = statistics.median(r["pg_cpu_seconds"] for r in results["copy"])
    print(f"\nscale {scale:g}; load average before {results['load'][0]:.1f}, "
          f"after {results['load_after'][0]:.1f} (2 cores)")
    print(f"{'phase':<10} {'wall s':>14} {'cpu s':>14} {'PG cpu s':>14} {'PG cpu x COPY':>14} {'RSS MB':>8}")
    for label in ("copy", "initial", "unchanged", "cold", "warm", *FLOORS):
        runs = results[label]

        def cells(key: str, runs: list[dict[str, Any]] = runs) -> str:
            values = [r[key] for r in runs if r.get(key) is not None]
            return "/".join(f"{v:.1f}" for v in values) or "-"

        ratio = "/".join(f"{r['pg_cpu_seconds'] / copy_cpu:.2f}" for r in runs)
        rss = max(r["rss_mb"] for r in runs)
        print(f"{label:<10} {cells('wall'):>14} {cells('cpu_seconds'):>14} {cells('pg_cpu_seconds'):>14} "
              f"{ratio:>14} {rss:>8.0f}")
    same = statistics.median(r["wall"] for r in results["unchanged"])
    same_cpu = statistics.median(r["cpu_seconds"] + r["pg_cpu_seconds"] for r in results["unchanged"])
    for label in ("cold", "warm"):
        runs = results[label]
        wall = "/".join(f"{r['wall'] / same:.2f}" for r in runs)
        cpu = "/".join(f"{(r['cpu_seconds'] + r['pg_cpu_seconds']) / same_cpu:.2f}" for r in runs)
        hashed = "/".join(f"{r['buckets_hashed']}+{r['buckets_from_state']}" for r in runs)
        print(f"{label} reconcile / unchanged re-load (median): wall {wall}, client + PG cpu {cpu}; "
              f"first-level buckets hashed + from state {hashed}")
        tables = runs[-1]["tables"].items()
        print(f"  per table (s, last {label}): " + ", ".join(f"{t} {s}" for t, s in tables))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--phase", choices=["reconcile", "reconcile-cold", *(f"floor-{k}" for k in FLOORS)])
    args = parser.parse_args()
    if args.phase:
        result = phase_reconcile(args.phase == "reconcile-cold") if args.phase.startswith("reconcile") \
            else phase_floor(args.phase.split("-", 1)[1])
        result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    results = bench(args.scale, args.rounds)
    report(args.scale, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
