"""The Spark engine's job: one bronze load on Spark, started and watched by Dagster Pipes.

Locally ``PipesSubprocessClient`` runs ``python -m bronze_assets.spark_job``; on Databricks a
wheel task runs the ``bronze-spark-job`` entry point with ``--pipes-io volumes`` (context and
messages through a Unity Catalog volume; Pipes parameters as task arguments or, on a job
cluster, environment variables). One script, the loaders chosen by those arguments.

The job is a thin Pipes shell over the load lifecycle (:mod:`bronze_assets.lib.load.lifecycle`)
with the Spark engine (:mod:`bronze_assets.lib.spark.engine`): the same audit rows,
materialization metadata and check results as the local engine.
A failed load reports :data:`FAILURE` (the one-line message and whether a retry can succeed,
from :mod:`bronze_assets.lib.failures`, as on the local engine) and exits cleanly, so the asset
fails with that message, once when a retry cannot fix it.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import dagster_pipes as pipes_api

from bronze_assets.contracts import get_contract
from bronze_assets.lib.delta.outcome import audit_failure
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.failures import INTERRUPTS, Cause, classify
from bronze_assets.lib.load.lifecycle import Lifecycle, LoadRequest
from bronze_assets.lib.quality.checks import URL_KEYS, CheckOutcome
from bronze_assets.lib.secrets import install_log_redaction, protect_logs
from bronze_assets.lib.source.postgres import resolve_source_dsn
from bronze_assets.lib.spark.messages import DESCRIPTIONS, FAILURE, LOCAL_IO, VOLUMES_IO
from bronze_assets.settings import Settings

PATH_KEYS = frozenset({"table_uri"})


def pipes_value(key: str, value: Any) -> Any:
    """A plain metadata value as Pipes sends it: paths, links and samples keep their type."""
    if key in PATH_KEYS:
        return {"raw_value": value, "type": "path"}
    if key in URL_KEYS and isinstance(value, str):
        return {"raw_value": value, "type": "url"}
    if isinstance(value, (list, dict)):
        return {"raw_value": value, "type": "json"}
    return value


def report_checks(pipes: pipes_api.PipesContext, asset_key: str, outcomes: Sequence[CheckOutcome]) -> None:
    """Report check outcomes of ``asset_key`` over Pipes; their descriptions (which Pipes checks do
    not carry) follow in one :data:`DESCRIPTIONS` message."""
    for outcome in outcomes:
        pipes.report_asset_check(
            asset_key=asset_key, check_name=outcome.name, passed=outcome.passed, severity=outcome.severity,
            metadata={k: pipes_value(k, v) for k, v in outcome.metadata.items()})
    described = {o.name: o.description for o in outcomes if o.description}
    if described:
        pipes.report_custom_message({DESCRIPTIONS: described})


def _window(extras: Mapping[str, Any]) -> tuple[datetime, datetime] | None:
    value = extras.get("window")
    if not value:
        return None
    start, end = (datetime.fromisoformat(v) for v in value)
    return start, end


def job_settings(extras: Mapping[str, Any]) -> Settings:
    """This job's settings: its own environment's, read once here, with the orchestrator's secret
    scope and deployment id (sent in the Pipes extras) where the environment sets none (a
    serverless task has no environment variables)."""
    settings = Settings.from_env()
    overrides: dict[str, Any] = {}
    if not settings.secret_scope_set and extras.get("secret_scope"):
        overrides |= {"secret_scope": extras["secret_scope"], "secret_scope_set": True}
    if settings.deployment_id is None and extras.get("deployment_id"):
        overrides["deployment_id"] = extras["deployment_id"]
    if extras.get("landing_root"):  # the orchestrator's landing zone (a remote task has no environment)
        overrides["landing_root"] = extras["landing_root"]
    return replace(settings, **overrides)


def run(pipes: pipes_api.PipesContext, settings: Settings) -> None:
    """Load the table the Pipes extras name through the load lifecycle and report what happened;
    a failure is reported (one line, whether a retry can succeed) and the job ends cleanly."""
    from bronze_assets.lib.spark.engine import SparkEngine
    from bronze_assets.lib.spark.load import SparkLoader
    from bronze_assets.lib.spark.session import spark_session

    extras = pipes.extras
    contract = get_contract(extras["table"])
    storage = Storage(extras["root"], extras.get("storage_options") or {}, settings)
    request = LoadRequest(contract, _window(extras), bool(extras.get("changes_only")),
                          frozenset(extras.get("checks") or []))
    dsn: str | None = None
    lifecycle: Lifecycle | None = None
    started = datetime.now(UTC)
    try:
        dsn = "" if contract.landing is not None else resolve_source_dsn(settings)  # files: no database
        # the session starts once the source has been read (a source error starts no JVM)
        session = partial(spark_session, settings, f"bronze {contract.bronze_table}")
        engine = SparkEngine(SparkLoader(session, storage),
                             data_docs=bool(extras.get("docs")))
        if contract.landing is not None and settings.databricks_runtime:  # Auto Loader, batch by batch
            from bronze_assets.lib.spark.autoloader import run_autoloader

            report = run_autoloader(request, engine, storage, pipes.run_id, pipes.log)
        else:
            lifecycle = Lifecycle(request, engine, dsn, storage, job_id=pipes.run_id, logger=pipes.log)
            report = lifecycle.run()
    except (Exception, *INTERRUPTS) as exc:  # the one failure policy, as on the local engine
        # (an interrupt: Pipes forwards the orchestrator's SIGINT; PySpark cancels the Spark jobs)
        failure = classify(exc, contract.bronze_table, dsn)
        if lifecycle is not None:  # it audited the failure
            report_checks(pipes, contract.bronze_table, lifecycle.take_checks())
        else:  # the job failed before the load began (source, Spark session)
            audit_failure(contract, storage, pipes.run_id, started,
                          (datetime.now(UTC) - started).total_seconds(), failure, "spark")
        if failure.cause in (Cause.BUG, Cause.UNKNOWN):  # then the traceback helps (the run's log)
            pipes.log.error(f"{contract.bronze_table}: {traceback.format_exc()}")
        metadata = dict(getattr(exc, "failure_metadata", {}) or {})
        pipes.report_custom_message({FAILURE: {"message": failure.message, "retry": failure.retry,
                                               "metadata": metadata}})
        return
    pipes.log.info(f"{contract.bronze_table}: merged in {report.outcome.result.merge_seconds:.2f} s")
    # the step may also hold the history asset: each materialization names its asset
    pipes.report_asset_materialization(asset_key=contract.bronze_table,
                                       metadata={k: pipes_value(k, v) for k, v in report.metadata.items()})
    if extras.get("history") and report.history is not None:  # written by the same load, reported so
        pipes.report_asset_materialization(asset_key=contract.history_table,
                                           metadata={k: pipes_value(k, v) for k, v in report.history.items()})
    report_checks(pipes, contract.bronze_table, report.checks)


def _pipes_io(kind: str) -> dict[str, Any]:
    """Where the context comes from and the messages go: local files (subprocess) or a UC volume."""
    params: pipes_api.PipesParamsLoader = pipes_api.PipesCliArgsParamsLoader() \
        if pipes_api.DAGSTER_PIPES_CONTEXT_CLI_ARGUMENT in sys.argv else pipes_api.PipesEnvVarParamsLoader()
    if kind == VOLUMES_IO:
        return {"params_loader": params, "context_loader": pipes_api.PipesUnityCatalogVolumesContextLoader(),
                "message_writer": pipes_api.PipesUnityCatalogVolumesMessageWriter()}
    return {"params_loader": params}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bronze-spark-job", description=__doc__.splitlines()[0])
    parser.add_argument("--pipes-io", choices=[LOCAL_IO, VOLUMES_IO], default=LOCAL_IO,
                        help="how Pipes reaches this process (volumes: a Unity Catalog volume)")
    args, _ = parser.parse_known_args(argv)
    io = _pipes_io(args.pipes_io)
    if not io["params_loader"].is_dagster_pipes_process():
        print("bronze-spark-job runs under Dagster Pipes: materialize a bronze asset with "
              "BRONZE_ENGINE=spark or databricks instead of running it by hand.", file=sys.stderr)
        return 2
    install_log_redaction()
    with pipes_api.open_dagster_pipes(**io) as pipes:
        settings = job_settings(pipes.extras)
        protect_logs(settings, pipes.extras.get("storage_options"))
        if args.pipes_io == LOCAL_IO:  # Spark's console chatter goes to a file, not the user's terminal
            log = settings.data_dir / "logs" / "spark" / f"{pipes.extras['table']}-{pipes.run_id[:8]}.log"
            redirect_stdio(log)
            pipes.log.info(f"Spark's own log: {log}")
        run(pipes, settings)
    return 0


def redirect_stdio(path: Path) -> None:
    """Send this process's stdout and stderr (and the JVM's, which inherits them) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
