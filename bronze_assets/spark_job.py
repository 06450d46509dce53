"""The Spark engine's job: one bronze load on Spark, started and watched by Dagster Pipes.

Locally ``PipesSubprocessClient`` runs ``python -m bronze_assets.spark_job``; on Databricks a
wheel task runs the ``bronze-spark-job`` entry point with ``--pipes-io volumes`` (context and
messages through a Unity Catalog volume; Pipes parameters as task arguments or, on a job
cluster, environment variables). One script, the loaders chosen by those arguments.

The job loads one table with :class:`~bronze_assets.lib.spark.load.SparkLoader`, writes the
audit rows and reports the same materialization metadata and check results as the local engine.
A failed load reports :data:`FAILURE` (the one-line message and whether a retry can succeed,
from :mod:`bronze_assets.lib.failures`, as on the local engine) and exits cleanly, so the asset
fails with that message, once when a retry cannot fix it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import dagster_pipes as pipes_api

from bronze_assets.contracts import CONTRACTS, Contract
from bronze_assets.defs.checks import (
    KEY_UNIQUENESS,
    QUALITY_SCORE,
    REFERENTIAL_INTEGRITY,
    SCHEMA_CONTRACT,
    docs_dir,
    key_uniqueness_result,
    quality_score_result,
    referential_integrity_result,
    schema_contract_result,
)
from bronze_assets.lib.cdc import acknowledge, cdc_choice, cdc_read
from bronze_assets.lib.delta.io_manager import dagster_metadata
from bronze_assets.lib.delta.outcome import audit_failure
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.enrich.metadata import BatchContext
from bronze_assets.lib.failures import Cause, classify
from bronze_assets.lib.load import SchemaMismatchError
from bronze_assets.lib.quality.validate import QualityReport, suite_runner
from bronze_assets.lib.source import replication
from bronze_assets.lib.source.postgres import resolve_source_dsn
from bronze_assets.settings import data_dir

FAILURE = "bronze_failure"  # custom Pipes message: {"message", "retry", "metadata"}
DESCRIPTIONS = "bronze_check_descriptions"  # custom Pipes message: check name -> description
LOCAL_IO, VOLUMES_IO = "local", "volumes"

_PIPES_TYPES = {
    dg.UrlMetadataValue: "url", dg.PathMetadataValue: "path", dg.JsonMetadataValue: "json",
    dg.TextMetadataValue: "text", dg.IntMetadataValue: "int", dg.FloatMetadataValue: "float",
    dg.BoolMetadataValue: "bool", dg.MarkdownMetadataValue: "md",
}


def pipes_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Dagster metadata as Pipes sends it: typed values keep their type (url, path, json …)."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        kind = _PIPES_TYPES.get(type(value))
        out[key] = {"raw_value": value.value, "type": kind} if kind else value
    return out


def report_checks(pipes: pipes_api.PipesContext, results: Sequence[dg.AssetCheckResult]) -> None:
    """Report check results over Pipes; their descriptions (which Pipes checks do not carry)
    follow in one :data:`DESCRIPTIONS` message."""
    for result in results:
        assert result.check_name is not None
        pipes.report_asset_check(
            check_name=result.check_name, passed=result.passed,
            severity="ERROR" if result.severity == dg.AssetCheckSeverity.ERROR else "WARN",
            metadata=pipes_metadata(result.metadata))
    described = {r.check_name: r.description for r in results if r.description}
    if described:
        pipes.report_custom_message({DESCRIPTIONS: described})


def _validator(contract: Contract, with_docs: bool):
    """GX over the staged rows (the contract's suite, in bounded chunks, on the driver)."""

    def validate(folder: Path, ctx: BatchContext) -> QualityReport:
        import pyarrow.dataset as ds

        runner = suite_runner(contract, ctx.load_date, docs_dir(contract) if with_docs else None)
        batches = ds.dataset(str(folder), format="parquet").to_batches(columns=runner.columns)
        return runner.validate_batches(batches)

    return validate


def _window(extras: Mapping[str, Any]) -> tuple[datetime, datetime] | None:
    value = extras.get("window")
    if not value:
        return None
    start, end = (datetime.fromisoformat(v) for v in value)
    return start, end


def run(pipes: pipes_api.PipesContext) -> None:
    """Load the table the Pipes extras name and report what happened."""
    from bronze_assets.lib.spark.load import SparkLoader
    from bronze_assets.lib.spark.session import spark_session

    extras = pipes.extras
    contract = CONTRACTS[extras["table"]]
    storage = Storage(extras["root"], extras.get("storage_options") or {})
    checks = set(extras.get("checks") or [])
    started, clock = datetime.now(UTC), time.perf_counter()

    def fail(message: str, retry: bool, **metadata: Any) -> None:
        seconds = round(time.perf_counter() - clock, 3)
        audit_failure(contract, storage, pipes.run_id, started, seconds, message)
        pipes.report_custom_message({FAILURE: {"message": message, "retry": retry, "metadata": metadata}})

    if extras.get("secret_scope"):  # the orchestrator's scope (a serverless task has no env vars)
        os.environ.setdefault("BRONZE_SECRET_SCOPE", extras["secret_scope"])
    dsn: str | None = None
    try:
        dsn = resolve_source_dsn(None)
        loader = SparkLoader(spark_session(f"bronze {contract.bronze_table}"), storage)
        window = _window(extras)
        use_cdc, cdc_meta = cdc_choice(contract, dsn, window)  # the metadata says why not
        # a CDC read stays open while Spark reads in its slot's snapshot
        with cdc_read(contract, dsn, storage) if use_cdc else nullcontext() as cdc:
            result = loader.load(
                contract, dsn, partition=window, changes_only=bool(extras.get("changes_only")), cdc=cdc,
                validate=_validator(contract, bool(extras.get("docs"))) if QUALITY_SCORE in checks else None)
        if cdc is not None:  # only once its changes are committed may the slot free their WAL
            acknowledge(contract, dsn, cdc)
            cdc_meta |= cdc.metadata(replication.slot_state(dsn, contract))
    except SchemaMismatchError as exc:
        if SCHEMA_CONTRACT in checks:
            report_checks(pipes, [schema_contract_result(exc.drift, exc.quarantined)])
        return fail(classify(exc, contract.bronze_table, dsn).message, False,
                    quarantined_rows=exc.quarantined, batch_id=exc.batch_id)
    except Exception as exc:  # the one failure policy, as on the local engine
        failure = classify(exc, contract.bronze_table, dsn)
        if failure.cause in (Cause.BUG, Cause.UNKNOWN):  # then the traceback helps (the run's log)
            pipes.log.error(f"{contract.bronze_table}: {traceback.format_exc()}")
        return fail(failure.message, failure.retry)
    outcome = result.outcome(contract)
    outcome.audit(storage, pipes.run_id)
    pipes.log.info(f"{contract.bronze_table}: read {result.rows:,} rows ({result.window}) in "
                   f"{result.extract_seconds:.2f} s; merged in {result.merge.merge_seconds:.2f} s")
    pipes.report_asset_materialization(
        metadata=pipes_metadata(dagster_metadata(outcome.metadata()) | cdc_meta))
    results = []
    if SCHEMA_CONTRACT in checks and result.schema_drift is not None:
        results.append(schema_contract_result(result.schema_drift, result.unreadable_records or None))
    if KEY_UNIQUENESS in checks:
        results.append(key_uniqueness_result(contract, storage))
    if REFERENTIAL_INTEGRITY in checks:
        results.append(referential_integrity_result(contract, storage))
    if QUALITY_SCORE in checks and result.validation is not None:
        results.append(quality_score_result(result.score_histogram, result.validation))
    report_checks(pipes, results)


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
    with pipes_api.open_dagster_pipes(**io) as pipes:
        if args.pipes_io == LOCAL_IO:  # Spark's console chatter goes to a file, not the user's terminal
            log = data_dir() / "logs" / "spark" / f"{pipes.extras['table']}-{pipes.run_id[:8]}.log"
            redirect_stdio(log)
            pipes.log.info(f"Spark's own log: {log}")
        run(pipes)
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
