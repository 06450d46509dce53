"""The ten bronze assets, all built by one factory from the table contracts."""


import json
from datetime import UTC, datetime

import dagster as dg

from bronze_assets.contracts import CONTRACTS, Contract, PgType
from bronze_assets.defs.checks import (
    KEY_UNIQUENESS,
    QUALITY_SCORE,
    REFERENTIAL_INTEGRITY,
    SCHEMA_CONTRACT,
    check_specs,
    key_uniqueness_result,
    quality_score_result,
    referential_integrity_result,
    schema_contract_result,
    start_quality_check,
    warm_quality_suite,
)
from bronze_assets.defs.freshness import freshness_policy
from bronze_assets.defs.partitions import as_utc, partitions_def
from bronze_assets.defs.resources import BronzeStorage, PostgresSource
from bronze_assets.defs.schedules import reads_changes_only
from bronze_assets.lib.delta.control import (
    AUDIT_LOG,
    FAILED,
    SUCCESS,
    append_rows,
    current_user,
    load_record,
    record_load,
)
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE
from bronze_assets.lib.enrich.metadata import METADATA_FIELDS
from bronze_assets.lib.load import SchemaMismatchError, SourceTableMissingError, extract_and_stage
from bronze_assets.lib.source.postgres import SourceConnectionError

GROUP = "bronze"
OWNERS = ["team:data-engineering"]
IO_MANAGER_KEY = "bronze_io_manager"
RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def _describe(contract: Contract, column: str) -> str:
    return "primary key" if column in contract.primary_key else "source column"


def column_schema(contract: Contract) -> dg.TableSchema:
    """Column schema shown in the UI: source columns then bronze metadata columns."""
    cols = [
        dg.TableColumn(c.name, c.type.value, description=_describe(contract, c.name))
        for c in contract.columns
    ]
    cols += [dg.TableColumn(f.name, str(f.type), description="bronze metadata") for f in METADATA_FIELDS]
    if contract.partitioning.delta_column:
        cols.append(dg.TableColumn(contract.partitioning.delta_column, PgType.DATE.value,
                                   description="Delta partition column"))
    return dg.TableSchema(columns=cols)


def build_bronze_asset(contract: Contract) -> dg.AssetsDefinition:
    """One software-defined asset ``bz_<table>`` whose output the bronze IO manager MERGEs."""
    parts = partitions_def(contract)

    spec = dg.AssetSpec(
        key=contract.bronze_table,
        group_name=GROUP,
        kinds={"postgres", "delta"},
        owners=OWNERS,
        description=f"Bronze copy of tests.{contract.name}: {contract.description}",
        partitions_def=parts,
        freshness_policy=freshness_policy(contract.cadence),
        code_version=contract.version,
        tags={"load_pattern": contract.load_pattern.value, "cadence": contract.cadence.value},
        metadata={
            "dagster/column_schema": column_schema(contract),
            "dagster/table_name": contract.bronze_table,
            "primary_key": ", ".join(contract.primary_key),
            "zorder_columns": ", ".join(contract.zorder_columns),
            "source_table": f"tests.{contract.name}",
        },
    ).with_io_manager_key(IO_MANAGER_KEY)

    @dg.multi_asset(
        name=f"load_{contract.bronze_table}",
        specs=[spec],
        check_specs=check_specs(contract),
        can_subset=True,  # a run may leave the checks out
        partitions_def=parts,
        backfill_policy=dg.BackfillPolicy.single_run() if parts else None,
        retry_policy=RETRY,
    )
    def _bronze(context: dg.AssetExecutionContext, source: PostgresSource, bronze: BronzeStorage):
        selected = {key.name for key in context.selected_asset_check_keys}
        if QUALITY_SCORE in selected:  # GX warms up in its worker process while the source is read
            warm_quality_suite(contract)
        yield from _load(context, source, bronze, selected)

    def _load(context: dg.AssetExecutionContext, source: PostgresSource, bronze: BronzeStorage,
              selected: set[str]):
        window = None
        if context.has_partition_key_range or context.has_partition_key:
            tw = context.partition_time_window
            window = (as_utc(tw.start), as_utc(tw.end))
        root, options = bronze.resolved_root(), bronze.storage_options or None
        started = datetime.now(UTC)

        def audit_failure(message: str) -> None:
            seconds = (datetime.now(UTC) - started).total_seconds()
            load = load_record(contract, context.run.run_id, started, seconds=seconds, status=FAILED)
            load.error = message
            record_load(root, load, options)

        try:
            dsn = source.resolved_dsn()
            staged = extract_and_stage(
                contract, dsn, bronze.table_uri(contract.bronze_table),
                partition=window, storage_options=options,
                quarantine_uri=bronze.table_uri(QUARANTINE_TABLE),
                changes_only=reads_changes_only(context.run.tags),
            )
        except SourceConnectionError as exc:
            audit_failure(str(exc))
            raise dg.Failure(str(exc), allow_retries=True) from None
        except SourceTableMissingError as exc:
            audit_failure(str(exc))
            raise dg.Failure(str(exc), allow_retries=False) from None
        except SchemaMismatchError as exc:
            audit_failure(str(exc))
            if SCHEMA_CONTRACT in selected:
                yield schema_contract_result(exc.drift, exc.quarantined)
            meta = {"quarantined_rows": exc.quarantined, "batch_id": exc.batch_id}
            raise dg.Failure(str(exc), allow_retries=False, metadata=meta) from None
        except Exception as exc:
            audit_failure(f"extraction failed: {type(exc).__name__}: {exc}")
            raise
        if staged.schema_drift is not None:
            if staged.schema_drift.added:
                context.log.warning(staged.schema_drift.describe())
                append_rows(root, AUDIT_LOG, [{
                    "table_name": contract.bronze_table, "operation_type": "SCHEMA_EVOLUTION",
                    "start_timestamp": started, "end_timestamp": datetime.now(UTC), "status": SUCCESS,
                    "records_affected": staged.rows, "user_id": current_user(), "job_id": context.run.run_id,
                    "details": json.dumps({"policy": "addNewColumns",
                                           "added": [c for c, _ in staged.schema_drift.added],
                                           "batch_id": staged.ctx.batch_id}),
                }], options)
            if SCHEMA_CONTRACT in selected:
                unreadable = staged.metadata.get("bronze.unreadable_records")
                yield schema_contract_result(staged.schema_drift, int(unreadable) if unreadable else None)
        context.log.info(
            f"{contract.bronze_table}: read {staged.rows:,} rows ({staged.window}) "
            f"in {staged.extract_seconds:.2f} s"
        )
        # GX validates the staged batch in its worker process while the IO manager MERGEs it
        quality = start_quality_check(staged) if QUALITY_SCORE in selected else None
        staged.keep_after_merge = quality is not None
        try:
            yield dg.Output(staged, output_name=contract.bronze_table)  # the MERGE happens here
            if KEY_UNIQUENESS in selected:
                yield key_uniqueness_result(contract, bronze.table_uri(contract.bronze_table), options)
            if REFERENTIAL_INTEGRITY in selected:
                yield referential_integrity_result(contract, bronze.table_uri, options)
            if quality is not None:  # last: the GX worker has had the longest to finish
                yield quality_score_result(staged, quality)
        finally:
            staged.cleanup()

    return _bronze


@dg.definitions
def bronze_assets() -> dg.Definitions:
    return dg.Definitions(assets=[build_bronze_asset(c) for c in CONTRACTS.values()])
