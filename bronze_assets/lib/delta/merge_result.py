"""What one load did to its bronze table, and the data error no retry can fix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa


class DuplicateKeyError(ValueError):
    """The staged batch repeats a primary key: a data problem that a retry cannot fix."""

    @classmethod
    def repeated(cls, table: str, primary_key: Sequence[str], extra_rows: int) -> DuplicateKeyError:
        """The error of every engine for a batch of ``table`` with ``extra_rows`` rows more than keys."""
        return cls(f"{table}: the source repeats primary key values ({', '.join(primary_key)}): {extra_rows} "
                   f"row(s) more than keys; bronze keeps one row per key. Nothing was merged; fix the "
                   f"source's primary key.")


@dataclass(frozen=True)
class UniqueWrite:
    """A table every version of which is one load's own commits (a create, then its chunks'
    appends), each writing rows whose primary keys that load found distinct before writing them:
    the table's id, its version after them and the rows written. While the table stays at that
    version its keys are unique without reading them (the key check: its row count must agree),
    and its rows are the load's staged rows, all ACTIVE: ``staged`` streams them back from the
    load's local files (the referential check reads their foreign keys there; in plaintext, before
    any PII column was protected)."""

    table_id: str
    version: int
    rows: int
    staged: Callable[[], pa.RecordBatchReader] | None = field(default=None, compare=False)


@dataclass
class MergeResult:
    """What one load did to its bronze table (published as Dagster output metadata)."""

    table_uri: str
    rows_read: int
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    soft_deleted: int = 0
    forgotten_skipped: int = 0
    committed: bool = False
    version: int | None = None
    size_bytes: int = 0
    num_files: int = 0
    merge_seconds: float = 0.0
    avg_quality_score: float | None = None
    commits: int = 0
    resumed_batch_id: str | None = None  # an interrupted batch whose committed chunks were kept
    rows_skipped_by_checkpoint: int = 0  # rows that batch committed, not written again
    history_versions: int = 0  # versions added to bz_<name>_history (contracts with history)
    history_version: int | None = None  # the history table's Delta version after the load
    rehashed_v1: int = 0  # unchanged rows whose v1 record_hash was replaced by the v2 hash
    partitions: list[str] = field(default_factory=list)  # Delta partition values the load changed
    engine_metrics: dict[str, int] = field(default_factory=dict)  # the engine's own, see batch_metrics

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def rows_changed(self) -> int:
        return self.inserted + self.updated + self.soft_deleted + self.rehashed_v1

    @property
    def rewrite_ratio(self) -> float | None:
        """Rows the engine wrote ÷ rows the load changed: the changed rows plus those it copied
        (``rows_copied``: the rest of every file copy-on-write rewrote; none where a deletion vector
        marks the replaced rows instead)."""
        written = self.engine_metrics.get("rows_written")
        return round(written / self.rows_changed, 2) if written is not None and self.rows_changed else None
