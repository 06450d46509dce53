"""``make ui``'s ``dagster dev`` stops with whoever started it: no webserver, daemon or code server left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_dagster_dev_stops_when_its_parent_is_terminated(tmp_path: Path) -> None:
    port = _free_port()
    env = os.environ | {"DAGSTER_HOME": str(tmp_path / "home"), "BRONZE_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "home").mkdir()
    parent = subprocess.Popen(  # stands in for make: a shell whose child is the dev server
        ["/bin/sh", "-c", f"{sys.executable} -m bronze_assets.devserver -w workspace.yaml -p {port}; true"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("dagster dev did not start listening within 120 s")
        children = psutil.Process(parent.pid).children(recursive=True)
        assert len(children) >= 3, "dagster dev with its webserver and daemon"
        parent.send_signal(signal.SIGTERM)  # only the parent, as `kill <make pid>` does
        _, alive = psutil.wait_procs(children, timeout=60)
        assert not alive, [" ".join(p.cmdline()[:3]) for p in alive]
    finally:  # never leave a server behind, whatever the test saw
        for proc in children if "children" in locals() else []:
            if proc.is_running():
                proc.kill()
        parent.kill()
