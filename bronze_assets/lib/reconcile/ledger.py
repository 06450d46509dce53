"""``bz_reconciliation``: one row per mismatching key a reconciliation found (run, table, key,
kind, detected_at), and when ``--repair`` fixed it (``repaired_at``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from bronze_assets.lib.delta.control import RECONCILIATION, append_rows
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.reconcile.model import TableReconciliation


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def record_mismatches(storage: StorageLike, run_id: str, report: TableReconciliation, detected_at: datetime,
                      ) -> int:
    """Append the table's mismatches (faults and pending keys) of run ``run_id``."""
    return append_rows(storage, RECONCILIATION, [
        {"run_id": run_id, "table_name": report.table, "key": str(m.key), "kind": m.kind,
         "detected_at": detected_at, "repaired_at": None}
        for m in report.mismatches])


def mark_repaired(storage: StorageLike, run_id: str, table: str, keys: Iterable[int | str]) -> int:
    """Set ``repaired_at`` on the run's rows of ``keys`` in ``table``; returns the rows updated."""
    listed = sorted({str(k) for k in keys})
    dt = as_storage(storage).open(RECONCILIATION)
    if dt is None or not listed:
        return 0
    now = datetime.now(UTC).isoformat()
    predicate = (f"run_id = {_literal(run_id)} AND table_name = {_literal(table)} AND repaired_at IS NULL "
                 f"AND key IN ({', '.join(_literal(k) for k in listed)})")
    metrics = dt.update(updates={"repaired_at": f"CAST('{now}' AS TIMESTAMP)"}, predicate=predicate)
    return int(metrics.get("num_updated_rows", 0))
