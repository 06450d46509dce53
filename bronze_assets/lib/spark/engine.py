"""The Spark engine of the load lifecycle: JDBC read → Spark SQL enrichment → delta-spark MERGE
(:class:`~bronze_assets.lib.spark.load.SparkLoader`); landing-zone files through Spark's readers
(:mod:`bronze_assets.lib.spark.landing`); the GX suite on the driver over the staged rows while
the MERGE runs."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.merge_result import MergeResult
from bronze_assets.lib.load.engine import Staged
from bronze_assets.lib.load.landing_source import FileSelection
from bronze_assets.lib.load.source import Selection, table_selection
from bronze_assets.lib.quality.validate import QualityReport, docs_dir, suite_runner
from bronze_assets.lib.spark.load import ENGINE, SparkLoader, SparkStaged

if TYPE_CHECKING:
    from bronze_assets.lib.load.lifecycle import LoadRequest


class SparkEngine:
    """Loads on a Spark session (local master or a Databricks cluster)."""

    name = ENGINE

    def __init__(self, loader: SparkLoader, *, data_docs: bool = True) -> None:
        self.loader, self.data_docs = loader, data_docs
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate")

    def warm_quality(self, contract: Contract) -> None:
        """Nothing to warm: the suite is built on the driver when the staged rows are validated."""

    def stage(self, request: LoadRequest, selection: Selection, commits: CommitLog) -> SparkStaged:
        if isinstance(selection, FileSelection):  # landing-zone files (ARCHITECTURE §2.6)
            from bronze_assets.lib.spark.landing import stage_landing

            return stage_landing(self.loader, selection, commits)
        return self.loader.stage(request.contract, table_selection(selection, self.name), commits=commits)

    def start_quality(self, staged: Staged) -> Future[QualityReport]:
        assert isinstance(staged, SparkStaged)
        return self._pool.submit(self._validate, staged)

    def quality_report(self, staged: Staged, pending: Future[QualityReport]) -> QualityReport:
        return pending.result()

    def merge(self, staged: Staged, job_id: str | None) -> MergeResult:
        assert isinstance(staged, SparkStaged)
        return self.loader.merge(staged).merge

    def _validate(self, staged: SparkStaged) -> QualityReport:
        import pyarrow.dataset as ds

        contract = staged.contract
        docs = docs_dir(contract, self.loader.storage.settings.data_dir) if self.data_docs else None
        runner = suite_runner(contract, staged.ctx.load_date, docs)
        batches = ds.dataset(str(staged.rows_path), format="parquet").to_batches(columns=runner.columns)
        return runner.validate_batches(batches)
