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

import sys
from typing import Any

import dagster as dg


class BronzePipes(dg.ConfigurableResource):
    """The Dagster Pipes clients of the Spark and Databricks engines."""

    def subprocess_client(self) -> dg.PipesSubprocessClient:
        """The client of the ``spark`` engine: the job in a subprocess on this machine."""
        return dg.PipesSubprocessClient()

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
            return PipesDatabricksServerlessClient(client=client, volume_path=volume)
        return PipesDatabricksClient(
            client=client, context_injector=PipesUnityCatalogVolumesContextInjector(client=client,
                                                                                   volume_path=volume),
            message_reader=PipesUnityCatalogVolumesMessageReader(client=client, volume_path=volume))
