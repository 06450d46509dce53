"""Load engines: where a bronze asset's load runs. The asset body is the same for every engine;
the ``engine`` resource picks one per table (``$BRONZE_ENGINE``, ``$BRONZE_ENGINE_TABLES``).

- ``local``: this process reads with ADBC/Polars, the IO manager MERGEs with delta-rs.
- ``spark``: the load runs on Spark (local master) in a subprocess started by Dagster Pipes
  (``PipesSubprocessClient``), which reports the metadata and check results back.
- ``databricks``: the same job as a Databricks task (``dagster-databricks`` Pipes, serverless
  or a job cluster), context and messages through a Unity Catalog volume.

The Pipes clients come from the ``pipes`` resource (:class:`bronze_assets.defs.pipes.BronzePipes`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from enum import StrEnum
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from bronze_assets.contracts import Contract
from bronze_assets.defs.checks import as_check_result
from bronze_assets.defs.edge import edge_settings
from bronze_assets.defs.io_manager import BronzeStorage, changed_partition_events
from bronze_assets.defs.pipes import BronzePipes
from bronze_assets.lib.cdc import deployment_id
from bronze_assets.lib.delta.history import history_metadata
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.failures import failure_policy
from bronze_assets.lib.load.engine import LocalEngine
from bronze_assets.lib.load.lifecycle import Lifecycle, LoadRequest
from bronze_assets.lib.reconcile.bronze_side import BronzeTable
from bronze_assets.lib.reconcile.run import BronzeSideFactory
from bronze_assets.lib.spark.messages import DESCRIPTIONS, FAILURE, VOLUMES_IO
from bronze_assets.lib.stop import stop_point
from bronze_assets.settings import DEFAULT_SECRET_SCOPE, Settings

ENV_ENGINE = "BRONZE_ENGINE"
ENV_ENGINE_TABLES = "BRONZE_ENGINE_TABLES"
JOB_PACKAGE, JOB_ENTRY_POINT = "bronze_assets", "bronze-spark-job"


class Engine(StrEnum):
    LOCAL = "local"
    SPARK = "spark"
    DATABRICKS = "databricks"


def parse_engine(value: str, where: str) -> Engine:
    try:
        return Engine(value.strip().lower())
    except ValueError:
        raise ValueError(f"{where}={value!r} is not an engine; use one of "
                         f"{', '.join(e.value for e in Engine)}") from None


def parse_table_engines(value: str | None) -> dict[str, Engine]:
    """``bz_orders=spark, bz_order_details=databricks`` → {table: engine}."""
    engines: dict[str, Engine] = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        table, sep, engine = item.partition("=")
        if not sep:
            raise ValueError(f"{ENV_ENGINE_TABLES}: {item.strip()!r} should read <bz_table>=<engine>")
        engines[table.strip()] = parse_engine(engine, f"{ENV_ENGINE_TABLES} ({table.strip()})")
    return engines


class DatabricksCompute(StrEnum):
    SERVERLESS = "serverless"
    JOB_CLUSTER = "job-cluster"


class BronzeEngine(dg.ConfigurableResource):
    """Which engine loads each bronze table, and how the Spark and Databricks engines run."""

    engine: str | None = Field(default=None, description=f"local | spark | databricks; unset means "
                                                         f"${ENV_ENGINE}, else local.")
    tables: dict[str, str] = Field(default_factory=dict, description=(
        f"per-table engine, e.g. {{'bz_order_details': 'spark'}} (added to ${ENV_ENGINE_TABLES})"))
    databricks_volume: str | None = Field(default=None, description=(
        "Unity Catalog volume for Pipes context and messages, e.g. /Volumes/main/bronze/pipes; "
        "unset means $BRONZE_DATABRICKS_VOLUME."))
    databricks_wheel: str | None = Field(default=None, description=(
        "the bronze_assets wheel the task installs (a volume or workspace path); unset means "
        "$BRONZE_DATABRICKS_WHEEL."))
    databricks_compute: str | None = Field(default=None, description=(
        "serverless | job-cluster; unset means $BRONZE_DATABRICKS_COMPUTE, else serverless."))
    databricks_spark_version: str = Field(default="17.3.x-scala2.13", description="job-cluster runtime")
    databricks_node_type: str = Field(default="Standard_D4ds_v5", description="job-cluster node type")
    databricks_workers: int = Field(default=2, description="job-cluster workers")
    _settings: Settings | None = PrivateAttr(default=None)

    def settings(self) -> Settings:
        """The environment's settings, read once by this resource (the edge) and passed down."""
        if self._settings is None:
            self._settings = edge_settings()
        return self._settings

    def engine_for(self, contract: Contract) -> Engine:
        settings = self.settings()
        per_table = parse_table_engines(settings.engine_tables) | {
            t: parse_engine(e, f"engine.tables[{t}]") for t, e in self.tables.items()}
        if contract.bronze_table in per_table:
            return per_table[contract.bronze_table]
        value = self.engine or settings.engine
        return parse_engine(value, ENV_ENGINE) if value else Engine.LOCAL

    def bronze_side(self, contract: Contract) -> BronzeSideFactory:
        """How a reconciliation reads ``contract``'s bronze table: through Spark SQL for a table a
        Spark engine loads (a session is started only then), else through DataFusion."""
        if self.engine_for(contract) is Engine.LOCAL:
            return BronzeTable
        from bronze_assets.lib.spark.reconcile import spark_bronze_side
        from bronze_assets.lib.spark.session import spark_session

        return spark_bronze_side(spark_session(self.settings()))

    def databricks_settings(self) -> DatabricksSettings:
        settings = self.settings()
        volume = self.databricks_volume or settings.databricks_volume
        wheel = self.databricks_wheel or settings.databricks_wheel
        missing = [name for name, value in (("BRONZE_DATABRICKS_VOLUME", volume),
                                            ("BRONZE_DATABRICKS_WHEEL", wheel)) if not value]
        if missing:
            raise dg.Failure(
                f"the databricks engine needs {' and '.join('$' + m for m in missing)} (a Unity Catalog "
                f"volume for Pipes messages and the bronze_assets wheel uploaded there; README, "
                f"'Databricks: from a workspace to a first run').", allow_retries=False)
        compute = self.databricks_compute or settings.databricks_compute or DatabricksCompute.SERVERLESS
        return DatabricksSettings(
            volume=str(volume).rstrip("/"), wheel=str(wheel),
            compute=DatabricksCompute(compute), spark_version=self.databricks_spark_version,
            node_type=self.databricks_node_type, workers=self.databricks_workers,
            secret_scope=settings.secret_scope)


