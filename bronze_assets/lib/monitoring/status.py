"""``bronze status``: is every bronze table fresh, and what failed? One row per contract (the
landing tables' too, with the files their ledger holds and the files waiting).

Figures come from where they are true: the Delta table (version, files, rows by status, the
watermark in its commit metadata, the partitions its files live in), ``bz_audit_log`` (last
successful and last failed load), and the Dagster instance (latest asset check results), when one
is configured.

Every problem line names the command that fixes it: ``dagster asset materialize`` with the
partition(s) a partitioned asset needs (Dagster refuses a partitioned asset without one).

**The snapshot partition.** A daily table's ``$BRONZE_START_DATE`` partition is its initial
snapshot: all history before go-live lands there (ARCHITECTURE §2.4). A table whose later days
were loaded but not that one looks fresh while its history waits in the source, so it gets its own
state, ``NO SNAPSHOT`` (unhealthy, exit code 1), with the command that loads it. The snapshot counts
as loaded when the table's Delta log shows it — a live file in that ``load_date`` partition, or a
file holding rows updated before the end of that day (only a load that covers the snapshot brings
them: a CDC table's first run reads the whole table in its slot's snapshot, whatever its partition)
— else, when an instance is configured, when Dagster recorded that partition as materialized (a
snapshot that found no rows commits nothing). The add actions are read once anyway (for the file
count), so the first two cost nothing more; commit metadata would not do: ``bronze.partitions`` is
not written by every kind of load and the commits that carry it leave the log after its retention.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bronze_assets.contracts import CONTRACTS, LANDING_CONTRACTS, Contract, PartitionKind
from bronze_assets.contracts.freshness import WINDOWS
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.control import AUDIT_LOG, FAILED, SUCCESS, read_table
from bronze_assets.lib.delta.query import read_columns, value_counts
from bronze_assets.lib.delta.storage import Storage, StorageLike, as_storage
from bronze_assets.lib.enrich.metadata import ACTIVE
from bronze_assets.lib.load.landing_source import landing_folder, list_new_files
from bronze_assets.settings import Settings

FRESH, STALE, NEVER = "fresh", "STALE", "never loaded"
FAILED_STATE, NO_SNAPSHOT = "FAILED", "NO SNAPSHOT"  # states beyond freshness (TableStatus.state)
MATERIALIZE = "dagster asset materialize -m bronze_assets.definitions --select"


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
    partitioning: str = PartitionKind.NONE.value  # none / daily / monthly
    # daily tables: the $BRONZE_START_DATE partition (the initial snapshot) and whether it was
    # loaded; None for other tables
    snapshot_partition: str | None = None
    snapshot_loaded: bool | None = None
    load_command: str = ""  # loads the whole table: every partition up to the open one, in one run
    refresh_command: str = ""  # brings every change since the last load: the open partition's run
    snapshot_command: str | None = None  # daily tables: loads the snapshot partition
    # the last successful load's MERGE: rows by outcome, the engine's own metrics (rows copied,
    # files added / removed …) and rewrite_ratio (rows rewritten ÷ rows changed)
    last_merge: dict[str, Any] | None = None
    # contracts with history: its table, versions held, keys' current versions, Delta version
    # (versions 0 and delta_version None until a load wrote it)
    history: dict[str, Any] | None = None
    # landing tables (ARCHITECTURE §2.6): their folder, the files the ledger holds, the files
    # waiting (not yet landed; the oldest one's modification time) and those changed since landed
    landing: dict[str, Any] | None = None

    @property
    def healthy(self) -> bool:
        return self.freshness == FRESH and not self.last_load_failed and self.snapshot_loaded is not False

    @property
    def state(self) -> str:
        """What the status column shows: FAILED, never loaded, STALE, NO SNAPSHOT or fresh."""
        if self.last_load_failed:
            return FAILED_STATE
        if self.freshness == FRESH and self.snapshot_loaded is False:
            return NO_SNAPSHOT
        return self.freshness

    @property
    def action(self) -> str | None:
        """The command that fixes the table's state (None: healthy, or a failed load whose cause
        needs fixing first, see ``last_error``)."""
        if self.last_load_failed:
            return None
        if self.freshness == NEVER:
            return self.load_command
        if self.freshness == STALE:
            return self.refresh_command
        return self.snapshot_command if self.snapshot_loaded is False else None

    def as_json(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()} \
            | {"healthy": self.healthy, "state": self.state, "action": self.action}


def _loads(storage: Storage, audit_log: pa.Table | None = None
           ) -> dict[str, dict[str, tuple[datetime, str, str]]]:
    """{table: {status: (end time, error, details)}} of the latest LOAD audit row per table and status
    (``audit_log``: its rows, when read already)."""
    audit = read_table(storage, AUDIT_LOG) if audit_log is None else audit_log
    audit = audit.filter(pc.equal(audit["operation_type"], "LOAD"))
    latest: dict[str, dict[str, tuple[datetime, str, str]]] = {}
    columns = ["table_name", "status", "end_timestamp", "error_message", "details"]
    for row in audit.select(columns).to_pylist():
        slot = latest.setdefault(row["table_name"], {})
        seen = slot.get(row["status"])
        if seen is None or row["end_timestamp"] > seen[0]:
            slot[row["status"]] = (row["end_timestamp"], row["error_message"] or "", row["details"] or "")
    return latest


def _last_merge(details: str) -> dict[str, Any] | None:
    """What the last successful load's MERGE did (its engine's own metrics, the rewrite ratio)."""
    try:
        load = json.loads(details) if details else {}
    except ValueError:
        return None
    keys = ("engine", "inserted", "updated", "unchanged", "soft_deleted", "engine_metrics", "rewrite_ratio")
    return {k: load[k] for k in keys if k in load} or None


def _check_results(contract: Contract, instance: Any) -> tuple[dict[str, str], str | None]:
    """Latest result of every asset check of the table, from the Dagster instance."""
    import dagster as dg
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as S

    from bronze_assets.lib.quality.checks import check_names

    keys = [dg.AssetCheckKey(dg.AssetKey(contract.bronze_table), name) for name in check_names(contract)]
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


def commands(contract: Contract, now: datetime, settings: Settings) -> tuple[str, str, str | None]:
    """(load the whole table, refresh it, load its snapshot partition): the ``dagster asset
    materialize`` commands, with the partition keys Dagster's partitions definition gives at
    ``now``. The whole table is one run over every partition up to the open one
    (``--partition-range``: our partitioned assets have a single-run backfill policy), which also
    starts its watermark; the refresh is the open partition's run, which brings every change since
    the watermark; the snapshot is the daily tables' ``$BRONZE_START_DATE`` partition."""
    base = f"{MATERIALIZE} {contract.bronze_table}"
    kind = contract.partitioning.kind
    if kind is PartitionKind.NONE:
        return base, base, None
    daily = kind is PartitionKind.DAILY_LOAD_DATE
    go_live = settings.go_live()
    snapshot = f"{base} --partition {go_live.isoformat()}" if daily else None
    # the partitions Dagster shows (defs/partitions.py): from the first one to the open one
    first_day = go_live if daily else settings.partitions_start
    open_day = now.astimezone(UTC).date() if daily else now.astimezone(UTC).date().replace(day=1)
    if open_day < first_day:  # its first partition lies in the future
        first_key = f"{base} --partition {first_day.isoformat()}"
        return first_key, first_key, snapshot
    first, last = first_day.isoformat(), open_day.isoformat()
    whole = f"{base} --partition {first}" if first == last else f"{base} --partition-range {first}...{last}"
    return whole, f"{base} --partition {last}", snapshot


