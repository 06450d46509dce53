"""``bronze reconcile``: reconcile, optionally repair and reconcile the repaired tables again,
and render the outcome as a table or JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.reconcile.ledger import mark_repaired
from bronze_assets.lib.reconcile.model import FAULTS, OK, Reconciliation
from bronze_assets.lib.reconcile.repair import repair_table
from bronze_assets.lib.reconcile.run import BronzeSideChooser, reconcile


def reconcile_and_repair(contracts: Sequence[Contract], dsn: str, storage: StorageLike, *, deep: bool = False,
                         repair: bool = False, job_id: str | None = None,
                         bronze_side: BronzeSideChooser | None = None) -> Reconciliation:
    """Reconcile ``contracts``; with ``repair``, re-load every mismatching key of each table that
    could be compared, reconcile those tables again in a new snapshot, and mark the keys that now
    match as repaired. The result shows each table as it stands at the end, with what the repair
    did (and the counts found before it) under ``repair``."""
    storage = as_storage(storage)
    run = reconcile(contracts, dsn, storage, deep=deep, job_id=job_id, bronze_side=bronze_side)
    if not repair:
        return run
    by_name = {c.bronze_table: c for c in contracts}
    before = {t.table: t for t in run.tables if t.state == OK and t.mismatches}
    if not before:
        return run
    done = {name: repair_table(by_name[name], report, dsn, storage, job_id)
            for name, report in before.items()}
    again = reconcile([by_name[n] for n in before], dsn, storage, deep=deep, job_id=job_id,
                      bronze_side=bronze_side)
    after = {t.table: t for t in again.tables}
    for name, report in before.items():
        still = {m.key for m in after[name].mismatches}
        fixed = [m.key for m in report.mismatches if m.key not in still]
        mark_repaired(storage, run.run_id, name, fixed)
        after[name].repair = done[name] | {"found": report.counts, "check_run_id": again.run_id,
                                           "repaired_keys": len(set(fixed))}
    run.tables = [after.get(t.table, t) for t in run.tables]
    return run


def _n(value: int) -> str:
    return f"{value:,}" if value else "-"


def render(run: Reconciliation) -> str:
    """The run as an aligned table, then per table its problem and fix, sample keys and repair."""
    header = (f"{'table':<20} {'state':<22} {'source':>10} {'bronze':>10} {'buckets':>8} {'hashed':>8} "
              f"{'differ':>7} " + " ".join(f"{k:>8}" for k in (*FAULTS, "pending")))
    lines = [header]
    notes: list[str] = []
    for t in run.tables:
        state = t.as_json()["state"]
        counts = t.counts
        lines.append(f"{t.table:<20} {state:<22} {t.source_rows:>10,} {t.bronze_active_rows:>10,} "
                     f"{t.buckets:>8,} {t.buckets_hashed:>8,} {t.buckets_differing:>7,} "
                     + " ".join(f"{_n(counts[k]):>8}" for k in (*FAULTS, "pending")))
        if t.problem:
            notes.append(f"{t.table}: {t.problem}" + (f" — run: {t.action}" if t.action else ""))
        for kind, keys in t.samples().items():
            more = counts[kind] - len(keys)
            notes.append(f"{t.table}: {kind} keys {', '.join(map(str, keys))}"
                         + (f" (+{more:,} more)" if more else ""))
        if t.deep_note:
            notes.append(f"{t.table}: --deep {t.deep_note}")
        if t.repair:
            r = t.repair
            notes.append(f"{t.table}: repaired {r['keys']:,} keys (batch {r['batch_id']}): "
                         f"{r['inserted']:,} inserted, {r['updated']:,} updated, {r['soft_deleted']:,} "
                         f"soft-deleted; found before: "
                         + ", ".join(f"{k} {v:,}" for k, v in r["found"].items() if v))
    if any(not t.healthy for t in run.tables) and not any(t.repair for t in run.tables):
        notes.append("bronze reconcile --repair re-loads the mismatching keys through the normal MERGE "
                     "(pending keys are brought by the next load anyway)")
    lines += notes
    lines.append(f"run {run.run_id}: {'bronze equals the source' if run.healthy else 'faults found'} "
                 f"(mismatches in bz_reconciliation)")
    return "\n".join(lines)


def as_json(run: Reconciliation) -> str:
    return json.dumps(run.as_json(), default=str)