@dataclass(frozen=True)
class DatabricksSettings:
    volume: str
    wheel: str
    compute: DatabricksCompute = DatabricksCompute.SERVERLESS
    spark_version: str = "17.3.x-scala2.13"
    node_type: str = "Standard_D4ds_v5"
    workers: int = 2
    secret_scope: str = DEFAULT_SECRET_SCOPE  # the job cluster's $BRONZE_SECRET_SCOPE


def request_for(context: dg.AssetExecutionContext, contract: Contract, changes_only: bool) -> LoadRequest:
    window = None
    if context.has_partition_key_range or context.has_partition_key:
        tw = context.partition_time_window
        window = (tw.start.astimezone(UTC), tw.end.astimezone(UTC))
    checks = frozenset(k.name for k in context.selected_asset_check_keys)
    return LoadRequest(contract, window, changes_only, checks)


def materialize(context: dg.AssetExecutionContext, request: LoadRequest, source: Any, bronze: BronzeStorage,
                engine: BronzeEngine, pipes: BronzePipes) -> Iterator[Any]:
    """Run ``request`` on the engine chosen for its table; yields the asset's events. Whatever
    fails leaves through the one failure policy (:mod:`bronze_assets.lib.failures`): one line,
    retried only when a retry can succeed; an interrupt stops the run."""
    with failure_policy(request.contract.bronze_table, source.dsn):
        chosen = engine.engine_for(request.contract)
        if chosen is Engine.LOCAL:
            yield from run_local(context, request, source, bronze)
        else:
            yield from run_pipes(context, request, source, bronze, engine, pipes, chosen)


# ---------------------------------------------------------------------------------------- local


