"""History benchmark (issue #25): scheduled ticks through Dagster with history (SCD type 2) on
against the same ticks with history off, on the same source changes, in one run.

On a fresh embedded PostgreSQL seeded at ``--scale``, three bronze roots are loaded from the same
source (the tables of the hourly tick and of the daily full load of customers and products), each
with the contracts the Dagster component builds, their ``history`` set in the phase process:
  ``off``      history off for every table;
  ``shipped``  history as the shipped contracts set it (customers, products, suppliers, warehouses);
  ``hourly``   history on for the hourly tick's tables only (inventory, order_details, orders,
               stock_levels, whose contracts do not set it): the worst case, every tick writes it.
Then, per round, the hourly tick's source changes (``bench_ingest.py``'s: 0.1 % of the rows updated,
0.1 % inserted, 0.01 % deleted on inventory, order_details and orders) and the two hourly schedule
jobs (``bronze_hourly_by_day``, ``bronze_hourly_by_month``, as their schedules request them now:
changes only, the open day / month) on each root; then the same shares of changes on customers and
products and their daily schedule job (``bronze_daily_full``: a full load of both) on each root;
with every asset check of the jobs unless ``--no-checks`` (the checks' validation service started
and the suites built before the first round), the order of the roots rotating between
rounds. The cases compared, medians of the rounds:
  (a) the hourly tick, ``shipped`` ÷ ``off``: the issue's "hourly tick with history on";
  (b) the daily tick, ``shipped`` ÷ ``off``: the tick whose history MERGEs write versions;
  (c) the hourly tick, ``hourly`` ÷ ``off``: history on the hourly tables.
Each tick runs in a process of its own; "cpu s" is that process's user + system CPU (and its reaped
children's) spent in the tick, imports excluded, plus the checks' validation service's CPU during
the tick; "PG cpu s" is the PostgreSQL server's during it. After each tick bronze is verified
against the source (ACTIVE keys and §2.2 hashes, deleted keys DELETED).

Usage: python benchmarks/bench_history.py [--scale 1] [--rounds 3] [--no-checks] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest

SCRIPT = Path(__file__).resolve()
HOURLY_TABLES = ("inventory", "order_details", "orders", "stock_levels")  # the hourly tick's tables
DAILY_TABLES = ("customers", "products")  # the daily full load's, history on in the shipped contracts
DAILY_JOBS = ("bronze_daily_full",)
VARIANTS = ("off", "shipped", "hourly")
TICKS = {"hourly": (bench_ingest.HOURLY_JOBS, bench_ingest.TICK_TABLES), "daily": (DAILY_JOBS, DAILY_TABLES)}
CASES = {  # case: (tick, variant with history, label)
    "a": ("hourly", "shipped",
          "hourly tick, history as shipped (customers, products, suppliers, warehouses)"),
    "b": ("daily", "shipped", "daily full load of customers and products, history as shipped"),
    "c": ("hourly", "hourly", "hourly tick, history on the hourly tables (inventory, order_details, orders, "
                              "stock_levels)"),
}


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def with_history(variant: str) -> None:
    """Every contract the Dagster component builds in this process: ``history`` as shipped, off for
    every table, or on for the hourly tables only (``variant``)."""
    from bronze_assets.defs.bronze_tables import BronzeTables

    if variant == "shipped":
        return
    built = BronzeTables.contracts

    def contracts(self: BronzeTables) -> list:
        return [replace(c, history=variant == "hourly" and c.name in HOURLY_TABLES) for c in built(self)]

    BronzeTables.contracts = contracts  # type: ignore[method-assign]


def phase_initial() -> dict:
    """The first load of the tables the ticks load, through Dagster (no checks)."""
    import dagster as dg

    from bronze_assets.definitions import defs
    from bronze_assets.defs.assets import table_key
    from bronze_assets.demo.run import materialize_all
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings

    full = defs()
    tables = {f"bz_{n}" for n in (*HOURLY_TABLES, *DAILY_TABLES)}
    definitions = dg.Definitions(assets=[a for a in full.assets or [] if isinstance(a, dg.AssetsDefinition)
                                         and table_key(a) in tables], resources=full.resources)
    started = time.perf_counter()
    meta = materialize_all(definitions, resolve_source_dsn(Settings.from_env()),
                           dg.DagsterInstance.ephemeral(), with_checks=False)
    return {"seconds": time.perf_counter() - started, "tables": sorted(meta)}


def phase_tick(checks: bool, jobs: list[str]) -> dict:
    """The schedule jobs ``jobs``, as bench_ingest runs them, measured in CPU (this process's, its
    reaped children's and the validation service's during the tick) and wall."""
    from bronze_assets.settings import Settings

    cpu = _cpu()
    with bench_ingest.validation_service(Settings.from_env(), checks) as service:
        result = bench_ingest.phase_hourly(checks, jobs)
    result["own_cpu_seconds"] = _cpu() - cpu
    result["service_cpu_seconds"] = service["cpu_seconds"]
    result["cpu_seconds"] = result["own_cpu_seconds"] + service["cpu_seconds"]
    return result


def phase_warm() -> dict:
    """Start the checks' validation service and build the suites of the ticks' tables, so no
    timed tick pays for that (the first one would)."""
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.lib.quality import worker
    from bronze_assets.lib.quality.validate import docs_dir
    from bronze_assets.settings import Settings

    settings = Settings.from_env()
    worker.start(settings)
    today = datetime.now(UTC).date()
    for contract in (CONTRACTS[name] for name in (*HOURLY_TABLES, *DAILY_TABLES)):
        worker.warm(settings, contract, today, docs_dir(contract, settings.data_dir)).result()
    return {"service_pid": worker.service_pid()}


def history_versions(root: Path) -> dict[str, int]:
    from deltalake import DeltaTable

    return {p.name: DeltaTable(str(p)).to_pyarrow_dataset().count_rows()
            for p in sorted(root.glob("bz_*_history")) if (p / "_delta_log").is_dir()}


def bench(scale: float, rounds: int, checks: bool) -> dict[str, Any]:
    with bench_ingest.scratch_source("bench-history-") as (tmp, env):
        pgdata = Path(tmp) / "data" / "pgdata"
        envs = {v: env | {"BRONZE_ROOT": str(Path(tmp) / f"bronze_{v}")} for v in VARIANTS}
        seeded = bench_ingest.run_phase("seed", env, "--scale", str(scale), script=bench_ingest.PHASE_SCRIPT)
        for variant in VARIANTS:
            bench_ingest.run_phase("initial", envs[variant], "--history", variant, script=SCRIPT)
        if checks:
            bench_ingest.run_phase("warm", envs["off"], script=SCRIPT)
        ticks: dict[str, dict[str, list[dict[str, Any]]]] = {t: {v: [] for v in VARIANTS} for t in TICKS}
        for round_ in range(rounds):
            order = VARIANTS[round_ % 3:] + VARIANTS[:round_ % 3]
            for tick, (jobs, tables) in TICKS.items():
                state = str(Path(tmp) / f"deleted_keys_{tick}.json")
                changes = bench_ingest.run_phase("tick", env, "--variant", "uniform", "--tick", str(round_),
                                                 "--state", state, "--tables", *tables,
                                                 script=bench_ingest.PHASE_SCRIPT)
                for variant in order:
                    pg = bench_ingest.pg_cpu_seconds(pgdata)
                    args = ["--history", variant, "--jobs", *jobs, *(["--with-checks"] if checks else [])]
                    result = bench_ingest.run_phase("tick", envs[variant], *args, script=SCRIPT)
                    after = bench_ingest.pg_cpu_seconds(pgdata)
                    result["pg_cpu_seconds"] = None if pg is None or after is None else after - pg
                    result["changes"] = changes["changes"]
                    result["verified"] = bench_ingest.run_phase(
                        "verify", envs[variant], "--state", state, "--tables", *tables,
                        script=bench_ingest.PHASE_SCRIPT)["ok"]
                    ticks[tick][variant].append(result)
                    print(f"  round {round_ + 1} {tick} tick, history {variant}: "
                          f"{result['cpu_seconds']:.2f} cpu s (service {result['service_cpu_seconds']:.2f}), "
                          f"{result['wall']:.2f} s, verified {result['verified']}",
                          file=sys.stderr, flush=True)
        versions = {v: history_versions(Path(envs[v]["BRONZE_ROOT"])) for v in VARIANTS}
        bench_ingest.run_phase("stop", envs["off"], script=SCRIPT)  # this scratch source's checks' service
    return {"scale": scale, "rows": seeded["rows"], "checks": checks, "rounds": rounds, "ticks": ticks,
            "history_versions": versions}


def _figures(ticks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"cpu_seconds": [round(t["cpu_seconds"], 2) for t in ticks],
            "own_cpu_seconds": [round(t["own_cpu_seconds"], 2) for t in ticks],
            "service_cpu_seconds": [round(t["service_cpu_seconds"], 2) for t in ticks],
            "wall_seconds": [round(t["wall"], 2) for t in ticks],
            "pg_cpu_seconds": [round(t["pg_cpu_seconds"] or 0, 2) for t in ticks],
            "verified": all(t["verified"] for t in ticks)}


def summary(figures: dict[str, Any]) -> dict[str, Any]:
    """Per case (:data:`CASES`), the figures of its two variants and the ratios of their medians."""
    out: dict[str, Any] = {}
    for case, (tick, variant, label) in CASES.items():
        on, off = _figures(figures["ticks"][tick][variant]), _figures(figures["ticks"][tick]["off"])
        entry: dict[str, Any] = {"label": label, "history_on": on, "history_off": off}
        for key in ("cpu_seconds", "own_cpu_seconds", "wall_seconds"):
            a, b = statistics.median(on[key]), statistics.median(off[key])
            entry[f"ratio_{key}"] = round(a / b, 3) if b else None
        out[case] = entry
    out["history_versions"] = figures["history_versions"]
    return out


def report(figures: dict[str, Any], out: dict[str, Any]) -> None:
    print(f"\nscale {figures['scale']:g} ({figures['rows']:,} rows), {figures['rounds']} rounds, "
          f"checks {'on' if figures['checks'] else 'off'}; cpu s = the tick's process + the checks' service")
    print("| case | cpu s, history off | cpu s, history on | on ÷ off, cpu (medians) "
          "| without the service | wall |")
    print("|---|---|---|---|---|---|")
    for case in CASES:
        e = out[case]
        print(f"| ({case}) {e['label']} | {', '.join(f'{x:.1f}' for x in e['history_off']['cpu_seconds'])} "
              f"| {', '.join(f'{x:.1f}' for x in e['history_on']['cpu_seconds'])} "
              f"| **{e['ratio_cpu_seconds']}** "
              f"| {e['ratio_own_cpu_seconds']} | {e['ratio_wall_seconds']} |")
    print(f"history versions: {out['history_versions']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-checks", dest="checks", action="store_false")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--phase", choices=["initial", "warm", "tick", "stop"], help=argparse.SUPPRESS)
    parser.add_argument("--history", choices=VARIANTS, default="off", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", nargs="+", default=list(bench_ingest.HOURLY_JOBS), help=argparse.SUPPRESS)
    parser.add_argument("--with-checks", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)
        with_history(args.history)
        if args.phase == "stop":
            from bronze_assets.lib.quality import worker
            from bronze_assets.settings import Settings

            result = {"stopped": worker.stop_service(Settings.from_env())}
        else:
            phases = {"initial": phase_initial, "warm": phase_warm,
                      "tick": lambda: phase_tick(args.with_checks, args.jobs)}
            result = phases[args.phase]()
        print(json.dumps(result, default=str))
        return
    figures = bench(args.scale, args.rounds, args.checks)
    figures["summary"] = summary(figures)
    report(figures, figures["summary"])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
