"""The one load lifecycle, the same for every engine and source (ARCHITECTURE §4).

A load goes: choose the source (:func:`~bronze_assets.lib.load.source.source_for`: a table's
window or its log-based CDC stream) and open its read → the engine stages what the read selects
(schema gate and quarantine inside) while the read is open → schema evolution audited → the
engine MERGEs (:func:`commit`: the MERGE, the checkpoint rows, the LOAD audit row) → the read is
acknowledged (only after the commit) → a load that committed nothing checkpoints the table at
its version if it has no checkpoint there (:mod:`~bronze_assets.lib.delta.log_checkpoint`) → the
checks → the staged files are removed. A
failure at any step, an interrupt included, is audited once (a FAILED row whose ``details`` hold
the failure class and retry decision) and re-raised unchanged: the caller's failure
policy (:mod:`bronze_assets.lib.failures`) says whether a retry can fix it, the same on every
engine. Nothing here knows Dagster: ``defs/`` turns the report into Dagster events, the Spark
job into Pipes messages.

The local engine runs in two Dagster steps of one asset: :meth:`Lifecycle.stage` in the asset
body, :func:`commit` in the IO manager (which performs the MERGE), then :meth:`Lifecycle.finish`.
An engine that runs out of process calls :meth:`Lifecycle.run`, which does all three.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.control import AUDIT_LOG, SUCCESS, append_rows
from bronze_assets.lib.delta.history import history_metadata
from bronze_assets.lib.delta.log_checkpoint import checkpoint_current
from bronze_assets.lib.delta.outcome import LoadOutcome, audit_failure
from bronze_assets.lib.delta.storage import OpenedTables, Storage
from bronze_assets.lib.failures import INTERRUPTS, classify
from bronze_assets.lib.load.engine import LoadEngine, Staged
from bronze_assets.lib.load.errors import SchemaMismatchError
from bronze_assets.lib.load.landing_source import LandingRead
from bronze_assets.lib.load.source import Source, SourceRead, source_for
from bronze_assets.lib.overlap import beside
from bronze_assets.lib.quality.checks import (
    KEY_UNIQUENESS,
    LANDING_FILES_CHANGED,
    QUALITY_SCORE,
    REFERENTIAL_INTEGRITY,
    SCHEMA_CONTRACT,
    CheckOutcome,
    keep_parent_keys,
    key_uniqueness,
    landing_files_changed,
    quality_score,
    referential_integrity,
    schema_contract,
)
from bronze_assets.lib.quality.validate import QualityReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadRequest:
    """One load: the table, its partition range (UTC; None = whole table), whether a scheduled run
    reads only the changes, and the checks asked for."""

    contract: Contract
    window: tuple[datetime, datetime] | None
    changes_only: bool = False
    checks: frozenset[str] = frozenset()


@dataclass
class LoadReport:
    """What a finished load reports: the materialization metadata and the check outcomes."""

    outcome: LoadOutcome
    metadata: dict[str, Any]
    checks: list[CheckOutcome] = field(default_factory=list)
    history: dict[str, Any] | None = None  # the history table's metadata (contracts with history)


def commit(engine: LoadEngine, staged: Staged, storage: Storage, job_id: str | None) -> LoadOutcome:
    """MERGE ``staged`` with ``engine`` and audit it (a LOAD row, or a FAILED row on error); the
    staged files are removed unless a check still reads them (``staged.keep_after_merge``), and
    the PII hook's prepared keys are released."""
    contract = staged.contract
    try:
        result = engine.merge(staged, job_id)
    except (Exception, *INTERRUPTS) as exc:
        failure = classify(exc, contract.bronze_table)
        audit_failure(contract, storage, job_id, staged.ctx.batch_time, staged.extract_seconds, failure,
                      engine.name, f"MERGE failed: {failure.message}")
        raise
    finally:
        if not staged.keep_after_merge:
            staged.cleanup()
        pii = getattr(staged, "pii", None)  # its data keys are not needed once the write is over
        if pii is not None:
            pii.release()
    staged.committed = bool(result.commits)
    outcome = LoadOutcome(contract, engine.name, staged.ctx.batch_id, staged.ctx.batch_time, staged.window,
                          staged.rows, result, staged.extract_seconds, staged.watermark)
    outcome.audit(storage, job_id)
    return outcome


