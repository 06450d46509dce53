"""The ten bronze assets, all built by one factory from the table contracts."""


from concurrent.futures import ThreadPoolExecutor

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
)
from bronze_assets.defs.partitions import as_utc, partitions_def
from bronze_assets.defs.resources import BronzeStorage, PostgresSource
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE
from bronze_assets.lib.enrich.metadata import METADATA_FIELDS
from bronze_assets.lib.load import SchemaMismatchError, extract_and_stage
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
        window = None
        if context.has_partition_key_range or context.has_partition_key:
            tw = context.partition_time_window
            window = (as_utc(tw.start), as_utc(tw.end))
        try:
            dsn = source.resolved_dsn()
        except SourceConnectionError as exc:
            raise dg.Failure(str(exc), allow_retries=True) from None
        try:
            staged = extract_and_stage(
                contract, dsn, bronze.table_uri(contract.bronze_table),
                partition=window, storage_options=bronze.storage_options or None,
                quarantine_uri=bronze.table_uri(QUARANTINE_TABLE),
            )
        except SchemaMismatchError as exc:
            if SCHEMA_CONTRACT in selected:
                yield schema_contract_result(exc.drift, exc.quarantined)
            meta = {"quarantined_rows": exc.quarantined, "batch_id": exc.batch_id}
            raise dg.Failure(str(exc), allow_retries=False, metadata=meta) from None
        if staged.schema_drift is not None:
            if staged.schema_drift.added:
                context.log.warning(staged.schema_drift.describe())
            if SCHEMA_CONTRACT in selected:
                yield schema_contract_result(staged.schema_drift)
        context.log.info(
            f"{contract.bronze_table}: read {staged.rows:,} rows ({staged.window}) "
            f"in {staged.extract_seconds:.2f} s"
        )
        # GX validates the staged batch on a worker thread while the IO manager MERGEs it
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gx") as pool:
            quality = pool.submit(quality_score_result, staged) if QUALITY_SCORE in selected else None
            staged.keep_after_merge = quality is not None
            try:
                yield dg.Output(staged, output_name=contract.bronze_table)  # the MERGE happens here
                if quality is not None:
                    yield quality.result()
            finally:
                staged.cleanup()
        options = bronze.storage_options or None
        if KEY_UNIQUENESS in selected:
            yield key_uniqueness_result(contract, bronze.table_uri(contract.bronze_table), options)
        if REFERENTIAL_INTEGRITY in selected:
            yield referential_integrity_result(contract, bronze.table_uri, options)

    return _bronze


@dg.definitions
def bronze_assets() -> dg.Definitions:
    return dg.Definitions(assets=[build_bronze_asset(c) for c in CONTRACTS.values()])
