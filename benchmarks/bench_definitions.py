"""Definition-load benchmark (issue #22): a tables file of 200 discovered tables ≤ 2 s.

On a scratch embedded PostgreSQL, ``--tables`` tables (default 200) of 12 columns each (integer,
bigint, varchar, text, boolean, numeric, date, timestamp, timestamptz, uuid, jsonb, updated_at)
are created in schema ``bench``; ``bronze init`` (:func:`~bronze_assets.lib.source.introspect.introspect`)
writes one tables file for them, and its overlay is varied as a user would: a third of the tables
incremental with daily partitions, a third monthly on a business date, a third full; quality rules
and a foreign key on each. Then, with no database:

* ``load_s`` — the definition load, imports done: Dagster autoloads the project's defs folder
  holding the file (``dg.load_from_defs_folder``, as ``bronze_assets/definitions.py`` does: its YAML
  loader, the component's schema, 200 contracts, 200 assets with their checks, partitions,
  freshness, schedules) and resolves the repository (``get_repository_def()``); median of
  ``--repeat`` runs, each in a new process, wall clock and CPU time (``load_cpu_s``: what the load
  costs when the machine is busy with other work);
* ``cold_s`` — the same in a fresh interpreter, imports included (``dg check defs``' work).

Usage: python benchmarks/bench_definitions.py [--tables 200] [--repeat 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = ("id integer PRIMARY KEY, code bigint, name varchar(200), note text, active boolean, "
           "amount numeric(12,2), due date, seen timestamp, ref uuid, attrs jsonb, "
           "created timestamptz, updated_at timestamptz")
LIMIT_S = 2.0
PROJECT = """[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "bench_defs"
defs_module = "bench_defs"
"""

LOAD = """
import sys, time
from pathlib import Path
project = Path(sys.argv[1])
started, cpu_started = time.perf_counter(), time.process_time()
import dagster as dg
from bronze_assets.defs.resources import build_resources
import bronze_assets.defs.bronze_tables  # the component type the file names
imported, cpu_imported = time.perf_counter(), time.process_time()
sys.path.insert(0, str(project))
defs = dg.load_from_defs_folder(path_within_project=project)  # what definitions.py does
repo = dg.Definitions.merge(defs, dg.Definitions(resources=build_resources())).get_repository_def()
assert len(repo.asset_graph.get_all_asset_keys()) == int(sys.argv[2]), "not every table loaded"
done, cpu_done = time.perf_counter(), time.process_time()
print(f"{done - started:.3f} {done - imported:.3f} {cpu_done - cpu_imported:.3f}")
"""


def write_file(dsn: str, target: Path, tables: int) -> int:
    from bronze_assets.contracts.tablefile import MonthlySpec, QualitySpec, SourceSpec, render
    from bronze_assets.lib.source.introspect import introspect

    result = introspect(dsn, SourceSpec(schemas=["bench"]), name="bench")
    specs = {}
    for i, (name, spec) in enumerate(result.file.tables.items()):
        overlay = {
            "quality": QualitySpec(required=["name", "code"], ranges=["amount >= 0", "due <= load_date"]),
            "foreign_keys": [f"code -> t{i // 2:03d}.id"] if i else [],
            "pii_columns": ["name"],
        }
        if i % 3 == 1:
            overlay |= {"load_pattern": "incremental", "cadence": "hourly", "partitioning": "daily"}
        elif i % 3 == 2:
            overlay |= {"load_pattern": "batch", "cadence": "daily",
                        "partitioning": MonthlySpec(monthly="due", column="due_month")}
        specs[name] = spec.model_copy(update=overlay)
    file = result.file.model_copy(update={"tables": specs})
    target.parent.mkdir(parents=True)
    target.write_text(render(file, result.notes))
    assert len(file.tables) == tables
    return target.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from bronze_assets.lib.source.embedded import EmbeddedPostgres
    from bronze_assets.lib.source.postgres import connect

    with tempfile.TemporaryDirectory(prefix="bench_defs_") as tmp:
        project = Path(tmp) / "project"
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        dsn = server.start()
        try:
            with connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute("CREATE SCHEMA bench")
                for i in range(args.tables):
                    cur.execute(f"CREATE TABLE bench.t{i:03d} ({COLUMNS})")
            started = time.perf_counter()
            size = write_file(dsn, project / "bench_defs" / "bench" / "defs.yaml", args.tables)
            init_s = time.perf_counter() - started
        finally:
            server.stop()
        (project / "bench_defs" / "__init__.py").write_text("")
        (project / "pyproject.toml").write_text(PROJECT)
        warm: list[float] = []
        cold: list[float] = []
        cpu: list[float] = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, "-c", LOAD, str(project), str(args.tables)],
                                 capture_output=True, text=True, check=True).stdout.split()
            cold.append(float(out[0]))
            warm.append(float(out[1]))
            cpu.append(float(out[2]))
    results = {
        "tables": args.tables, "file_kb": round(size / 1024), "init_s": round(init_s, 2),
        "load_s": round(statistics.median(warm), 3), "cold_s": round(statistics.median(cold), 3),
        "load_cpu_s": round(statistics.median(cpu), 3), "load_runs_s": warm, "limit_s": LIMIT_S,
        "within_limit": statistics.median(warm) <= LIMIT_S,
    }
    print(f"{args.tables} tables, file {results['file_kb']} KiB (bronze init {results['init_s']} s): "
          f"definition load {results['load_s']} s, {results['load_cpu_s']} s CPU (median of {args.repeat}; "
          f"limit {LIMIT_S} s), "
          f"cold process with imports {results['cold_s']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    sys.exit(0 if results["within_limit"] else 1)


if __name__ == "__main__":
    main()
