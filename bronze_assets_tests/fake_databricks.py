"""A stand-in for a Databricks workspace: the one thing the tests mock, as no workspace is
reachable from here.

Only the two APIs the Pipes clients call are faked, over the local machine:
- the Files API on a Unity Catalog volume: ``/Volumes/...`` paths map to a local folder, as the
  volume's FUSE mount does on a cluster;
- the Jobs API: ``submit`` checks the task spec and then *runs the task for real* (the wheel
  task's console-script entry point, with its parameters, and a job cluster's
  ``spark_env_vars``) in a subprocess on local Spark; ``get_run`` reports its state.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from databricks.sdk.service import jobs

from bronze_assets_tests.warm_spark import WarmSparkPipes, gateway_env

FILES, DIRECTORIES = "/api/2.0/fs/files", "/api/2.0/fs/directories"


class FakeApiClient:
    """The Files API (``/api/2.0/fs/...``) on a local folder."""

    def __init__(self, volumes: Path) -> None:
        self.volumes = volumes

    def local(self, path: str) -> Path:
        path = urllib.parse.unquote(path)
        if not path.startswith(str(self.volumes)):
            raise PermissionError(f"{path} is not in the fake workspace's volumes ({self.volumes})")
        return Path(path)

    def do(self, method: str, path: str, query: dict | None = None, headers: dict | None = None,
           data: Any = None, raw: bool = False, response_headers: list | None = None, **_: Any) -> Any:
        if path.startswith(DIRECTORIES):
            target = self.local(path.removeprefix(DIRECTORIES))
            if method == "PUT":
                target.mkdir(parents=True, exist_ok=True)
                return {}
            if method == "DELETE":
                target.rmdir()
                return {}
            if method == "GET":
                if not target.is_dir():
                    raise FileNotFoundError(str(target))
                return {"contents": [{"path": str(p), "name": p.name, "is_directory": p.is_dir()}
                                     for p in sorted(target.iterdir())]}
        if path.startswith(FILES):
            target = self.local(path.removeprefix(FILES))
            if method == "PUT":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data.read() if hasattr(data, "read") else data)
                return {}
            if method == "DELETE":
                target.unlink()
                return {}
            if method == "GET":
                if not target.is_file():
                    raise FileNotFoundError(str(target))
                data = target.read_bytes()
                return {"contents": io.BytesIO(data), "content-length": str(len(data)),
                        "content-type": "application/octet-stream", "last-modified": "now"}
        raise NotImplementedError(f"fake workspace: {method} {path}")


@dataclass
class FakeRun:
    process: subprocess.Popen
    task: jobs.SubmitTask
    submit_args: dict[str, Any]
    run_page_url: str = "https://fake.cloud.databricks.com/#job/1/run/1"

    @property
    def state(self) -> jobs.RunState:
        code = self.process.poll()
        if code is None:
            return jobs.RunState(life_cycle_state=jobs.RunLifeCycleState.RUNNING)
        result = jobs.RunResultState.SUCCESS if code == 0 else jobs.RunResultState.FAILED
        return jobs.RunState(life_cycle_state=jobs.RunLifeCycleState.TERMINATED, result_state=result,
                             state_message=f"exit code {code}")


@dataclass
class FakeJobs:
    """``jobs.submit`` checks the spec a wheel task needs, then runs it here."""

    runs: dict[int, FakeRun] = field(default_factory=dict)
    log_dir: Path | None = None

    def submit(self, *, tasks: list[jobs.SubmitTask], **submit_args: Any) -> Any:
        (task,) = tasks
        wheel_task = task.python_wheel_task
        assert wheel_task is not None, "the bronze task is a wheel task"
        (entry,) = [e for e in entry_points(group="console_scripts") if e.name == wheel_task.entry_point]
        assert entry.dist is not None and entry.dist.name.replace("-", "_") == wheel_task.package_name
        if task.new_cluster is not None:
            assert task.libraries and task.libraries[0].whl, "a job cluster installs the wheel as a library"
            env = {**os.environ, **(task.new_cluster.spark_env_vars or {})}
        else:
            assert task.environment_key, "a serverless task names its environment"
            (environment,) = submit_args["environments"]
            assert environment.environment_key == task.environment_key
            assert environment.spec is not None and environment.spec.dependencies
            env = dict(os.environ)
        module, func = entry.value.split(":")
        # on the test worker's JVM when it serves one (warm_spark.py), as the subprocess client does
        code = (f"import sys; from bronze_assets_tests.warm_spark import attach; attach(); "
                f"from {module} import {func}; sys.exit({func}())")
        env |= gateway_env()
        run_id = len(self.runs) + 1
        log = Path(self.log_dir or os.devnull)
        if self.log_dir:
            log = self.log_dir / f"run-{run_id}.log"
        with log.open("wb") as out:  # the child keeps its own handle
            process = subprocess.Popen([sys.executable, "-c", code, *(wheel_task.parameters or [])], env=env,
                                       stdout=out, stderr=subprocess.STDOUT)
        self.runs[run_id] = FakeRun(process, task, submit_args)

        class _Waiter:
            def bind(self) -> dict[str, int]:
                return {"run_id": run_id}

        return _Waiter()

    def get_run(self, run_id: int) -> FakeRun:
        return self.runs[run_id]

    def cancel_run(self, run_id: int) -> None:
        self.runs[run_id].process.kill()


class FakeWorkspaceClient:
    """What ``PipesDatabricksClient`` / ``PipesDatabricksServerlessClient`` use of a WorkspaceClient."""

    def __init__(self, volumes: Path, log_dir: Path | None = None) -> None:
        self.api_client = FakeApiClient(volumes)
        self.jobs = FakeJobs(log_dir=log_dir)


_WORKSPACES: dict[tuple[str, str | None], FakeWorkspaceClient] = {}


class FakeWorkspacePipes(WarmSparkPipes):
    """The ``pipes`` resource with the fake workspace in place of a Databricks one (tests only:
    no workspace is reachable here). One workspace per ``volumes`` folder, so a test reads the
    runs the asset submitted from :meth:`workspace` afterwards."""

    volumes: str
    log_dir: str | None = None

    def workspace(self) -> FakeWorkspaceClient:
        key = (self.volumes, self.log_dir)
        if key not in _WORKSPACES:
            log_dir = Path(self.log_dir) if self.log_dir else None
            _WORKSPACES[key] = FakeWorkspaceClient(Path(self.volumes), log_dir)
        return _WORKSPACES[key]