class Lifecycle:
    """One load of ``request`` on ``engine`` from the database at ``dsn`` into ``storage``.
    ``source``: where the rows come from (default: :func:`~bronze_assets.lib.load.source.source_for`,
    chosen when the load starts); ``logger``: the run's log."""

    def __init__(self, request: LoadRequest, engine: LoadEngine, dsn: str, storage: Storage,
                 job_id: str | None = None, logger: logging.Logger | None = None,
                 source: Source | None = None) -> None:
        self.request, self.engine, self.dsn, self.storage = request, engine, dsn, storage
        self.job_id, self.log, self.source = job_id, logger or log, source
        self.contract = request.contract
        self.started = datetime.now(UTC)
        self.read: SourceRead | None = None
        self.metadata: dict[str, Any] = {}  # which load pattern ran, the read's figures
        self.decided: list[CheckOutcome] = []  # check outcomes known before the MERGE
        self.quality: Future[QualityReport] | None = None
        self.tables = OpenedTables(storage)  # the run's one open of each table (stage, MERGE, checks)

    def take_checks(self) -> list[CheckOutcome]:
        """The check outcomes decided so far and not yet taken (e.g. schema_contract on a mismatch)."""
        taken, self.decided = self.decided, []
        return taken

    def stage(self) -> Staged:
        """Read and stage the load's rows. A failure is audited and re-raised; on a schema mismatch
        the schema_contract outcome is in :meth:`take_checks`."""
        contract, request = self.contract, self.request
        if QUALITY_SCORE in request.checks:  # GX warms up while the source is read
            self.engine.warm_quality(contract)
        try:
            # the table's commit log, read once: CDC position, watermark, hash version (the MERGE
            # reuses it when nothing was committed since)
            commits = CommitLog.read(self.tables.open(contract.bronze_table))
            source = self.source or source_for(request, self.dsn, self.storage, self.log, commits)
            with source.open() as read:  # open while the engine stages (e.g. in a CDC slot's snapshot)
                staged = self.engine.stage(request, read.selection, commits)
            self.read = read
        except SchemaMismatchError as exc:
            self._failed(exc)
            if SCHEMA_CONTRACT in request.checks:
                self.decided.append(schema_contract(exc.drift, exc.quarantined))
            raise
        except (Exception, *INTERRUPTS) as exc:
            self._failed(exc)
            raise
        try:
            if staged.schema_drift is not None:
                self._schema_evolution(staged)
            self.log.info(f"{contract.bronze_table}: read {staged.rows:,} rows ({staged.window}) "
                          f"in {staged.extract_seconds:.2f} s")
            self.metadata = read.metadata()
            if QUALITY_SCORE in request.checks:  # validates the staged rows while the engine MERGEs them
                self.quality = self.engine.start_quality(staged)
                staged.keep_after_merge = True
            if request.checks & {KEY_UNIQUENESS, REFERENTIAL_INTEGRITY}:  # keys read there (finish)
                staged.keep_after_merge = True
        except (Exception, *INTERRUPTS) as exc:  # staged, but not handed on: audited, nothing left behind
            staged.cleanup()
            self._failed(exc)
            raise
        return staged

    def finish(self, staged: Staged) -> list[CheckOutcome]:
        """After the commit: acknowledge the read (on a thread, beside the checks: a CDC slot's
        server decodes the log up to the position), run the checks, remove the staged files."""
        try:
            if self.read is None:
                return self._checks(staged)
            # only once its rows are committed (a CDC slot frees their WAL); done when this returns
            with beside(self.read.acknowledge, name=f"acknowledge {self.contract.bronze_table}"):
                return self._checks(staged)
        finally:
            staged.cleanup()

    def _checks(self, staged: Staged) -> list[CheckOutcome]:
        """The outcomes of the request's checks after the commit (and of those decided before)."""
        checks = self.request.checks
        if staged.committed is False:  # nothing new: the next runs open the table from here
            self._checkpoint()
        outcomes = self.take_checks()
        # a local load that created the table hands over what it wrote (keys found distinct,
        # its staged rows): the key and referential checks read no file of the new table
        written = getattr(staged, "unique_write", None)
        if staged.committed is not False and checks & {KEY_UNIQUENESS, REFERENTIAL_INTEGRITY}:
            merged = getattr(staged, "merged_table", None)  # a local load's MERGE hands it over
            if merged is not None:
                self.tables.adopt(self.contract.bronze_table, merged)
            else:
                self.tables.refresh(self.contract.bronze_table)  # as the MERGE left it
        if KEY_UNIQUENESS in checks:
            outcomes.append(key_uniqueness(self.contract, self.storage, self.tables, written))
        if REFERENTIAL_INTEGRITY in checks:
            outcomes.append(referential_integrity(self.contract, self.storage, self.tables, written))
        if self.quality is not None:  # the validation has had the longest to finish
            outcomes.append(quality_score(staged.score_histogram,
                                          self.engine.quality_report(staged, self.quality)))
        if LANDING_FILES_CHANGED in checks and isinstance(self.read, LandingRead):  # files changed since
            outcomes.append(landing_files_changed(self.contract, self.read.selection.changed))
        merged = getattr(staged, "merged_table", None)
        if merged is not None:  # its later readers in a shared scope (the demo's report) need no open
            self.storage.share(self.contract.bronze_table, merged)
            if written is not None and checks & {KEY_UNIQUENESS, REFERENTIAL_INTEGRITY}:
                # its children's referential checks read its keys from its staged rows
                keep_parent_keys(self.contract, merged, written)
        return outcomes

    def run(self) -> LoadReport:
        """Stage, commit and finish in this process (engines that are not split across steps)."""
        staged = self.stage()
        try:
            outcome = commit(self.engine, staged, self.storage, self.job_id)
        except BaseException:
            staged.cleanup()
            raise
        checks = self.finish(staged)
        history = None
        if self.contract.history:
            result = outcome.result
            history = history_metadata(self.contract, self.storage, outcome.batch_id, result.history_version,
                                       result.history_versions)
        return LoadReport(outcome, outcome.metadata() | self.metadata, checks, history)

    def _checkpoint(self) -> None:
        dt = self.tables.open(self.contract.bronze_table)
        if dt is not None:
            checkpoint_current(self.storage, self.contract.bronze_table, dt)

    def _failed(self, exc: BaseException) -> None:
        audit_failure(self.contract, self.storage, self.job_id, self.started,
                      (datetime.now(UTC) - self.started).total_seconds(),
                      classify(exc, self.contract.bronze_table, self.dsn), self.engine.name)

    def _schema_evolution(self, staged: Staged) -> None:
        """New source columns joined the table (audited); the schema check reports the drift."""
        drift = staged.schema_drift
        assert drift is not None
        if drift.added:
            self.log.warning(drift.describe())
            append_rows(self.storage, AUDIT_LOG, [{
                "table_name": self.contract.bronze_table, "operation_type": "SCHEMA_EVOLUTION",
                "start_timestamp": self.started, "end_timestamp": datetime.now(UTC), "status": SUCCESS,
                "records_affected": staged.rows, "job_id": self.job_id,
                "details": json.dumps({"policy": "addNewColumns", "batch_id": staged.ctx.batch_id,
                                       "added": [c for c, _ in drift.added]}),
            }])
        if SCHEMA_CONTRACT in self.request.checks:
            self.decided.append(schema_contract(drift, staged.unreadable_records or None))
