"""The bronze asset factory: one asset per table contract, built by the ``BronzeTables``
component (:mod:`bronze_assets.defs.bronze_tables`) for every table its ``defs.yaml`` declares. The asset
body is the same for every load engine (:mod:`bronze_assets.defs.engines`)."""


import dagster as dg

from bronze_assets.contracts import CONTRACTS, Contract, PgType
from bronze_assets.defs.checks import check_specs
from bronze_assets.defs.engines import BronzeEngine, materialize, request_for
from bronze_assets.defs.freshness import freshness_policy
from bronze_assets.defs.partitions import partitions_def
from bronze_assets.defs.pipes import BronzePipes
from bronze_assets.defs.resources import BronzeStorage, PostgresSource
from bronze_assets.defs.schedules import load_step, reads_changes_only
from bronze_assets.lib.enrich.metadata import METADATA_FIELDS, ROW_KEY_FIELD
from bronze_assets.settings import Settings

GROUP = "bronze"
OWNERS = ["team:data-engineering"]
IO_MANAGER_KEY = "bronze_io_manager"
# applies only to what a retry can fix (a lost connection, a conflict, a transient object-store
# error): every other failure leaves as dg.Failure(allow_retries=False) (lib/failures.py)
RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def _origin(contract: Contract) -> str:
    """Where the table's rows come from: the source table, or the landing folder (§2.6)."""
    return f"$BRONZE_LANDING_ROOT/{contract.name}/" if contract.landing else contract.source_ref


def _describe(contract: Contract, column: str) -> str:
    return "primary key" if column in contract.primary_key else "source column"


def column_schema(contract: Contract) -> dg.TableSchema:
    """Column schema shown in the UI: source columns then bronze metadata columns."""
    cols = [
        dg.TableColumn(c.name, c.type.value, description=_describe(contract, c.name))
        for c in contract.columns
    ]
    cols += [dg.TableColumn(f.name, str(f.type), description="bronze metadata") for f in METADATA_FIELDS]
    if contract.keyless:
        cols.append(dg.TableColumn(ROW_KEY_FIELD.name, str(ROW_KEY_FIELD.type),
                                   description="bronze metadata: the row's identity (record_hash#n), "
                                               "the table having no primary key"))
    if contract.partitioning.delta_column:
        cols.append(dg.TableColumn(contract.partitioning.delta_column, PgType.DATE.value,
                                   description="Delta partition column"))
    return dg.TableSchema(columns=cols)


def build_bronze_asset(contract: Contract, source_key: str = "source", settings: Settings | None = None,
                       ) -> dg.AssetsDefinition:
    """One software-defined asset ``bz_<table>`` whose output the bronze IO manager MERGEs.

    ``source_key`` names the :class:`PostgresSource` resource it reads (``source``: the shared one,
    ``$BRONZE_SOURCE_DSN`` or the embedded server; a tables file naming another DSN variable
    brings a resource of its own). ``settings``: the definitions' (its partitions start from them;
    default: :func:`~bronze_assets.defs.edge.edge_settings`)."""
    parts = partitions_def(contract, settings)

    spec = dg.AssetSpec(
        key=contract.bronze_table,
        group_name=GROUP,
        kinds={"files", "delta"} if contract.landing else {"postgres", "delta"},
        owners=OWNERS,
        description=f"Bronze copy of {_origin(contract)}: {contract.description}",
        partitions_def=parts,
        freshness_policy=freshness_policy(contract.cadence),
        code_version=contract.version,
        tags={"load_pattern": contract.load_pattern.value, "cadence": contract.cadence.value},
        metadata={
            "dagster/column_schema": column_schema(contract),
            "dagster/table_name": contract.bronze_table,
            "primary_key": ", ".join(contract.primary_key) or
            f"none: a full snapshot, rows identified by {contract.merge_key[0]} (record_hash#n)",
            "zorder_columns": ", ".join(contract.zorder_columns),
            "source_table": _origin(contract),
        },
    ).with_io_manager_key(IO_MANAGER_KEY)

    specs = [spec]
    if contract.history:  # written by the same step, from the same MERGE plan (lib/delta/history.py)
        specs.append(dg.AssetSpec(
            key=contract.history_table,
            deps=[contract.bronze_table],
            group_name=GROUP,
            kinds={"delta"},
            owners=OWNERS,
            description=f"Every version of each key of {contract.bronze_table} (SCD type 2: _valid_from, "
                        f"_valid_to, _is_deleted), written by the same load",
            code_version=contract.version,
            partitions_def=parts,  # one step: every spec of a partitioned step shares its partitions
            skippable=True,  # a run that selects only bz_<name> reports none
            metadata={"dagster/table_name": contract.history_table,
                      "primary_key": ", ".join([*contract.primary_key, "_valid_from"])},
        ))

    asset = dg.multi_asset(
        name=load_step(contract),
        specs=specs,
        check_specs=check_specs(contract),
        can_subset=True,  # a run may leave the checks out
        partitions_def=parts,
        backfill_policy=dg.BackfillPolicy.single_run() if parts else None,
        retry_policy=RETRY,
        # one run per table at a time: the instance gives each pool one slot and the run queue
        # holds a run until every pool of its tables is free (dagster.yaml, `concurrency`)
        pool=contract.bronze_table,
        # another source resource than `source`: every resource by key (Dagster takes them either as
        # parameters or as keys, not both)
        required_resource_keys=None if source_key == "source" else {source_key, "bronze", "engine", "pipes"},
    )

    def load(context: dg.AssetExecutionContext, source: PostgresSource, bronze: BronzeStorage,
             engine: BronzeEngine, pipes: BronzePipes):
        request = request_for(context, contract, reads_changes_only(context.run.tags))
        yield from materialize(context, request, source, bronze, engine, pipes)

    if source_key == "source":
        @asset
        def _bronze(context: dg.AssetExecutionContext, source: PostgresSource, bronze: BronzeStorage,
                    engine: BronzeEngine, pipes: BronzePipes):
            yield from load(context, source, bronze, engine, pipes)
    else:
        @asset
        def _bronze(context: dg.AssetExecutionContext):
            res = context.resources
            yield from load(context, getattr(res, source_key), res.bronze, res.engine, res.pipes)

    return _bronze


def table_key(asset: dg.AssetsDefinition) -> str:
    """The table an asset definition materializes: its one key, or a bronze load step's
    ``bz_<name>`` (the ``bz_<name>_history`` it also writes sorts after it)."""
    return min(k.to_user_string() for k in asset.keys)


def bronze_assets() -> dg.Definitions:
    """Every table's asset outside the component tree (tests, tools). Not a ``@dg.definitions``:
    in the code location the ``BronzeTables`` components build them, each from its own file."""
    return dg.Definitions(assets=[build_bronze_asset(c) for c in CONTRACTS.values()])
