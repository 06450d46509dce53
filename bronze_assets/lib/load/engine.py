"""The engine protocol of the load lifecycle, and the local engine (ADBC + Polars + delta-rs).

An engine stages what a source read selects (:mod:`bronze_assets.lib.load.source`), MERGEs it
(§2.3) and validates the staged rows with the contract's GX suite while it MERGEs. Adding an
engine is one module implementing :class:`LoadEngine`; the Spark engine is
:class:`bronze_assets.lib.spark.engine.SparkEngine`.
"""

from __future__ import annotations

from concurrent.futures import Future
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Protocol

import numpy as np

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.control import record_checkpoint
from bronze_assets.lib.delta.merge_result import MergeResult
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.delta.staging import StagedBatch
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.enrich.metadata import BatchContext
from bronze_assets.lib.load.landing_source import FileSelection
from bronze_assets.lib.load.source import Selection, table_selection
from bronze_assets.lib.load.stage import stage_selection
from bronze_assets.lib.load.stage_files import stage_files
from bronze_assets.lib.quality import worker
from bronze_assets.lib.quality.validate import QualityReport, docs_dir
from bronze_assets.lib.source.schema import SchemaDrift

if TYPE_CHECKING:
    from bronze_assets.lib.load.lifecycle import LoadRequest

LOCAL = worker.LOCAL_ENGINE  # "local"


class Staged(Protocol):
    """What an engine staged for one load (rows on disk, not yet merged)."""

    contract: Contract
    ctx: BatchContext
    score_histogram: np.ndarray
    schema_drift: SchemaDrift | None
    watermark: datetime | None
    extract_seconds: float
    keep_after_merge: bool
    committed: bool | None  # whether its MERGE committed (None: not merged yet)

    @property
    def rows(self) -> int: ...

    @property
    def window(self) -> str: ...

    @property
    def unreadable_records(self) -> int: ...

    def cleanup(self) -> None: ...


class LoadEngine(Protocol):
    """Where a load's rows are read, staged and merged."""

    name: str

    def warm_quality(self, contract: Contract) -> None:
        """Prepare the contract's GX suite while the source is read (may do nothing)."""

    def stage(self, request: LoadRequest, selection: Selection, commits: CommitLog) -> Staged:
        """Read what the source read selected (a PostgreSQL table's window, CDC keys or slot
        snapshot) in one snapshot and stage it; ``commits`` is the table's commit log as the
        lifecycle read it (watermark, hash version; the MERGE reuses it)."""

    def start_quality(self, staged: Staged) -> Future[QualityReport]:
        """Validate the staged rows with the GX suite, concurrently with the MERGE."""

    def quality_report(self, staged: Staged, pending: Future[QualityReport]) -> QualityReport:
        """The validation's answer (waits for it)."""

    def merge(self, staged: Staged, job_id: str | None) -> MergeResult:
        """Apply §2.3 to the table; the commits carry the batch's metadata."""


class LocalEngine:
    """This process: ADBC binary COPY → Polars/Arrow → delta-rs MERGE; GX in its worker process."""

    name = LOCAL

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def warm_quality(self, contract: Contract) -> None:
        worker.warm_load(self.storage.settings, contract)

    def stage(self, request: LoadRequest, selection: Selection, commits: CommitLog) -> StagedBatch:
        if isinstance(selection, FileSelection):  # landing-zone files (ARCHITECTURE §2.6)
            return stage_files(request.contract, self.storage, selection)
        return stage_selection(request.contract, self.storage, table_selection(selection, self.name),
                               commits=commits)

    def start_quality(self, staged: Staged) -> Future[QualityReport]:
        assert isinstance(staged, StagedBatch)
        docs = docs_dir(staged.contract, self.storage.settings.data_dir)
        return worker.validate_staged(self.storage.settings, staged.contract, staged.ctx.load_date, docs,
                                      staged.path)

    def quality_report(self, staged: Staged, pending: Future[QualityReport]) -> QualityReport:
        return worker.report(pending, staged.contract.bronze_table)

    def merge(self, staged: Staged, job_id: str | None) -> MergeResult:
        assert isinstance(staged, StagedBatch)
        checkpoint = partial(record_checkpoint, self.storage, job_id=job_id)
        merger = BronzeMerger(staged.contract, self.storage)
        result = merger.merge(staged, on_commit=checkpoint)
        staged.history_version = result.history_version
        staged.merged_table, staged.unique_write = merger.final, merger.unique
        return result

