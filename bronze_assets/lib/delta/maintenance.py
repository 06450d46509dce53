"""Table maintenance with delta-rs: OPTIMIZE + Z-ORDER (which compacts), VACUUM, storage growth.

* **Z-ORDER** uses the contract's ``zorder_columns``. delta-rs z-orders *within* each Delta
  partition, and it rewrites every file it is given (a one-file partition is rewritten too), so
  only *dirty* partitions are optimized: those with two or more files of which at least one was
  written after the last OPTIMIZE. A second run on an unchanged table therefore commits nothing.
  All dirty partitions go into one ``z_order`` call (one commit) through an ``in`` filter.
* **VACUUM** keeps ``retention_hours`` (default 168 = 7 days) with
  ``enforce_retention_duration=True``: delta-rs refuses a retention below the table's
  ``delta.deletedFileRetentionDuration``, and files removed by OPTIMIZE/MERGE stay on storage
  until their removal is older than the retention, so readers and time travel inside the window
  keep working. ``full=True`` (Spark's VACUUM semantics) also deletes unreferenced orphan files
  (e.g. from a killed write) once their modification time is older than the retention.
* **Storage growth** compares the *snapshot* size (sum of the active files' sizes in the Delta log)
  now with the snapshot ~24 h earlier, found by time travel (``load_as_version(datetime)``).
  The log is the source of truth for every table (no dependence on what the loads wrote to
  ``bz_cost_tracking``) and does not move when VACUUM deletes unreferenced files.

OPTIMIZE conflicts with a concurrent MERGE/DELETE on the same files; schedule maintenance
outside the load windows (or retry it).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
from deltalake import DeltaTable

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.query import table_stats
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.delta.write_options import target_file_bytes, writer_properties
from bronze_assets.lib.delta.writers import refuse_deletion_vectors

DEFAULT_RETENTION_HOURS = 168


@dataclass
class MaintenanceReport:
    """What one maintenance pass did to one table (``as_metadata()`` for Dagster)."""

    table: str
    uri: str
    zorder_columns: list[str]
    partition_column: str | None
    retention_hours: int
    version_before: int
    version_after: int = 0
    files_before: int = 0
    bytes_before: int = 0
    files_after_optimize: int = 0
    bytes_after_optimize: int = 0
    partitions_optimized: int = 0
    files_removed_by_vacuum: int = 0
    # Everything under the table directory except _delta_log (live + removed-but-retained +
    # orphans); measured for local tables only, None on object stores.
    storage_files_before: int | None = None
    storage_bytes_before: int | None = None
    storage_files_after_vacuum: int | None = None
    storage_bytes_after_vacuum: int | None = None
    optimize_seconds: float = 0.0
    vacuum_seconds: float = 0.0
    seconds: float = 0.0
    vacuumed_files: list[str] = field(default_factory=list, repr=False)

    def as_metadata(self) -> dict[str, Any]:
        """Flat JSON-able figures (the vacuumed file list is summarised by its count)."""
        data = asdict(self)
        data.pop("vacuumed_files")
        return data


@dataclass(frozen=True)
class StorageGrowth:
    """Snapshot size of a table now vs. ``window`` earlier (``bytes_before`` None: no table then)."""

    table: str
    bytes_now: int
    files_now: int
    version_now: int
    bytes_before: int | None
    version_before: int | None
    window_hours: float

    @property
    def ratio(self) -> float | None:
        """bytes_now / bytes_before (1.0 = no growth); None when there is nothing to compare."""
        if self.bytes_before is None or self.bytes_before <= 0:
            return None
        return self.bytes_now / self.bytes_before

    @property
    def growth(self) -> float | None:
        """Relative growth over the window (0.25 = +25 %); None when there is nothing to compare."""
        ratio = self.ratio
        return None if ratio is None else ratio - 1.0


def maintain_table(
    storage: StorageLike,
    table: str,
    contract: Contract | None = None,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    *,
    zorder_columns: list[str] | None = None,
    full_vacuum: bool = True,
    target_size: int | None = None,
    max_concurrent_tasks: int | None = None,
    max_spill_size: int | None = None,
    dt: DeltaTable | None = None,
) -> MaintenanceReport:
    """OPTIMIZE (Z-ORDER on the contract's columns, else plain compaction) then VACUUM ``table``.

    ``contract`` gives the z-order and partition columns; ``zorder_columns`` overrides them (or
    serves tables without a contract, e.g. the control tables: pass ``[]`` for compaction only).
    ``target_size``/``max_concurrent_tasks``/``max_spill_size`` pass through to delta-rs; the
    target size defaults to the contract's file size (4 MiB for a CDC table, whichever engine
    created it), else the table's ``delta.targetFileSize``. ``dt``: the table, when the caller
    opened it and refused deletion vectors on it already (the daily op, which logs and skips
    such a table).
    """
    started = time.perf_counter()
    storage = as_storage(storage)
    uri = storage.uri(table)
    if dt is None:
        dt = DeltaTable(uri, storage_options=storage.delta_options)
        refuse_deletion_vectors(dt, table, "OPTIMIZE/VACUUM", feature=True)
    if zorder_columns is None:
        zorder_columns = list(contract.zorder_columns) if contract else []
    columns = list(zorder_columns)
    part_cols = dt.metadata().partition_columns
    part = part_cols[0] if part_cols else None
    if len(part_cols) > 1:
        raise ValueError(f"{uri}: maintenance supports at most one partition column, got {part_cols}")
    schema_names = set(dt.schema().to_arrow().names)
    missing = [c for c in columns if c not in schema_names]
    if missing:
        raise ValueError(f"{uri}: z-order columns {missing} are not in the table")
    # fail before touching anything if the retention is below the table's minimum
    dt.vacuum(retention_hours=retention_hours, dry_run=True, enforce_retention_duration=True)
    report = MaintenanceReport(table, uri, columns, part, retention_hours, dt.version())
    report.bytes_before, report.files_before = table_stats(dt)
    report.storage_files_before, report.storage_bytes_before = _storage_usage(uri)

    t0 = time.perf_counter()
    dirty = _dirty_partitions(dt, part)
    if dirty is not None:
        filters = [(part, "in", dirty)] if part and dirty else None
        kwargs: dict[str, Any] = {
            "partition_filters": filters,
            "target_size": target_size or (target_file_bytes(contract, storage.settings)
                                           if contract else None),
            "max_concurrent_tasks": max_concurrent_tasks, "max_spill_size": max_spill_size,
            # the table's own writer settings (its codec): delta-rs' default would be ZSTD
            "writer_properties": writer_properties(contract, storage.settings) if contract else None,
        }
        metrics = dt.optimize.z_order(columns, **kwargs) if columns else dt.optimize.compact(**kwargs)
        report.partitions_optimized = int(metrics.get("partitionsOptimized") or (0 if part else 1))
    report.optimize_seconds = round(time.perf_counter() - t0, 3)
    report.bytes_after_optimize, report.files_after_optimize = table_stats(dt)

    t0 = time.perf_counter()
    report.vacuumed_files = dt.vacuum(
        retention_hours=retention_hours, dry_run=False, enforce_retention_duration=True, full=full_vacuum,
    )
    report.files_removed_by_vacuum = len(report.vacuumed_files)
    report.vacuum_seconds = round(time.perf_counter() - t0, 3)
    report.storage_files_after_vacuum, report.storage_bytes_after_vacuum = _storage_usage(uri)
    report.version_after = DeltaTable(uri, storage_options=storage.delta_options).version()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def storage_growth(
    storage: StorageLike,
    table: str,
    window: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> StorageGrowth:
    """Snapshot size of ``table`` at ``now`` (default: latest) vs. at ``now - window``."""
    storage = as_storage(storage)
    uri = storage.uri(table)
    dt = DeltaTable(uri, storage_options=storage.delta_options)
    if now is not None:
        dt.load_as_version(now)
    bytes_now, files_now = table_stats(dt)
    version_now = dt.version()
    cutoff = (now or datetime.now(UTC)) - window
    bytes_before = version_before = None
    past = DeltaTable(uri, storage_options=storage.delta_options)
    past.load_as_version(cutoff)  # delta-rs clamps a time before the first commit to version 0
    if past.version() > 0 or cutoff.timestamp() * 1000 >= _created_ms(past):
        version_before = past.version()
        bytes_before = table_stats(past)[0]
    return StorageGrowth(
        table, bytes_now, files_now, version_now, bytes_before, version_before,
        window.total_seconds() / 3600,
    )


def _created_ms(v0: DeltaTable) -> float:
    """Creation time (epoch ms) of a table loaded at version 0: its metadata's createdTime, else the
    oldest file's modification time."""
    created = v0.metadata().created_time
    if created is not None:
        return float(created)
    times = pa.table(v0.get_add_actions(flatten=True))["modification_time"].to_pylist()
    return float(min((t for t in times if t is not None), default=0))


