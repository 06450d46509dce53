"""`bronze demo` on a local S3 server (moto) against a local folder, in the same run, and the
object-store requests of an unchanged hourly tick (issue #23 deliverables 3/6; README 'Deploying').

    .venv/bin/python benchmarks/bench_s3.py [--scale 0.1] [--work /tmp/bench_s3]

The S3 server runs as its own process (``python -m moto.server``); every request it serves is one
line of its log, which is how requests are counted. The source is the embedded server under
``--work``, seeded by the first (local) demo; both timed demos load it from scratch.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

BRONZE = str(Path(sys.executable).with_name("bronze"))
STAGES = Path(__file__).with_name("s3_stages.py")
# the S3 server: moto's, its access log dated with time.time() (so requests match traced stages)
SERVER = ("import sys, time, werkzeug.serving as s\n"
          "s.WSGIRequestHandler.log_date_time_string = lambda self: f'{time.time():.4f}'\n"
          "from moto.server import main\n"
          "main(sys.argv[1:])\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request_lines(log: Path) -> list[str]:
    """One line per request (werkzeug's access log, colours removed)."""
    lines = log.read_text().splitlines()
    return [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines if "HTTP/1.1" in line]


def requests(log: Path) -> int:
    return len(request_lines(log))


def kind(line: str) -> str:
    """A request's kind: LIST (of which folder), log/checkpoint reads, data reads, PUTs, HEAD, DELETE."""
    method, path = line.split('"', 2)[1].split()[:2]
    status = line.rsplit('"', 1)[1].split()[0]
    method = f"{method} {status}" if status != "200" else method
    if "list-type=2" in path:
        return f"LIST ({path.split('/')[2] if path.count('/') > 2 else '?'})"
    return f"{method} _delta_log" if "_delta_log" in path else f"{method} data"


def kinds(lines: list[str]) -> str:
    """Requests by kind, most first."""
    counts = Counter(kind(line) for line in lines)
    return ", ".join(f"{k}: {v}" for k, v in counts.most_common(8))


def request_time(line: str) -> float:
    """When the server logged a request (its log's date field holds ``time.time()``: :data:`SERVER`)."""
    return float(line.split("[", 1)[1].split("]", 1)[0])


def stage_table(marks: Path, lines: list[str]) -> str:
    """The S3 demo's requests per traced stage (``s3_stages.py``), with their kinds."""
    from s3_stages import breakdown

    counts = breakdown(marks, [(request_time(line), kind(line)) for line in lines])
    per_stage: Counter[str] = Counter()
    per_kind: dict[str, Counter[str]] = {}
    for key, n in counts.items():
        stage, what = key.split(" | ", 1)
        per_stage[stage] += n
        per_kind.setdefault(stage, Counter())[what] += n
    general: Counter[str] = Counter()
    for stage, n in per_stage.items():
        general[stage.split(" [", 1)[0]] += n
    out = ["requests per stage (all tables):"]
    out += [f"  {n:5}  {stage}" for stage, n in general.most_common()]
    out.append("requests per stage and table (kinds):")
    out += [f"  {n:5}  {stage}: " + ", ".join(f"{k} {v}" for k, v in per_kind[stage].most_common(5))
            for stage, n in per_stage.most_common()]
    return "\n".join(out)


@dataclass(frozen=True)
class Timed:
    wall: float
    cpu: float  # user + sys of the demo and the processes it waited for (not the S3 server's)


def process_cpu(pid: int) -> float:
    """User + sys CPU seconds of a running process (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def demo(env: dict[str, str], scale: float, marks: Path | None = None) -> Timed:
    """``bronze demo`` in a process of its own (traced into ``marks`` when given)."""
    command = [BRONZE] if marks is None else [sys.executable, str(STAGES), str(marks), "--"]
    started, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([*command, "demo", "--scale", str(scale)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Timed(time.perf_counter() - started,
                 done.ru_utime - used.ru_utime + done.ru_stime - used.ru_stime)


TICK = """
import dagster as dg
from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.assets import build_bronze_asset
from bronze_assets.defs.resources import BronzeStorage, PostgresSource, build_resources
from bronze_assets.defs.schedules import CHANGES_ONLY_TAG
import sys
table = sys.argv[1]
asset = build_bronze_asset(CONTRACTS[table])
res = build_resources(PostgresSource(), BronzeStorage())
key = asset.partitions_def.get_last_partition_key() if asset.partitions_def else None
print("READY", flush=True); sys.stdin.readline()
r = dg.materialize([asset], resources=res, partition_key=key, tags={CHANGES_ONLY_TAG: "true"})
assert r.success
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--work", default="/tmp/bench_s3")
    parser.add_argument("--ticks-only", action="store_true",
                        help="skip the timed local-folder demo: only the S3 demo's requests and the ticks")
    parser.add_argument("--stages", action="store_true",
                        help="trace the S3 demo (s3_stages.py) and print its requests per stage")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port, log = free_port(), work / "moto.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-c", SERVER, "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(3)
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                     aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
        base = {**os.environ, "BRONZE_DATA_DIR": str(work / "data"), "DAGSTER_EVENT_BATCH_SIZE": "1000"}
        base.pop("BRONZE_SOURCE_DSN", None)
        demo({**base, "BRONZE_ROOT": str(work / "seed_run")}, args.scale)  # seeds the source
        local = None if args.ticks_only else demo({**base, "BRONZE_ROOT": str(work / "local")}, args.scale)
        s3_env = {**base, "BRONZE_ROOT": "s3://bench/bronze", "AWS_ACCESS_KEY_ID": "bench",
                  "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                  "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true"}
        before, moto_before = requests(log), process_cpu(server.pid)
        marks = work / "stages.marks" if args.stages else None
        on_s3 = demo(s3_env, args.scale, marks)
        demo_requests, moto_cpu = requests(log) - before, process_cpu(server.pid) - moto_before
        compared = "" if local is None else f"local folder {local.wall:.1f} s (CPU {local.cpu:.1f} s), "
        ratio = "" if local is None else \
            f" ({on_s3.wall / local.wall:.2f}x wall, {on_s3.cpu / local.cpu:.2f}x CPU)"
        print(f"bronze demo --scale {args.scale}: {compared}S3 (moto) {on_s3.wall:.1f} s "
              f"(CPU {on_s3.cpu:.1f} s){ratio}, {demo_requests} S3 requests served with "
              f"{moto_cpu:.1f} CPU s of the S3 server's own, load average "
              f"{os.getloadavg()[0]:.1f}")
        if marks is not None:
            print(stage_table(marks, request_lines(log)[before:before + demo_requests]))
        for table, tick_number in [(t, n) for t in ("inventory", "order_details", "orders", "customers")
                                   for n in (1, 2)]:
            tick = subprocess.Popen([sys.executable, "-c", TICK, table], env=s3_env, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert tick.stdout is not None and tick.stdin is not None
            assert tick.stdout.readline().strip() == "READY"
            before = requests(log)
            tick.stdin.write("\n")
            tick.stdin.flush()
            assert tick.wait(timeout=300) == 0
            lines = request_lines(log)[before:]
            (work / f"tick_{table}_{tick_number}.log").write_text("\n".join(lines) + "\n")
            print(f"unchanged scheduled tick {tick_number} of bz_{table}: {len(lines)} S3 requests — "
                  f"{kinds(lines)}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
