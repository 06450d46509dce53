"""History benchmark (issue #25): the scheduled tick through Dagster with history (SCD type 2) on
against the same tick with history off, on the same source changes, in one run.

On a fresh embedded PostgreSQL seeded at ``--scale``, two bronze roots are loaded from the same
source: ``off`` with every table's ``history`` off, ``on`` with ``history`` on for the tick's
tables (the contracts the Dagster component builds, changed in the phase process: the shipped
tables with history are daily, so the hourly tick gets history on its own tables). Then, per
round, one tick's source changes (``bench_ingest.py``'s: 0.1 % of the rows updated, 0.1 %
inserted, 0.01 % deleted on inventory, order_details and orders) and the tick's schedule jobs on
each root (``bronze_hourly_by_day`` and ``bronze_hourly_by_month``, run as their schedules request
them now: changes only, the open day / month; with every asset check unless ``--no-checks``), the
order of the two roots alternating between rounds. Each tick runs in a process of its own; "cpu
s" is that process's user + system CPU (and its reaped children's: the checks' worker) spent in
the tick, imports excluded; "PG cpu s" the PostgreSQL server's during it.

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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest

SCRIPT = Path(__file__).resolve()
HISTORY_TABLES = ("inventory", "order_details", "orders", "stock_levels")  # the hourly tick's tables


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def with_history(on: bool) -> None:
    """Every contract the Dagster component builds in this process: ``history`` on for the tick's
    tables (``on``) or off for every table."""
    from bronze_assets.defs.bronze_tables import BronzeTables

    built = BronzeTables.contracts

    def contracts(self: BronzeTables) -> list:
        return [replace(c, history=on and c.name in HISTORY_TABLES) for c in built(self)]

    BronzeTables.contracts = contracts  # type: ignore[method-assign]


def phase_initial() -> dict:
    """The first load of the tick's tables through Dagster (no checks)."""
    import dagster as dg

    from bronze_assets.definitions import defs
    from bronze_assets.defs.assets import table_key
    from bronze_assets.demo.run import materialize_all
    from bronze_assets.lib.source.postgres import resolve_source_dsn
    from bronze_assets.settings import Settings

    full = defs()
    tables = {f"bz_{n}" for n in HISTORY_TABLES}
    definitions = dg.Definitions(assets=[a for a in full.assets or [] if isinstance(a, dg.AssetsDefinition)
                                         and table_key(a) in tables], resources=full.resources)
    started = time.perf_counter()
    meta = materialize_all(definitions, resolve_source_dsn(Settings.from_env()),
                           dg.DagsterInstance.ephemeral(), with_checks=False)
    return {"seconds": time.perf_counter() - started, "tables": sorted(meta)}


def _service_cpu() -> float:
    """CPU seconds the checks' validation service (shared by every run) has used so far."""
    from bronze_assets.lib.quality import worker

    pid = worker.service_pid()
    return (worker.cpu_seconds(pid) or 0.0) if pid is not None else 0.0


def phase_tick(checks: bool) -> dict:
    """The hourly schedule jobs, as bench_ingest runs them, measured in CPU (this process's, its
    reaped children's and the validation service's during the tick) and wall."""
    cpu, service = _cpu(), _service_cpu()
    result = bench_ingest.phase_hourly(checks)
    result["service_cpu_seconds"] = _service_cpu() - service
    result["cpu_seconds"] = _cpu() - cpu + result["service_cpu_seconds"]
    return result


def history_versions(root: Path) -> dict[str, int]:
    from deltalake import DeltaTable

    return {p.name: DeltaTable(str(p)).to_pyarrow_dataset().count_rows()
            for p in sorted(root.glob("bz_*_history")) if (p / "_delta_log").is_dir()}


def bench(scale: float, rounds: int, checks: bool) -> dict[str, Any]:
    with bench_ingest.scratch_source("bench-history-") as (tmp, env):
        pgdata = Path(tmp) / "data" / "pgdata"
        roots = {"off": Path(tmp) / "bronze_off", "on": Path(tmp) / "bronze_on"}
        envs = {k: env | {"BRONZE_ROOT": str(r)} for k, r in roots.items()}
        seeded = bench_ingest.run_phase("seed", env, "--scale", str(scale), script=bench_ingest.PHASE_SCRIPT)
        for variant in ("off", "on"):
            bench_ingest.run_phase("initial", envs[variant], "--history", variant, script=SCRIPT)
        state = Path(tmp) / "deleted_keys.json"
        ticks: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for round_ in range(rounds):
            changes = bench_ingest.run_phase("tick", env, "--variant", "uniform", "--tick", str(round_),
                                             "--state", str(state), script=bench_ingest.PHASE_SCRIPT)
            for variant in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                pg = bench_ingest.pg_cpu_seconds(pgdata)
                args = ["--history", variant, *(["--with-checks"] if checks else [])]
                result = bench_ingest.run_phase("hourly", envs[variant], *args, script=SCRIPT)
                after = bench_ingest.pg_cpu_seconds(pgdata)
                result["pg_cpu_seconds"] = None if pg is None or after is None else after - pg
                result["changes"] = changes["changes"]
                result["verified"] = bench_ingest.run_phase("verify", envs[variant], "--state", str(state),
                                                            script=bench_ingest.PHASE_SCRIPT)["ok"]
                ticks[variant].append(result)
                print(f"  round {round_ + 1} history {variant}: {result['cpu_seconds']:.2f} cpu s, "
                      f"{result['wall']:.2f} s", file=sys.stderr, flush=True)
        versions = history_versions(roots["on"])
        bench_ingest.run_phase("stop", envs["on"], script=SCRIPT)  # the checks' service of this scratch root
    return {"scale": scale, "rows": seeded["rows"], "checks": checks, "rounds": rounds, "ticks": ticks,
            "history_versions": versions}


def summary(figures: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant, ticks in figures["ticks"].items():
        out[variant] = {"cpu_seconds": [round(t["cpu_seconds"], 2) for t in ticks],
                        "wall_seconds": [round(t["wall"], 2) for t in ticks],
                        "pg_cpu_seconds": [round(t["pg_cpu_seconds"] or 0, 2) for t in ticks],
                        "verified": all(t["verified"] for t in ticks)}
    for key in ("cpu_seconds", "wall_seconds"):
        on, off = (statistics.median(out[v][key]) for v in ("on", "off"))
        out[f"ratio_{key}"] = round(on / off, 3) if off else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-checks", dest="checks", action="store_false")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--phase", choices=["initial", "hourly", "stop"])
    parser.add_argument("--history", choices=["on", "off"], default="off")
    parser.add_argument("--with-checks", action="store_true", help="(a tick phase) run the checks too")
    args = parser.parse_args()
    if args.phase:
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)
        with_history(args.history == "on")
        if args.phase == "stop":
            from bronze_assets.lib.quality import worker
            from bronze_assets.settings import Settings

            result = {"stopped": worker.stop_service(Settings.from_env())}
        else:
            result = phase_initial() if args.phase == "initial" else phase_tick(args.with_checks)
        print(json.dumps(result, default=str))
        return
    figures = bench(args.scale, args.rounds, args.checks)
    figures["summary"] = summary(figures)
    print(json.dumps(figures["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
