"""The databricks engine: the task spec the asset submits, checked against a fake WorkspaceClient.

The workspace is the one thing mocked (none is reachable from here; see ``fake_databricks``), in
the ``pipes`` resource the asset is given (``FakeWorkspacePipes``):
its Jobs API checks the spec and runs the wheel task for real on local Spark, its Files API
serves a Unity Catalog volume from a local folder, so dagster-databricks' own Pipes clients,
context injector and message reader run unchanged. With ``DATABRICKS_HOST`` set, the live test
runs the same asset in the workspace.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from databricks.sdk.service import jobs
from deltalake import DeltaTable

from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.assets import build_bronze_asset
from bronze_assets.defs.engines import BronzeEngine, DatabricksCompute
from bronze_assets.defs.resources import BronzePipes, BronzeStorage, PostgresSource, build_resources
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.settings import env
from bronze_assets_tests.bronze_helpers import (
    active_hashes,
    bronze_frame,
    interrupt_while_locked,
    source_hashes,
)
from bronze_assets_tests.conftest import AS_OF, SeedDb, query
from bronze_assets_tests.fake_databricks import FakeWorkspacePipes

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("spark_pipes")]

WHEEL = "/Volumes/main/bronze/pipes/bronze_assets-0.1.0-py3-none-any.whl"


def _materialize(dsn: str, root: Path, engine: BronzeEngine, table: str, pipes: BronzePipes | None = None
                 ) -> dg.ExecuteInProcessResult:
    resources = build_resources(PostgresSource(dsn=dsn), BronzeStorage(root=str(root)), engine, pipes)
    return dg.materialize([build_bronze_asset(CONTRACTS[table])], resources=resources, raise_on_error=False)


def _workspace(tmp_path: Path, compute: DatabricksCompute | None = None,
               ) -> tuple[BronzeEngine, FakeWorkspacePipes]:
    """The databricks engine on a fake workspace whose volume lives under ``tmp_path``."""
    volume = tmp_path / "Volumes" / "main" / "bronze" / "pipes"
    volume.mkdir(parents=True)
    pipes = FakeWorkspacePipes(volumes=str(tmp_path / "Volumes"), log_dir=str(tmp_path))
    extra = {} if compute is None else {"databricks_compute": compute.value}
    return BronzeEngine(engine="databricks", databricks_volume=str(volume), databricks_wheel=WHEEL,
                        **extra), pipes


@pytest.mark.parametrize("compute", [DatabricksCompute.SERVERLESS, DatabricksCompute.JOB_CLUSTER])
def test_databricks_task_runs_the_bronze_job_through_a_volume(
    compute: DatabricksCompute, seed_db: SeedDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    spark_pipes: BronzePipes,  # the job's subprocess attaches to this worker's JVM
) -> None:
    # the seed of test_spark_pipes (one template per worker): the spec and the volume are the point
    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.05, as_of=AS_OF))
    engine, pipes = _workspace(tmp_path, compute)
    # stands in for the secret scope the task reads on Databricks: the spec never carries it
    monkeypatch.setenv("BRONZE_SOURCE_DSN", fresh_dsn)

    result = _materialize(fresh_dsn, tmp_path / "bronze", engine, "warehouses", pipes)
    logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("run-*.log"))
    assert result.success, logs

    (run,) = pipes.workspace().jobs.runs.values()
    task: jobs.SubmitTask = run.task
    spec = json.dumps({"task": task.as_dict(), **{k: v if isinstance(v, str) else [e.as_dict() for e in v]
                                                 for k, v in run.submit_args.items()}})
    assert fresh_dsn not in spec and "password" not in spec.lower()
    assert task.python_wheel_task is not None
    assert task.python_wheel_task.package_name == "bronze_assets"
    assert task.python_wheel_task.parameters[:2] == ["--pipes-io", "volumes"]
    if compute is DatabricksCompute.SERVERLESS:
        assert task.new_cluster is None and task.environment_key == "bronze"
        (environment,) = run.submit_args["environments"]
        assert environment.spec.dependencies == [WHEEL]
        assert "--dagster-pipes-context" in task.python_wheel_task.parameters  # Pipes params as arguments
    else:
        assert task.new_cluster is not None and task.libraries[0].whl == WHEEL
        assert task.new_cluster.spark_version.endswith("scala2.13")  # the Scala line of the pinned jars
        assert "DAGSTER_PIPES_CONTEXT" in task.new_cluster.spark_env_vars  # Pipes params as env vars
        assert task.new_cluster.spark_env_vars["BRONZE_SECRET_SCOPE"] == "bronze"
    volume = Path(str(engine.databricks_volume))
    assert not list((volume / "tmp").iterdir())  # the Pipes temp folders are cleaned up

    events = {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
              for e in result.get_asset_materialization_events()}
    meta, history = events["bz_warehouses"], events["bz_warehouses_history"]
    # the job reports the history it wrote (nothing implicit): its version, the same batch
    hist = DeltaTable(str(tmp_path / "bronze" / "bz_warehouses_history"))
    assert (history["delta_version"], history["batch_id"]) == (hist.version(), meta["batch_id"])
    assert history["versions_added"] == meta["rows_inserted"] == bronze_frame(hist.table_uri).height
    rows = query(fresh_dsn, "SELECT count(*) FROM tests.warehouses")[0][0]
    assert meta["engine"] == "spark" and meta["rows_inserted"] == meta["rows_read"] == rows
    assert meta["Databricks Job Run ID"] == "1"
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert set(checks) == {"schema_contract", "quality_score", "key_uniqueness"}
    assert checks["schema_contract"] and checks["key_uniqueness"]
    frame = bronze_frame(tmp_path / "bronze" / "bz_warehouses")
    assert active_hashes(frame, "warehouse_id") == source_hashes(fresh_dsn, "warehouses")


def test_databricks_engine_says_what_it_needs(fresh_dsn: str, tmp_path: Path) -> None:
    result = _materialize(fresh_dsn, tmp_path, BronzeEngine(engine="databricks"), "warehouses")
    assert not result.success
    failure = result.failure_data_for_node("load_bz_warehouses")
    assert failure is not None
    message = str(failure.error)
    assert "BRONZE_DATABRICKS_VOLUME" in message and "BRONZE_DATABRICKS_WHEEL" in message


@pytest.mark.skipif(not env("DATABRICKS_HOST"), reason="DATABRICKS_HOST is not set: no Databricks workspace")
def test_live_databricks_workspace(tmp_path: Path) -> None:  # pragma: no cover - needs a workspace
    """In a real workspace: $BRONZE_ROOT reachable from it, the wheel and volume configured, the
    source credentials in the secret scope."""
    result = dg.materialize([build_bronze_asset(CONTRACTS["warehouses"])],
                            resources=build_resources(engine=BronzeEngine(engine="databricks")))
    assert result.success


def test_databricks_task_lands_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     spark_pipes: BronzePipes) -> None:  # the task on this worker's JVM
    """The landing asset on the databricks engine: the task lands the files and reports them. The
    fake workspace sets no ``DATABRICKS_RUNTIME_VERSION``, so the job takes Spark's plain reader;
    Auto Loader's stream runs only in a workspace (README, "Landing files on Spark and Databricks")."""
    from datetime import UTC, datetime

    from bronze_assets_tests.test_landing import EVENTS, drop, event

    engine, pipes = _workspace(tmp_path)
    monkeypatch.setenv("BRONZE_LANDING_ROOT", str(tmp_path / "landing"))
    bronze = BronzeStorage(root=str(tmp_path / "bronze"))
    drop(bronze.storage(), "a.jsonl", [event(1), "{bad", event(2, carrier_code="DHL")])
    resources = build_resources(PostgresSource(dsn="postgresql://nobody@localhost:1/unused"), bronze, engine,
                                pipes)
    result = dg.materialize([build_bronze_asset(EVENTS)], resources=resources, raise_on_error=False,
                            partition_key=datetime.now(UTC).date().isoformat())
    logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("run-*.log"))
    assert result.success, logs
    (event_,) = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event_.materialization.metadata.items()}
    assert meta["engine"] == "spark" and meta["landing_files"] == 1 and meta["rows_inserted"] == 2
    rows = bronze_frame(tmp_path / "bronze" / "bz_shipment_events").to_dicts()
    assert sorted((r["event_id"], r["carrier_code"]) for r in rows) == [(1, None), (2, "DHL")]


def test_an_interrupt_cancels_the_databricks_run_of_a_threaded_step(
    seed_db: SeedDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spark_pipes: BronzePipes,
) -> None:
    """A load job's step on a thread (the threaded executor) never gets the run's interrupt, with
    which dagster-databricks' client cancels its Databricks run: the stop request does, at the
    client's next poll, and the step fails as interrupted while the job still waits for a lock."""
    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.05, as_of=AS_OF))
    engine, pipes = _workspace(tmp_path, DatabricksCompute.SERVERLESS)
    monkeypatch.setenv("BRONZE_SOURCE_DSN", fresh_dsn)
    resources = build_resources(PostgresSource(dsn=fresh_dsn), BronzeStorage(root=str(tmp_path / "bronze")),
                                engine, pipes)
    ended_before_release, result = interrupt_while_locked(fresh_dsn, resources, deadline=180, grace=25)
    (run,) = pipes.workspace().jobs.runs.values()
    assert ended_before_release, "the Databricks run was never cancelled"
    assert run.process.poll() is not None and run.process.returncode < 0  # cancel_run killed it
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "bz_warehouses: interrupted" in failure.step_failure_data.error.message