def _last_optimize_ms(dt: DeltaTable) -> int | None:
    """Commit time of the newest OPTIMIZE within the last 1,000 commits, or None.

    Reads 50 commits first: on object stores every commit read is a request.
    """
    for limit in (50, 1000):
        entries = dt.history(limit)
        for entry in entries:
            if entry.get("operation") == "OPTIMIZE":
                return int(entry["timestamp"])
        if len(entries) < limit:
            break
    return None


def _dirty_partitions(dt: DeltaTable, part: str | None) -> list[Any] | None:
    """Partition values to optimize ([] = whole unpartitioned table); None when nothing to do.

    Dirty = at least two files, one of them written after the last OPTIMIZE.
    """
    actions = pa.table(dt.get_add_actions(flatten=True))
    if actions.num_rows < 2:
        return None
    since = _last_optimize_ms(dt)
    key = f"partition.{part}" if part else None
    groups: dict[Any, list[int]] = {}
    values = actions[key].to_pylist() if key else [None] * actions.num_rows
    for value, mtime in zip(values, actions["modification_time"].to_pylist(), strict=True):
        groups.setdefault(value, []).append(int(mtime or 0))
    dirty = [v for v, times in groups.items() if len(times) > 1 and (since is None or max(times) > since)]
    if not dirty:
        return None
    if part is None:
        return []
    return [_partition_literal(v) for v in dirty]


def _partition_literal(value: Any) -> Any:
    """A partition value as delta-rs filters expect it (NULL partitions are the empty string)."""
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _storage_usage(uri: str) -> tuple[int | None, int | None]:
    """(files, bytes) under a *local* table directory, excluding ``_delta_log``; else (None, None)."""
    if "://" in uri and urlsplit(uri).scheme != "file":
        return None, None
    root = Path(urlsplit(uri).path if uri.startswith("file://") else uri)
    files = total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and "_delta_log" in dirnames:
            dirnames.remove("_delta_log")
        for name in filenames:
            files += 1
            total += (Path(dirpath) / name).stat().st_size
    return files, total