def run_local(context: dg.AssetExecutionContext, request: LoadRequest, source: Any, bronze: BronzeStorage
              ) -> Iterator[Any]:
    """The load lifecycle on the local engine: staged here, MERGEd by the IO manager (the output),
    then the CDC acknowledgement and the checks."""
    storage = bronze.storage()
    contract = request.contract
    history = history_selected(context, contract)
    dsn = "" if contract.landing is not None else source.resolved_dsn()  # files: no database
    lifecycle = Lifecycle(request, LocalEngine(storage), dsn, storage,
                          job_id=context.run.run_id, logger=context.log)
    try:
        staged = lifecycle.stage()
    finally:  # the schema check's outcome, also when the batch was quarantined
        for outcome in lifecycle.take_checks():
            yield as_check_result(outcome)
    try:
        # the MERGE happens here (the metadata says which load pattern ran)
        yield dg.Output(staged, output_name=request.contract.bronze_table, metadata=lifecycle.metadata)
        if history:
            # the version the MERGE left (a local StagedBatch carries it): no other open
            yield history_result(contract, storage, staged.ctx.batch_id,
                                 getattr(staged, "history_version", None))
        for outcome in lifecycle.finish(staged):
            yield as_check_result(outcome)
    finally:
        staged.cleanup()


def history_selected(context: dg.AssetExecutionContext, contract: Contract) -> bool:
    """Whether the step reports ``bz_<name>_history`` (selected with its table); selected alone it
    fails, since only the load of ``bz_<name>`` writes it."""
    history = contract.history and dg.AssetKey(contract.history_table) in context.selected_asset_keys
    if history and dg.AssetKey(contract.bronze_table) not in context.selected_asset_keys:
        raise dg.Failure(f"{contract.history_table} is written by the load of {contract.bronze_table}: "
                         f"materialize {contract.bronze_table}", allow_retries=False)
    return history


def history_result(contract: Contract, storage: Storage, batch_id: str, version: int | None = None
                   ) -> dg.MaterializeResult:
    """The history table as the load just left it (its versions were written with the MERGE):
    at ``version`` when the MERGE told it, else as opened now."""
    if version is None:
        dt = storage.open(contract.history_table)
        version = dt.version() if dt is not None else None
    meta = history_metadata(contract, storage, batch_id, version)
    meta["table_uri"] = dg.MetadataValue.path(meta["table_uri"])
    return dg.MaterializeResult(asset_key=contract.history_table, metadata=meta)


# ---------------------------------------------------------------------------------------- Pipes


def job_extras(request: LoadRequest, bronze: BronzeStorage, *, remote: bool, history: bool = False
               ) -> dict[str, Any]:
    """What the Spark job needs to know (sent in the Pipes context; ``history``: whether it reports
    the history asset). A remote job gets no storage credentials: it reads them from its own
    environment (the Databricks secret scope)."""
    storage = bronze.storage()
    settings = storage.settings
    extras: dict[str, Any] = {
        "table": request.contract.name, "history": history, "root": storage.root,
        "window": [v.isoformat() for v in request.window] if request.window else None,
        "changes_only": request.changes_only, "checks": sorted(request.checks), "docs": not remote,
        "secret_scope": settings.secret_scope if settings.secret_scope_set else None,
        "deployment_id": deployment_id(storage),
    }
    if request.contract.landing is not None:
        extras["landing_root"] = settings.landing_root
    if not remote and bronze.storage_options:
        extras["storage_options"] = dict(bronze.storage_options)
    return extras


