"""A real ``dagster-webserver`` on workspace.yaml for tests: free local port, isolated DAGSTER_HOME."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Tests that start a webserver share this xdist group, so `--dist loadgroup` runs them one at a time.
XDIST_GROUP = "dagster_webserver"

# No daemon runs beside the test webserver, so runs launched from the UI start at once instead of
# waiting in the queue; no telemetry and no "join the community" dialog on a closed network.
INSTANCE_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
nux:
  enabled: false
"""
ASSET_NODES_QUERY = ("{ assetNodes { assetKey { path } groupName "
                     "assetChecksOrError { ... on AssetChecks { checks { name } } } } }")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Webserver:
    """A started webserver: its base URL, its GraphQL endpoint and its log file."""

    url: str
    log: Path

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None, timeout: float = 30) -> dict:
        """The ``data`` of one GraphQL request (raises on a transport error or GraphQL errors)."""
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.load(resp)
        if answer.get("errors"):
            raise RuntimeError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def asset_nodes(self) -> list[dict]:
        """Every asset node with its group and check names."""
        return self.graphql(ASSET_NODES_QUERY)["assetNodes"]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@contextmanager
def running_webserver(home: Path, env: Mapping[str, str] | None = None,
                      timeout: float = 180) -> Iterator[Webserver]:
    """``dagster-webserver -w workspace.yaml`` with DAGSTER_HOME=``home``, ready once it lists assets.

    ``env`` is added to the current environment; the server's output goes to ``home/webserver.log``.
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    port = free_port()
    log = home / "webserver.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT, env=os.environ | dict(env or {}) | {"DAGSTER_HOME": str(home)},
            stdout=out, stderr=subprocess.STDOUT,
        )
    web = Webserver(url=f"http://127.0.0.1:{port}", log=log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if web.asset_nodes():
                    break
            except (OSError, RuntimeError, KeyError, TypeError, ValueError):
                pass
            if server.poll() is not None:
                raise RuntimeError(f"dagster-webserver exited ({server.returncode}):\n{web.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"dagster-webserver did not serve the asset graph within {timeout:.0f} s:"
                                   f"\n{web.log_tail()}")
            time.sleep(1)
        yield web
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
