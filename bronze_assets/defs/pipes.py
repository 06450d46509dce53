"""The Pipes client resource: how the Spark job is started and watched (Dagster Pipes).

Which client runs a load follows the engine resource's configuration for its table:

- ``spark`` (on this machine): ``PipesSubprocessClient`` runs ``python -m bronze_assets.spark_job``
  on local Spark;
- ``databricks`` (production): dagster-databricks' Pipes clients submit the job to the workspace
  that :meth:`BronzePipes.workspace` returns, context and messages through a Unity Catalog volume.

The resource is the one seam to the workspace: the tests replace it with one whose workspace is
a local stand-in (``bronze_assets_tests/fake_databricks.FakeWorkspacePipes``), since no Databricks
workspace is reachable there; everything else (the task spec, dagster-databricks' own clients,
context injector and message reader, the job) runs unchanged.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
import psutil

from bronze_assets.lib.stop import stop_requested

STOP_POLL_SECONDS = 0.1


class StoppableSubprocessClient(dg.PipesSubprocessClient):
    """Dagster's subprocess client whose subprocess also gets a SIGINT when this process is asked
    to stop (:mod:`bronze_assets.lib.stop`): Dagster's client forwards a run's interrupt only when
    its wait is interrupted, which happens in a process's main thread, never on a step thread of
    the threaded executor (the load jobs'), where the job would otherwise run on after its run."""

    def run(self, *, command: str | Sequence[str], **kwargs: Any) -> dg.PipesClientCompletedInvocation:  # type: ignore[override]
        argv = [command] if isinstance(command, str) else list(command)
        with _interrupted_on_stop(argv):
            return super().run(command=command, **kwargs)


@contextlib.contextmanager
def _interrupted_on_stop(argv: list[str]) -> Iterator[None]:
    """While in this block, a stop request sends SIGINT to this process's children running
    ``argv`` (every load is asked to stop: the children of two steps alike)."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(STOP_POLL_SECONDS):
            if stop_requested():
                for child in psutil.Process().children():
                    with contextlib.suppress(psutil.Error):
                        if child.cmdline() == argv:
                            child.send_signal(signal.SIGINT)
                return

    watcher = threading.Thread(target=watch, name="pipes-stop", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _stoppable(client_type: type[Any]) -> type[Any]:
    """``client_type`` (a dagster-databricks Pipes client) whose poll of its Databricks run takes a
    stop request (:mod:`bronze_assets.lib.stop`) for the run's interrupt: it cancels the Databricks
    run, as it does when its wait is interrupted in a process's main thread, which a step thread
    of the load jobs never is."""

    class StoppableDatabricksClient(client_type):  # type: ignore[misc, valid-type]
        _stop_seen = False

        def _get_run_state(self, run_id: int) -> Any:
            if stop_requested() and not self._stop_seen:
                self._stop_seen = True  # once: its cancellation then polls the run again
                raise dg.DagsterExecutionInterruptedError
            return super()._get_run_state(run_id)

    return StoppableDatabricksClient


class BronzePipes(dg.ConfigurableResource):
    """The Dagster Pipes clients of the Spark and Databricks engines."""

    def subprocess_client(self) -> dg.PipesSubprocessClient:
        """The client of the ``spark`` engine: the job in a subprocess on this machine, stopped
        with the run (:class:`StoppableSubprocessClient`)."""
        return StoppableSubprocessClient()

    def spark_job_command(self) -> list[str]:
        """The command :meth:`subprocess_client` runs: the Spark job with this interpreter."""
        return [sys.executable, "-m", "bronze_assets.spark_job"]

    def workspace(self) -> Any:
        """The Databricks workspace the ``databricks`` engine submits to: a ``WorkspaceClient``
        configured the SDK's way (``DATABRICKS_HOST`` / ``DATABRICKS_TOKEN`` or a config profile)."""
        from databricks.sdk import WorkspaceClient

        return WorkspaceClient()

    def databricks_client(self, volume: str, *, serverless: bool) -> dg.PipesClient:
        """The client of the ``databricks`` engine: a serverless task, or a task on a new job
        cluster; Pipes context and messages in the Unity Catalog ``volume``."""
        from dagster_databricks.pipes import (  # the volume classes are not re-exported by the package
            PipesDatabricksClient,
            PipesDatabricksServerlessClient,
            PipesUnityCatalogVolumesContextInjector,
            PipesUnityCatalogVolumesMessageReader,
        )

        client = self.workspace()
        if serverless:
            return _stoppable(PipesDatabricksServerlessClient)(client=client, volume_path=volume)
        return _stoppable(PipesDatabricksClient)(
            client=client, context_injector=PipesUnityCatalogVolumesContextInjector(client=client,
                                                                                   volume_path=volume),
            message_reader=PipesUnityCatalogVolumesMessageReader(client=client, volume_path=volume))
