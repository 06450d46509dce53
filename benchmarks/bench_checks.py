"""Cost of the asset checks (GX ``quality_score`` above all) on small batches, in fresh processes.

Default: two measurements, each in child processes (so every "cold" number pays the imports):
  import   ``import bronze_assets.definitions`` and building its ``Definitions``;
  quality  ``staged_quality_result`` on a staged batch of ``--rows`` order_details rows (generated
           and staged without a database): the first call in the process (cold), a second one
           on the same contract and one on another contract (orders, same size), as the later
           assets of a tick in the same process.
``--tick``: the hourly tick on an embedded PostgreSQL. Seeds ``--scale``, loads everything once
(without checks), then runs ticks alternately without and with checks, each in a fresh process
after changing every ``--every``-th row of the hourly tables: every hourly job's partition of
"now" materialized in-process, as the schedules request them. Prints wall seconds of the whole
process and of the runs, their ratio, and the seconds spent inside each check function.
Every measurement is repeated ``--repeat`` times; medians are printed.

Usage: python benchmarks/bench_checks.py [--rows 5000] [--repeat 3]
       python benchmarks/bench_checks.py --tick [--scale 1] [--every 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

SCRIPT = Path(__file__).resolve()
AS_OF = datetime(2026, 11, 1, tzinfo=UTC)


def phase_import() -> dict:
    started = time.perf_counter()
    import bronze_assets.definitions as definitions

    imported = time.perf_counter()
    definitions.defs()
    done = time.perf_counter()
    return {"import": imported - started, "defs": done - imported}


def staged_batch(name: str, rows: int):
    import numpy as np
    import pyarrow as pa

    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.demo.generator import InventoryGenerator, SeedOptions
    from bronze_assets.lib.delta.staging import StagedBatch, write_stream
    from bronze_assets.lib.enrich.metadata import BatchContext, bronze_schema, enrich, staged_schema
    from bronze_assets.settings import Settings

    contract = CONTRACTS[name]
    options = SeedOptions(scale=rows / contract.seed_rows, as_of=AS_OF)
    table = InventoryGenerator(options).generate(contract).data
    table = table.append_column("record_hash", pa.array([f"{i:032x}" for i in range(table.num_rows)]))
    if contract.partitioning.delta_column:  # the source query adds the Delta partition column
        table = table.append_column(contract.partitioning.delta_column,
                                    pa.array([AS_OF.date()] * table.num_rows, pa.date32()))
    ctx = BatchContext(str(uuid.uuid4()), AS_OF)
    batches = [enrich(b, contract, ctx) for b in table.to_batches(max_chunksize=50_000)]
    histogram = np.zeros(101, dtype=np.int64)
    for b in batches:
        histogram += np.bincount(b.column("data_quality_score").to_numpy(), minlength=101)
    schema = bronze_schema(contract)
    stage = Settings.from_env().stage_dir
    path, n = write_stream(batches, staged_schema(schema), contract.bronze_table, stage)
    return StagedBatch(contract=contract, ctx=ctx, path=path, schema=schema, rows=n,
                       score_histogram=histogram)


def phase_quality(rows: int, preimport: bool = False) -> dict:
    started = time.perf_counter()
    from bronze_assets.lib.load.engine import LocalEngine
    from bronze_assets.lib.quality import checks

    imported = time.perf_counter()
    gx_import = 0.0
    if preimport:  # split the cold call: GX's import, then the first check with GX loaded
        import great_expectations  # noqa: F401

        gx_import = time.perf_counter() - imported
        imported = time.perf_counter()
    staged = [staged_batch("order_details", rows), staged_batch("order_details", rows),
              staged_batch("orders", rows)]
    staging = time.perf_counter() - imported
    out: dict[str, float] = {"import_checks": imported - started - gx_import, "staging": staging,
                             "gx_import": gx_import}
    results = []
    for label, batch in zip(("cold", "warm_same", "warm_other"), staged, strict=True):
        t = time.perf_counter()
        engine = LocalEngine(None)
        report = engine.quality_report(batch, engine.start_quality(batch))
        results.append(checks.quality_score(batch.score_histogram, report))
        out[label] = time.perf_counter() - t
        batch.cleanup()
    out["total_after_import"] = time.perf_counter() - imported
    meta = {k: v for k, v in results[0].metadata.items() if k.startswith(("violations", "gx_"))}
    out["match"] = bool(meta["gx_counts_match_score"])
    out["counts"] = meta  # type: ignore[assignment]
    return out


HOURLY = ("inventory", "orders", "order_details", "stock_levels")


def phase_seed(scale: float) -> dict:
    from bronze_assets.demo.generator import SeedOptions
    from bronze_assets.demo.seed import seed_source
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings

    dsn = resolve_source_dsn(Settings.from_env())
    report = seed_source(dsn, SeedOptions(scale=scale), reset=True, progress=False)
    return {"rows": report.total_rows}


def phase_initial() -> dict:
    import dagster as dg

    from bronze_assets.definitions import defs
    from bronze_assets.demo.run import materialize_all
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings

    dsn = resolve_source_dsn(Settings.from_env())
    materialize_all(defs(), dsn, dg.DagsterInstance.ephemeral(), with_checks=False)
    return {}


def phase_change(every: int) -> dict:
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.source.postgres import connect, resolve_source_dsn
    from bronze_assets.settings import Settings

    with connect(resolve_source_dsn(Settings.from_env())) as conn, conn.cursor() as cur:
        for name in HOURLY:
            pk = CONTRACTS[name].primary_key[0]
            cur.execute(f"UPDATE tests.{name} SET updated_at = now() WHERE {pk} % {every} = 0")
        conn.commit()
    return {}


def phase_tick(with_checks: bool) -> dict:
    """One hourly tick in this (fresh) process: every hourly job's partition of 'now', as the
    schedules request them; times from process start, the imports and the runs."""
    started = time.perf_counter()
    import dagster as dg

    from bronze_assets.lib.load import lifecycle

    spent: dict[str, float] = {}
    for name in ("quality_score", "key_uniqueness", "referential_integrity"):
        setattr(lifecycle, name, _timed(getattr(lifecycle, name), spent))
    from bronze_assets.definitions import defs
    from bronze_assets.defs.schedules import load_groups, partition_for_tick

    imported = time.perf_counter()
    definitions = defs()
    loaded = time.perf_counter()
    instance = dg.DagsterInstance.ephemeral()
    assets = {a.key.to_user_string(): a for a in definitions.assets or []
              if isinstance(a, dg.AssetsDefinition)}
    now = datetime.now(UTC)
    rows: dict[str, int] = {}
    for group in load_groups():
        if group.cadence.value != "hourly":
            continue
        selected = [assets[k] for k in group.keys]
        selection = dg.AssetSelection.assets(*selected)
        if not with_checks:
            selection = selection.without_checks()
        result = dg.materialize(selected, instance=instance, resources=definitions.resources,
                                partition_key=partition_for_tick(group, now), selection=selection)
        assert result.success
        for event in result.get_asset_materialization_events():
            rows[event.asset_key.to_user_string()] = int(event.materialization.metadata["rows_read"].value)
        if with_checks:
            for e in result.get_asset_check_evaluations():
                if e.check_name == "quality_score":
                    assert e.metadata["gx_counts_match_score"].value is True
    done = time.perf_counter()
    return {"import": imported - started, "defs": loaded - imported, "runs": done - loaded,
            "rows": sum(rows.values()), "per_asset": rows, "checks": spent}


def _timed(fn, spent: dict[str, float]):
    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[fn.__name__] = spent.get(fn.__name__, 0.0) + time.perf_counter() - t

    return timed


def run_phase(args: list[str], env: dict[str, str]) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process"] = time.perf_counter() - started
    return result


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def bench_quality(args: argparse.Namespace, env: dict[str, str]) -> None:
    imports = [run_phase(["--phase", "import"], env) for _ in range(args.repeat)]
    print(f"import bronze_assets.definitions: {median(imports, 'import'):.2f} s, "
          f"defs(): {median(imports, 'defs'):.2f} s  (median of {args.repeat})")
    runs = [run_phase(["--phase", "quality", "--rows", str(args.rows)], env) for _ in range(args.repeat)]
    print(f"staged_quality_result, {args.rows:,} rows (median of {args.repeat}): "
          f"import checks {median(runs, 'import_checks'):.2f} s | "
          f"cold {median(runs, 'cold'):.2f} s | warm same contract {median(runs, 'warm_same'):.3f} s | "
          f"warm other contract {median(runs, 'warm_other'):.3f} s | "
          f"gx_counts_match_score {all(r['match'] for r in runs)}")
    print(f"  counts: {runs[0]['counts']}")
    split = [run_phase(["--phase", "quality", "--rows", str(args.rows), "--preimport"], env)
             for _ in range(args.repeat)]
    print(f"  the cold call split: import great_expectations {median(split, 'gx_import'):.2f} s, "
          f"then the first check {median(split, 'cold'):.2f} s")


def bench_tick(args: argparse.Namespace, env: dict[str, str], tmp: str) -> None:
    from bronze_assets.lib.source.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(Path(tmp) / "data" / "pgdata")
    server.start()  # keep one handle so the server survives between phases
    try:
        run_phase(["--phase", "seed", "--scale", str(args.scale)], env)
        run_phase(["--phase", "initial"], env)
        bronze, snapshot = Path(tmp) / "data" / "bronze", Path(tmp) / "bronze_after_initial_load"
        shutil.copytree(bronze, snapshot)
        results: dict[str, list[dict]] = {"without": [], "with": []}
        for i in range(args.repeat):
            for mode in ("without", "with") if i % 2 == 0 else ("with", "without"):
                # every tick starts from the same bronze tables (each MERGE adds files and versions)
                shutil.rmtree(bronze)
                shutil.copytree(snapshot, bronze)
                run_phase(["--phase", "change", "--every", str(args.every)], env)
                results[mode].append(run_phase(["--phase", "tick"] + (["--checks"] if mode == "with" else []),
                                               env))
    finally:
        server.stop()
    print(f"hourly tick ({', '.join(HOURLY)}), scale {args.scale:g}, "
          f"{median(results['without'], 'rows'):,.0f} rows read, median of {args.repeat}:")
    print(f"{'checks':<8} {'process s':>10} {'import s':>9} {'defs s':>7} {'runs s':>7}")
    for mode, rs in results.items():
        print(f"{mode:<8} {median(rs, 'process'):>10.2f} {median(rs, 'import'):>9.2f} "
              f"{median(rs, 'defs'):>7.2f} {median(rs, 'runs'):>7.2f}")
    for key in ("process", "runs"):
        ratio = median(results["with"], key) / median(results["without"], key)
        print(f"ratio with/without ({key}): {ratio:.2f}")
    checks = results["with"][0]["checks"]
    print("seconds inside each check function (first 'with' tick): "
          + ", ".join(f"{k} {v:.2f}" for k, v in checks.items()))
    per_asset = results["with"][0]["per_asset"]
    print("rows read per asset: " + ", ".join(f"{k} {v:,}" for k, v in per_asset.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["import", "quality", "seed", "initial", "change", "tick"])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tick", action="store_true", help="benchmark the hourly tick (embedded PostgreSQL)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--every", type=int, default=50, help="a tick changes every n-th row")
    parser.add_argument("--checks", action="store_true")
    parser.add_argument("--preimport", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        import logging

        logging.disable(logging.WARNING)
        result = {
            "import": phase_import, "quality": lambda: phase_quality(args.rows, args.preimport),
            "seed": lambda: phase_seed(args.scale), "initial": phase_initial,
            "change": lambda: phase_change(args.every), "tick": lambda: phase_tick(args.checks),
        }[args.phase]()
        print(json.dumps(result))
        return
    import os

    with tempfile.TemporaryDirectory(prefix="bench-checks-") as tmp:
        env = os.environ | {"BRONZE_DATA_DIR": f"{tmp}/data", "BRONZE_STAGE_DIR": f"{tmp}/stage"}
        env.pop("BRONZE_SOURCE_DSN", None)
        env.pop("BRONZE_ROOT", None)
        if args.tick:
            bench_tick(args, env, tmp)
        else:
            bench_quality(args, env)


if __name__ == "__main__":
    main()
