"""Asset checks of every bronze asset: their specs, and the lifecycle's check outcomes
(:mod:`bronze_assets.lib.quality.checks`) as ``dg.AssetCheckResult``."""

from typing import Any

import dagster as dg

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.quality import checks
from bronze_assets.lib.quality.checks import (
    KEY_UNIQUENESS,
    LANDING_FILES_CHANGED,
    QUALITY_KPI,
    QUALITY_SCORE,
    REFERENTIAL_INTEGRITY,
    SCHEMA_CONTRACT,
    URL_KEYS,
    CheckOutcome,
)
from bronze_assets.lib.reconcile.check import DESCRIPTION as RECONCILIATION_DESCRIPTION
from bronze_assets.lib.reconcile.check import RECONCILIATION, reconciliation

__all__ = ["KEY_UNIQUENESS", "QUALITY_KPI", "QUALITY_SCORE", "RECONCILIATION", "REFERENTIAL_INTEGRITY",
           "SCHEMA_CONTRACT", "as_check_result", "build_reconciliation_check", "check_specs",
           "key_uniqueness_result", "referential_integrity_result"]


def check_specs(contract: Contract) -> list[dg.AssetCheckSpec]:
    asset = contract.bronze_table
    return [
        dg.AssetCheckSpec(SCHEMA_CONTRACT, asset=asset, blocking=True,
                          description="Source columns and types match the contract before anything is "
                                      "merged; a mismatch fails the run and quarantines the batch."),
        dg.AssetCheckSpec(QUALITY_SCORE, asset=asset,
                          description="Great Expectations suite from the contract on the loaded batch; "
                                      f"warns when the average per-record score is below {QUALITY_KPI:g}."),
        dg.AssetCheckSpec(KEY_UNIQUENESS, asset=asset,
                          description="No primary key appears twice among the bronze rows."),
        *([dg.AssetCheckSpec(REFERENTIAL_INTEGRITY, asset=asset,
                             description="Orphan count and rate per foreign key against the parent's "
                                         "ACTIVE bronze keys (warning only).")]
          if contract.foreign_keys else []),
        *([dg.AssetCheckSpec(LANDING_FILES_CHANGED, asset=asset,
                             description="Files the table ingested that have changed since (same path, "
                                         "other size or time); warning only.")]
          if contract.landing is not None else []),
    ]


def metadata_value(key: str, value: Any) -> Any:
    """A plain metadata value as Dagster shows it: links as URLs, samples as JSON."""
    if key in URL_KEYS and isinstance(value, str):
        return dg.MetadataValue.url(value)
    if isinstance(value, (list, dict)):
        return dg.MetadataValue.json(value)
    return value


def as_check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    severity = dg.AssetCheckSeverity.ERROR if outcome.severity == checks.ERROR else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(
        check_name=outcome.name, passed=outcome.passed, description=outcome.description, severity=severity,
        metadata={k: metadata_value(k, v) for k, v in outcome.metadata.items()})


def key_uniqueness_result(contract: Contract, storage: Storage) -> dg.AssetCheckResult:
    return as_check_result(checks.key_uniqueness(contract, storage))


def referential_integrity_result(contract: Contract, storage: Storage) -> dg.AssetCheckResult:
    return as_check_result(checks.referential_integrity(contract, storage))


def build_reconciliation_check(contract: Contract, source_key: str = "source") -> dg.AssetChecksDefinition:
    """The ``reconciliation`` check of ``bz_<table>``: a check of its own (not part of the load),
    run by the daily reconciliation schedule or from the UI; it reads the source through the
    ``source_key`` resource (as the table's asset does) and bronze through ``bronze``, with Spark
    SQL when the ``engine`` resource loads the table on Spark."""

    @dg.asset_check(asset=contract.bronze_table, name=RECONCILIATION, blocking=False,
                    description=RECONCILIATION_DESCRIPTION,
                    required_resource_keys={source_key, "bronze", "engine"})
    def _reconciliation(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        res = context.resources
        outcome = reconciliation(contract, getattr(res, source_key).resolved_dsn(), res.bronze.storage(),
                                 run_id=context.run.run_id, bronze_side=res.engine.bronze_side)
        return as_check_result(outcome)

    return _reconciliation