def snapshot_loaded(contract: Contract, actions: pa.Table | None, day: date, instance: Any = None) -> bool:
    """Whether the daily table's snapshot partition ``day`` (``$BRONZE_START_DATE``) was loaded,
    from its live files' add actions (None: no table), else from ``instance``: see the module
    docstring for the evidence and why it is this evidence."""
    if actions is not None and actions.num_rows:
        column = f"partition.{contract.partitioning.delta_column}"
        if column in actions.column_names and \
                pc.any(pc.equal(actions[column].cast(pa.date32()), pa.scalar(day, pa.date32()))).as_py():
            return True
        if "min.updated_at" in actions.column_names:
            oldest = pc.min(actions["min.updated_at"]).as_py()
            end = datetime.combine(day + timedelta(days=1), time(), UTC)
            if oldest is not None and _utc(oldest) < end:
                return True
    if instance is not None:
        import dagster as dg

        return day.isoformat() in instance.get_materialized_partitions(dg.AssetKey(contract.bronze_table))
    return False


def _utc(value: datetime | date) -> datetime:
    if not isinstance(value, datetime):
        return datetime.combine(value, time(), UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def table_status(contract: Contract, storage: Storage, now: datetime, loads: dict, instance: Any = None,
                 ) -> TableStatus:
    """The :class:`TableStatus` of ``contract``'s bronze table at ``now``."""
    fail_window, _ = WINDOWS[contract.cadence]
    status = TableStatus(contract.bronze_table, contract.cadence.value, fail_window / timedelta(hours=1),
                         partitioning=contract.partitioning.kind.value)
    status.load_command, status.refresh_command, status.snapshot_command = commands(contract, now,
                                                                                    storage.settings)
    dt = storage.open_shared(contract.bronze_table)
    actions = None
    if dt is not None:
        status.delta_version = dt.version()
        actions = pa.table(dt.get_add_actions(flatten=True))
        status.files = actions.num_rows
        by_status = value_counts(dt, "record_status", ACTIVE)
        status.active, status.deleted = by_status.get(ACTIVE, 0), by_status.get("DELETED", 0)
        status.forgotten = by_status.get("FORGOTTEN", 0)
        status.rows = sum(by_status.values())
        if contract.partitioning.kind is not PartitionKind.NONE:  # an unpartitioned table's loads
            status.watermark = CommitLog.read(dt).watermark()  # read it whole and record none
    if contract.history:
        status.history = history_status(contract, storage)
    mine = loads.get(contract.bronze_table, {})
    if SUCCESS in mine:
        status.last_success = mine[SUCCESS][0]
        status.last_merge = _last_merge(mine[SUCCESS][2])
        age = now - status.last_success
        status.age_hours = round(age / timedelta(hours=1), 2)
        status.freshness = FRESH if age <= fail_window else STALE
    if FAILED in mine:
        status.last_failure, status.last_error = mine[FAILED][:2]
        status.last_load_failed = status.last_success is None or status.last_failure > status.last_success
    if instance is not None:
        status.checks, status.failing_check = _check_results(contract, instance)
    if contract.landing is not None:
        status.landing = landing_status(contract, storage, now)
        status.load_command = status.refresh_command  # any partition's run lands every new file
        waiting = status.landing["oldest_waiting"]
        if waiting is not None and now - datetime.fromisoformat(waiting) > fail_window:
            status.freshness = STALE  # a file waits longer than the window: nothing lands them
    elif contract.partitioning.kind is PartitionKind.DAILY_LOAD_DATE:
        go_live = storage.settings.go_live()
        status.snapshot_partition = go_live.isoformat()
        if dt is not None:  # without a table there is no snapshot to judge (the table is the problem)
            status.snapshot_loaded = snapshot_loaded(contract, actions, go_live, instance)
    return status


def landing_status(contract: Contract, storage: Storage, now: datetime) -> dict[str, Any]:
    """A landing table's files: its folder, how many the ledger holds, how many wait (files
    still being written count too) and since when, how many changed after they were landed.
    Only reads (a ledger a killed run left uncopied is repaired by the next run)."""
    found = list_new_files(contract, storage, now, repair=False)
    oldest = min((f.modification_time for f in found.files), default=None)
    return {"folder": landing_folder(storage.settings.landing_root, contract),
            "files_ingested": found.ingested, "files_waiting": len(found.files) + len(found.skipped_recent),
            "files_changed": len(found.changed), "oldest_waiting": oldest.isoformat() if oldest else None}


def history_status(contract: Contract, storage: Storage) -> dict[str, Any]:
    """``bz_<name>_history`` of a contract with history: versions held, current versions (one per
    key the table holds), Delta version."""
    dt = storage.open_shared(contract.history_table)
    if dt is None:
        return {"table": contract.history_table, "versions": 0, "current": 0, "delta_version": None}
    valid_to = read_columns(dt, ["_valid_to"])["_valid_to"]
    return {"table": contract.history_table, "versions": len(valid_to), "current": valid_to.null_count,
            "delta_version": dt.version()}


def bronze_status(storage: StorageLike, now: datetime | None = None, instance: Any = None,
                  audit_log: pa.Table | None = None) -> list[TableStatus]:
    """One :class:`TableStatus` per contract, stale and failed tables first (``audit_log``: the
    audit log's rows, when the caller has read them already)."""
    now = now or datetime.now(UTC)
    storage = as_storage(storage)
    loads = _loads(storage, audit_log)
    contracts = [*CONTRACTS.values(), *LANDING_CONTRACTS.values()]
    rows = [table_status(c, storage, now, loads, instance) for c in contracts]
    return sorted(rows, key=lambda s: (s.healthy, s.table))


def _age(hours: float | None) -> str:
    if hours is None:
        return "-"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def render(statuses: list[TableStatus]) -> str:
    """A fixed-width table for the terminal, then one line per problem."""
    head = ("table", "state", "last load (UTC)", "age", "window", "rows", "active", "deleted",
            "version", "files", "checks", "watermark (UTC)")
    lines = [head]
    for s in statuses:
        checks = ", ".join(f"{n}={r}" for n, r in s.checks.items() if r != "passed") or \
            ("all passed" if s.checks else "-")
        lines.append((
            s.table, s.state,
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
                       f"{_age(s.freshness_window_hours)} freshness window ({s.cadence} table) — run "
                       f"`{s.refresh_command}`")
        elif s.freshness == NEVER:
            out.append(f"{s.table}: never loaded — run `{s.load_command}` or `bronze demo`")
        if s.snapshot_loaded is False and s.freshness != NEVER:
            out.append(f"{s.table}: its snapshot partition {s.snapshot_partition} (BRONZE_START_DATE, "
                       f"all history before go-live) was never loaded — run `{s.snapshot_command}`")
        if s.failing_check:
            out.append(f"{s.table}: {s.failing_check}")
        if s.landing is not None and s.landing["files_waiting"] and not s.last_load_failed:
            out.append(f"{s.table}: {s.landing['files_waiting']:,} file(s) wait in {s.landing['folder']} — "
                       f"run `{s.refresh_command}` (or start the sensor {s.table}_files)")
    for s in statuses:
        if s.landing is not None:
            f = s.landing
            changed = f", {f['files_changed']:,} changed since (landing_files_changed)" \
                if f["files_changed"] else ""
            out.append(f"{s.table}: {f['files_ingested']:,} file(s) landed from {f['folder']} (ledger "
                       f"bz_landing_files){changed}")
        if s.history is not None:
            h = s.history
            out.append(f"{h['table']}: {h['versions']:,} versions, {h['current']:,} current" + (
                f", Delta version {h['delta_version']}" if h["delta_version"] is not None
                else f" (written by the next load of {s.table})"))
    return "\n".join(out)


def as_json(statuses: list[TableStatus]) -> str:
    return json.dumps({"healthy": all(s.healthy for s in statuses),
                       "tables": [s.as_json() for s in statuses]}, indent=2)
