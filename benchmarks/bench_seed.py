"""Benchmark `bronze seed`: wall time, rows/s and peak RSS per scale on a fresh embedded server.

Usage: python benchmarks/bench_seed.py [--scales 1 10]
Target (issue #2): scale 1 (486,050 rows) in <= 60 s on the 2-core reference machine.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bronze_assets.demo.generator import SeedOptions
from bronze_assets.demo.seed import seed_source
from bronze_assets.lib.source.embedded import EmbeddedPostgres


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    args = parser.parse_args()
    as_of = datetime(2026, 11, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        dsn = server.start()
        print(f"{'scale':>6} {'rows':>11} {'seconds':>8} {'rows/s':>10} {'peak RSS MB':>12}")
        try:
            for scale in args.scales:
                started = time.perf_counter()
                report = seed_source(dsn, SeedOptions(scale=scale, as_of=as_of), reset=True,
                                     progress=False)
                seconds = time.perf_counter() - started
                peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"{scale:>6g} {report.total_rows:>11,} {seconds:>8.1f} "
                      f"{report.total_rows / seconds:>10,.0f} {peak_mb:>12,.0f}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
