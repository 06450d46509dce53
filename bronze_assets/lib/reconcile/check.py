"""The ``reconciliation`` asset check (ARCHITECTURE §2.8) as an engine- and Dagster-neutral outcome
(``defs/checks.py`` turns it into a ``dg.AssetCheckResult``): a warning when bronze and the source
disagree, with the counts per kind and sample keys in its metadata."""

from __future__ import annotations

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.storage import StorageLike
from bronze_assets.lib.quality.checks import WARN, CheckOutcome
from bronze_assets.lib.reconcile.model import FAULTS, PENDING, TableReconciliation
from bronze_assets.lib.reconcile.run import BronzeSideChooser, reconcile

RECONCILIATION = "reconciliation"
DESCRIPTION = ("Bronze equals the source: count and checksum per key bucket, drilling down only into "
               "buckets that differ (extra, missing and differing keys; rows changed since the last "
               "load are pending). Warning only; bronze reconcile --repair fixes what it finds.")


def reconciliation_outcome(report: TableReconciliation) -> CheckOutcome:
    """WARN unless the table could be compared and no key is faulty (pending keys pass)."""
    counts = report.counts
    metadata: dict[str, object] = {
        "source_rows": report.source_rows, "bronze_active_rows": report.bronze_active_rows,
        "buckets": report.buckets, "buckets_differing": report.buckets_differing,
        "buckets_hashed": report.buckets_hashed, "buckets_from_state": report.buckets_from_state,
        "rows_compared": report.rows_compared, "seconds": round(report.seconds, 3),
        **{kind: counts[kind] for kind in (*FAULTS, PENDING)},
    }
    if report.pending_since is not None:
        metadata["pending_since"] = report.pending_since.isoformat()
    samples = report.samples()
    if samples:
        metadata["sample_keys"] = samples
    if report.problem:
        metadata["problem"] = report.problem
        if report.action:
            metadata["action"] = report.action
        description = report.problem
    elif report.faults:
        found = ", ".join(f"{counts[k]:,} {k}" for k in FAULTS if counts[k])
        description = f"bronze differs from {report.source_table}: {found} (bronze reconcile --repair)"
    else:
        description = f"bronze equals {report.source_table}" + (
            f" ({counts[PENDING]:,} rows changed since the last load are pending)" if counts[PENDING] else "")
    return CheckOutcome(RECONCILIATION, passed=report.healthy, severity=WARN, description=description,
                        metadata=metadata)


def reconciliation(contract: Contract, dsn: str, storage: StorageLike, run_id: str | None = None,
                   bronze_side: BronzeSideChooser | None = None) -> CheckOutcome:
    """Reconcile one table (recorded in ``bz_reconciliation`` under ``run_id``) and judge it."""
    run = reconcile([contract], dsn, storage, run_id=run_id, job_id=run_id, bronze_side=bronze_side)
    return reconciliation_outcome(run.tables[0])
