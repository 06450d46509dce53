"""What a finished load reports, whichever engine ran it: one audit/lineage/cost row and the
materialization metadata the Dagster UI shows (the same keys for every engine)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.control import FAILED, load_record, record_load
from bronze_assets.lib.delta.merge_result import MergeResult
from bronze_assets.lib.delta.storage import StorageLike
from bronze_assets.lib.failures import Classified


@dataclass
class LoadOutcome:
    """One load: what it read (batch, window, watermark, timing) and what the MERGE did."""

    contract: Contract
    engine: str
    batch_id: str
    batch_time: datetime
    window: str
    rows_read: int
    result: MergeResult
    extract_seconds: float
    watermark: datetime | None = None

    @property
    def seconds(self) -> float:
        return round(self.extract_seconds + self.result.merge_seconds, 3)

    def audit(self, storage: StorageLike, job_id: str | None) -> None:
        """The load's rows in ``bz_audit_log``, ``bz_data_lineage`` and ``bz_cost_tracking``."""
        r = self.result
        load = load_record(self.contract, job_id, self.batch_time, rows_read=self.rows_read,
                           seconds=self.seconds, storage_bytes=r.size_bytes,
                           records_affected=r.inserted + r.updated + r.soft_deleted)
        load.details = json.dumps({
            "batch_id": self.batch_id, "window": self.window, "engine": self.engine,
            "inserted": r.inserted, "updated": r.updated, "unchanged": r.unchanged,
            "soft_deleted": r.soft_deleted, "delta_version": r.version,
            "avg_quality_score": r.avg_quality_score, "engine_metrics": r.engine_metrics,
            "rewrite_ratio": r.rewrite_ratio,
        })
        record_load(storage, load)

    def metadata(self) -> dict[str, Any]:
        """Materialization metadata as plain values (``table_uri`` is a path)."""
        r = self.result
        meta: dict[str, Any] = {
            "table_uri": r.table_uri,
            "engine": self.engine,
            "batch_id": self.batch_id,
            "window": self.window,
            "rows_read": r.rows_read,
            "rows_inserted": r.inserted,
            "rows_updated": r.updated,
            "rows_unchanged": r.unchanged,
            "rows_soft_deleted": r.soft_deleted,
            "rows_forgotten_skipped": r.forgotten_skipped,
            "committed": r.committed,
            "commits": r.commits,
            "rows_skipped_by_checkpoint": r.rows_skipped_by_checkpoint,
            "delta_version": r.version if r.version is not None else -1,
            "size_bytes": r.size_bytes,
            "num_files": r.num_files,
            "extract_seconds": self.extract_seconds,
            "merge_seconds": r.merge_seconds,
            "duration_seconds": self.seconds,
        }
        if r.avg_quality_score is not None:
            meta["avg_quality_score"] = r.avg_quality_score
        if r.resumed_batch_id is not None:
            meta["resumed_batch_id"] = r.resumed_batch_id
        if self.watermark is not None:
            meta["watermark"] = self.watermark.isoformat()
        if r.history_versions:
            meta["history_versions"] = r.history_versions
        if r.rehashed_v1:
            meta["rows_rehashed_v1"] = r.rehashed_v1
        if r.partitions:
            meta["partitions_changed"] = ", ".join(r.partitions)
        meta |= {f"merge_{name}": value for name, value in r.engine_metrics.items()}
        if r.rewrite_ratio is not None:
            meta["rewrite_ratio"] = r.rewrite_ratio
        return meta


def audit_failure(contract: Contract, storage: StorageLike, job_id: str | None, started: datetime,
                  seconds: float, failure: Classified, engine: str, message: str | None = None) -> None:
    """A FAILED row in ``bz_audit_log`` (and its cost) for a load that did not finish: the one-line
    ``message`` (default: the failure's) and, in ``details``, the failure class, the retry decision
    and the SQLSTATE (the same on every engine) with the engine and the exception's type."""
    load = load_record(contract, job_id, started, seconds=seconds, status=FAILED)
    load.error = message or failure.message
    load.details = json.dumps(failure.audit_details(engine))
    record_load(storage, load)