def run_pipes(context: dg.AssetExecutionContext, request: LoadRequest, source: Any, bronze: BronzeStorage,
              engine: BronzeEngine, pipes: BronzePipes, chosen: Engine) -> Iterator[Any]:
    """Run the Spark job through the ``pipes`` client resource and yield what it reported, as the
    local engine would."""
    contract = request.contract
    history = history_selected(context, contract)
    if chosen is Engine.SPARK:
        invocation = run_spark_subprocess(context, request, source, bronze, pipes, history)
    else:
        invocation = run_databricks(context, request, bronze, engine.databricks_settings(), pipes, history)
    custom = invocation.get_custom_messages()
    descriptions: dict[str, str] = {}
    failure: Mapping[str, Any] | None = None
    for message in custom:
        if isinstance(message, Mapping):
            descriptions |= message.get(DESCRIPTIONS, {})
            failure = message.get(FAILURE, failure)
    # the job reports each asset it materialized (the table, and its history when selected):
    # nothing implicit, so a failed job materializes nothing (it reports only its checks)
    results = invocation.get_results(implicit_materializations=False)
    for result in results:
        if isinstance(result, dg.AssetCheckResult) and result.check_name in descriptions:
            yield dg.AssetCheckResult(
                check_name=result.check_name, asset_key=result.asset_key, passed=result.passed,
                severity=result.severity, metadata=result.metadata,
                description=descriptions[result.check_name])
        else:
            yield result
    if failure is not None:
        raise dg.Failure(failure["message"], allow_retries=bool(failure["retry"]),
                         metadata=failure.get("metadata") or None)
    materialized = [r for r in results if isinstance(r, dg.MaterializeResult)]
    if not materialized:
        raise dg.Failure(f"{contract.bronze_table}: the {chosen.value} job ended without reporting a load")
    meta = {k: getattr(v, "value", v) for k, v in (materialized[0].metadata or {}).items()}
    own = context.partition_keys if context.has_partition_key or context.has_partition_key_range else []
    yield from changed_partition_events(dg.AssetKey(contract.bronze_table), own, meta, context.instance,
                                        bronze.storage())


def run_spark_subprocess(context: dg.AssetExecutionContext, request: LoadRequest, source: Any,
                         bronze: BronzeStorage, pipes: BronzePipes, history: bool = False
                         ) -> dg.PipesClientCompletedInvocation:
    """The Spark job on local Spark, in a subprocess (which inherits this environment); the
    source DSN travels in its environment, never in the Pipes context."""
    return pipes.subprocess_client().run(
        command=pipes.spark_job_command(), context=context,
        extras=job_extras(request, bronze, remote=False, history=history),
        env={} if request.contract.landing is not None else {"BRONZE_SOURCE_DSN": source.resolved_dsn()})


def databricks_task(contract: Contract, settings: DatabricksSettings) -> tuple[Any, dict[str, Any]]:
    """The task the Databricks engine submits, and the extra ``jobs.submit`` arguments.

    A wheel task runs the ``bronze-spark-job`` entry point with ``--pipes-io volumes``. Serverless:
    the wheel is the environment's dependency. Job cluster: a new cluster with the wheel as library,
    the secret scope in its environment. Source credentials never appear in the spec: the job
    reads ``KConnectionString``/``KUser``/``KPassword`` from the secret scope.
    """
    from databricks.sdk.service import compute, jobs

    wheel_task = jobs.PythonWheelTask(package_name=JOB_PACKAGE, entry_point=JOB_ENTRY_POINT,
                                      parameters=["--pipes-io", VOLUMES_IO])
    key = f"bronze_{contract.name}"
    scope = settings.secret_scope
    if settings.compute is DatabricksCompute.SERVERLESS:
        task = jobs.SubmitTask(task_key=key, python_wheel_task=wheel_task, environment_key="bronze")
        environment = jobs.JobEnvironment(environment_key="bronze", spec=compute.Environment(
            environment_version="3", dependencies=[settings.wheel]))
        return task, {"run_name": f"bronze {contract.bronze_table}", "environments": [environment]}
    task = jobs.SubmitTask(
        task_key=key, python_wheel_task=wheel_task,
        libraries=[compute.Library(whl=settings.wheel)],
        new_cluster=compute.ClusterSpec(
            spark_version=settings.spark_version, node_type_id=settings.node_type,
            num_workers=settings.workers, spark_env_vars={"BRONZE_SECRET_SCOPE": scope},
            spark_conf={"spark.sql.session.timeZone": "UTC"}))
    return task, {"run_name": f"bronze {contract.bronze_table}"}


def run_databricks(context: dg.AssetExecutionContext, request: LoadRequest, bronze: BronzeStorage,
                   settings: DatabricksSettings, pipes: BronzePipes, history: bool = False
                   ) -> dg.PipesClientCompletedInvocation:
    """The Spark job as a Databricks task; Pipes context and messages in the UC volume."""
    task, submit_args = databricks_task(request.contract, settings)
    client = pipes.databricks_client(settings.volume,
                                     serverless=settings.compute is DatabricksCompute.SERVERLESS)
    invocation = client.run(context=context, extras=job_extras(request, bronze, remote=True, history=history),
                            task=task, submit_args=submit_args)
    stop_point()  # a stop request cancelled the Databricks run (the client returns): interrupted
    return invocation
