"""``--repair``: re-load exactly the keys a reconciliation named, through the normal load (the
keys read of log-based CDC, :func:`~bronze_assets.lib.load.extract_and_stage` with ``keys``, and
the same MERGE, audited like every load). Keys the source no longer has are soft-deleted by that
MERGE; rows altered in bronze are rewritten although their hash is equal; pending keys are
re-loaded too, so a table restored to an old version is replayed to the present."""

from __future__ import annotations

import json
from typing import Any

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.control import audited
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.load.engine import LocalEngine
from bronze_assets.lib.load.lifecycle import commit
from bronze_assets.lib.load.stage import extract_and_stage
from bronze_assets.lib.reconcile.keys import by_integer_key, key_texts
from bronze_assets.lib.reconcile.model import ALTERED, TableReconciliation
from bronze_assets.lib.source.window import SourceKey

RECONCILE_REPAIR = "RECONCILE_REPAIR"


def repair_table(contract: Contract, report: TableReconciliation, dsn: str, storage: StorageLike,
                 job_id: str | None = None) -> dict[str, Any]:
    """Re-load the keys of ``report``'s mismatches (faults and pending); returns what the MERGE did."""
    storage = as_storage(storage)
    if not report.mismatches:
        return {"keys": 0}
    # a keyless table's rows are not read by key: its repair is a full load (a full snapshot's load)
    keys: list[SourceKey] | None = None
    if by_integer_key(contract):
        keys = sorted({int(m.key) for m in report.mismatches})
    elif not contract.keyless:  # keys named by text: read back as the key columns' types
        keys = list({key_texts(contract, str(m.key)) for m in report.mismatches})
    with audited(storage, contract.bronze_table, RECONCILE_REPAIR, job_id) as entry:
        staged = extract_and_stage(contract, dsn, storage, keys=keys)
        staged.rewrite_unchanged = any(m.kind == ALTERED for m in report.mismatches)
        outcome = commit(LocalEngine(storage), staged, storage, job_id)
        result = outcome.result
        done = {"keys": len(report.mismatches if keys is None else keys), "batch_id": staged.ctx.batch_id,
                "inserted": result.inserted, "updated": result.updated, "soft_deleted": result.soft_deleted,
                "forgotten_skipped": result.forgotten_skipped}
        entry.records_affected = result.inserted + result.updated + result.soft_deleted
        entry.details = json.dumps(done | {"counts": report.counts})
    return done
