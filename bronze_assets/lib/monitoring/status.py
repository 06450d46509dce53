"""``bronze status``: is every bronze table fresh, and what failed? One row per contract.

Figures come from where they are true: the Delta table (version, files, rows by status, the
watermark in its commit metadata), ``bz_audit_log`` (last successful and last failed load), and
the Dagster instance (latest asset check results), when one is configured.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow.compute as pc

from bronze_assets.contracts import CONTRACTS, Contract
from bronze_assets.defs.freshness import WINDOWS
from bronze_assets.lib.delta.control import AUDIT_LOG, FAILED, SUCCESS, read_table
from bronze_assets.lib.delta.merge import latest_watermark, read_columns, table_stats
from bronze_assets.lib.delta.storage import Storage, StorageLike, as_storage

FRESH, STALE, NEVER = "fresh", "STALE", "never loaded"


@dataclass
class TableStatus:
    """The health of one bronze table."""

    table: str
    cadence: str
    freshness_window_hours: float
    last_success: datetime | None = None
    age_hours: float | None = None
    freshness: str = NEVER
    rows: int = 0
    active: int = 0
    deleted: int = 0
    forgotten: int = 0
    delta_version: int | None = None
    files: int = 0
    watermark: datetime | None = None
    checks: dict[str, str] = field(default_factory=dict)  # check name -> passed / warn / failed
    failing_check: str | None = None  # headline of the first failing check
    last_failure: datetime | None = None
    last_error: str | None = None
    last_load_failed: bool = False

    @property
    def healthy(self) -> bool:
        return self.freshness == FRESH and not self.last_load_failed

    def as_json(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()} \
            | {"healthy": self.healthy}


def _loads(storage: Storage) -> dict[str, dict[str, tuple[datetime, str]]]:
    """{table: {status: (end time, error)}} of the latest LOAD audit row per table and status."""
    audit = read_table(storage, AUDIT_LOG)
    audit = audit.filter(pc.equal(audit["operation_type"], "LOAD"))
    latest: dict[str, dict[str, tuple[datetime, str]]] = {}
    for row in audit.select(["table_name", "status", "end_timestamp", "error_message"]).to_pylist():
        slot = latest.setdefault(row["table_name"], {})
        seen = slot.get(row["status"])
        if seen is None or row["end_timestamp"] > seen[0]:
            slot[row["status"]] = (row["end_timestamp"], row["error_message"] or "")
    return latest


def _check_results(contract: Contract, instance: Any) -> tuple[dict[str, str], str | None]:
    """Latest result of every asset check of the table, from the Dagster instance."""
    import dagster as dg
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as S

    from bronze_assets.defs.checks import check_specs

    keys = [spec.key for spec in check_specs(contract)]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    results, headline = {}, None
    for key in keys:
        record = records.get(key)
        if record is None or record.status is S.PLANNED:
            continue
        evaluation = record.event.dagster_event.event_specific_data if record.event else None
        passed = record.status is S.SUCCEEDED and (evaluation is None or evaluation.passed)
        warn = evaluation is not None and evaluation.severity is dg.AssetCheckSeverity.WARN
        results[key.name] = "passed" if passed else ("warn" if warn else "failed")
        if not passed and headline is None:
            description = (evaluation.description or "") if evaluation else record.status.value
            headline = f"{key.name}: {description}"[:200]
    return results, headline


def table_status(contract: Contract, storage: Storage, now: datetime, loads: dict, instance: Any = None,
                 ) -> TableStatus:
    """The :class:`TableStatus` of ``contract``'s bronze table at ``now``."""
    fail_window, _ = WINDOWS[contract.cadence]
    status = TableStatus(contract.bronze_table, contract.cadence.value, fail_window / timedelta(hours=1))
    dt = storage.open(contract.bronze_table)
    if dt is not None:
        status.delta_version = dt.version()
        _, status.files = table_stats(dt)
        counts = pc.value_counts(read_columns(dt, ["record_status"])["record_status"]).to_pylist()
        by_status = {c["values"]: c["counts"] for c in counts}
        status.active, status.deleted = by_status.get("ACTIVE", 0), by_status.get("DELETED", 0)
        status.forgotten = by_status.get("FORGOTTEN", 0)
        status.rows = sum(by_status.values())
        status.watermark = latest_watermark(dt)
    mine = loads.get(contract.bronze_table, {})
    if SUCCESS in mine:
        status.last_success = mine[SUCCESS][0]
        age = now - status.last_success
        status.age_hours = round(age / timedelta(hours=1), 2)
        status.freshness = FRESH if age <= fail_window else STALE
    if FAILED in mine:
        status.last_failure, status.last_error = mine[FAILED]
        status.last_load_failed = status.last_success is None or status.last_failure > status.last_success
    if instance is not None:
        status.checks, status.failing_check = _check_results(contract, instance)
    return status


def bronze_status(storage: StorageLike, now: datetime | None = None, instance: Any = None,
                  ) -> list[TableStatus]:
    """One :class:`TableStatus` per contract, stale and failed tables first."""
    now = now or datetime.now(UTC)
    storage = as_storage(storage)
    loads = _loads(storage)
    rows = [table_status(c, storage, now, loads, instance) for c in CONTRACTS.values()]
    return sorted(rows, key=lambda s: (s.healthy, s.table))


def _age(hours: float | None) -> str:
    if hours is None:
        return "-"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def render(statuses: list[TableStatus]) -> str:
    """A fixed-width table for the terminal, then one line per problem."""
    head = ("table", "freshness", "last load (UTC)", "age", "window", "rows", "active", "deleted",
            "version", "files", "checks", "watermark (UTC)")
    lines = [head]
    for s in statuses:
        checks = ", ".join(f"{n}={r}" for n, r in s.checks.items() if r != "passed") or \
            ("all passed" if s.checks else "-")
        lines.append((
            s.table, ("FAILED" if s.last_load_failed else s.freshness),
            s.last_success.strftime("%Y-%m-%d %H:%M") if s.last_success else "-", _age(s.age_hours),
            _age(s.freshness_window_hours), f"{s.rows:,}", f"{s.active:,}", f"{s.deleted:,}",
            "-" if s.delta_version is None else str(s.delta_version), str(s.files), checks,
            s.watermark.strftime("%Y-%m-%d %H:%M") if s.watermark else "-",
        ))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    for s in statuses:
        if s.last_load_failed:
            out.append(f"{s.table}: last load failed at {s.last_failure:%Y-%m-%d %H:%M} — {s.last_error}")
        elif s.freshness == STALE:
            out.append(f"{s.table}: last successful load {_age(s.age_hours)} ago, beyond its "
                       f"{_age(s.freshness_window_hours)} freshness window ({s.cadence} table)")
        elif s.freshness == NEVER:
            out.append(f"{s.table}: never loaded — run `dagster asset materialize -m "
                       f"bronze_assets.definitions --select {s.table}` or `bronze demo`")
        if s.failing_check:
            out.append(f"{s.table}: {s.failing_check}")
    return "\n".join(out)


def as_json(statuses: list[TableStatus]) -> str:
    return json.dumps({"healthy": all(s.healthy for s in statuses),
                       "tables": [s.as_json() for s in statuses]}, indent=2)
