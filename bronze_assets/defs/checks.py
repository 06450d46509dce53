"""Asset checks of every bronze asset: their specs, and the lifecycle's check outcomes
(:mod:`bronze_assets.lib.quality.checks`) as ``dg.AssetCheckResult``."""

from __future__ import annotations

from typing import Any

import dagster as dg

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.quality import checks
from bronze_assets.lib.quality.checks import (
    KEY_UNIQUENESS,
    QUALITY_KPI,
    QUALITY_SCORE,
    REFERENTIAL_INTEGRITY,
    SCHEMA_CONTRACT,
    URL_KEYS,
    CheckOutcome,
)

__all__ = ["KEY_UNIQUENESS", "QUALITY_KPI", "QUALITY_SCORE", "REFERENTIAL_INTEGRITY", "SCHEMA_CONTRACT",
           "as_check_result", "check_specs", "key_uniqueness_result", "referential_integrity_result"]


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
