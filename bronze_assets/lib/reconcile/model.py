"""What a reconciliation finds (ARCHITECTURE §2.8): per table, the mismatching keys by kind, the
figures of the compare, and what to do about a table that could not be compared."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

EXTRA = "extra"  # ACTIVE in bronze, absent from the source
MISSING = "missing"  # in the source, not ACTIVE in bronze
DIFFERS = "differs"  # stored record_hash differs from the source's §2.2 hash
ALTERED = "altered"  # (--deep) the row's bronze columns no longer hash to its stored record_hash
PENDING = "pending"  # changed in the source after the table's last load: the next load brings it
FAULTS = (EXTRA, MISSING, DIFFERS, ALTERED)
KINDS = (*FAULTS, PENDING)

OK = "ok"
FAULTY = "faults"
NOT_LOADED = "not loaded"
SOURCE_MISSING = "source table missing"
SOURCE_CHANGED = "source schema changed"
UNSUPPORTED = "unsupported"

SAMPLE_KEYS = 10  # keys per kind shown in the report and the check's metadata


@dataclass(frozen=True)
class Mismatch:
    """One key that does not match; ``kind`` is one of :data:`KINDS` (a pending key also says which
    fault it would be, ``pending_kind``)."""

    key: int | str
    kind: str
    pending_kind: str | None = None


@dataclass
class TableReconciliation:
    """The compare of one bronze table with its source table, in the run's source snapshot."""

    table: str
    source_table: str
    state: str = OK
    source_rows: int = 0
    bronze_active_rows: int = 0
    buckets: int = 0  # key buckets of the first level
    buckets_compared: int = 0  # buckets compared at every level (count + checksum on both sides)
    buckets_differing: int = 0  # leaf buckets whose keys were compared
    buckets_hashed: int = 0  # first-level buckets whose source rows were hashed (§2.2)
    buckets_from_state: int = 0  # first-level buckets proven equal by the state (reconcile/memo.py)
    rows_compared: int = 0  # source + bronze rows read key by key in the differing leaves
    forgotten_skipped: int = 0
    pending_since: datetime | None = None  # rows updated in the source at or after this are pending
    mismatches: list[Mismatch] = field(default_factory=list)
    problem: str | None = None  # why the table could not be compared
    action: str | None = None  # the command that fixes ``problem``
    deep_rows: int | None = None  # (--deep) bronze rows whose hash was recomputed
    deep_note: str | None = None  # (--deep) what the deep check could not verify, and why
    seconds: float = 0.0
    repair: dict[str, Any] | None = None

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(m.kind for m in self.mismatches)
        return {k: found.get(k, 0) for k in KINDS}

    @property
    def faults(self) -> list[Mismatch]:
        return [m for m in self.mismatches if m.kind in FAULTS]

    @property
    def healthy(self) -> bool:
        """No fault and the table could be compared (pending keys are not faults)."""
        return self.state == OK and not self.faults

    def samples(self, limit: int = SAMPLE_KEYS) -> dict[str, list[int | str]]:
        out: dict[str, list[int | str]] = {}
        for m in self.mismatches:
            keys = out.setdefault(m.kind, [])
            if len(keys) < limit:
                keys.append(m.key)
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table, "source_table": self.source_table,
            "state": self.state if self.state != OK else (FAULTY if self.faults else OK),
            "healthy": self.healthy, "source_rows": self.source_rows,
            "bronze_active_rows": self.bronze_active_rows, "buckets": self.buckets,
            "buckets_compared": self.buckets_compared, "buckets_differing": self.buckets_differing,
            "buckets_hashed": self.buckets_hashed, "buckets_from_state": self.buckets_from_state,
            "rows_compared": self.rows_compared, "forgotten_skipped": self.forgotten_skipped,
            "pending_since": self.pending_since.isoformat() if self.pending_since else None,
            "counts": self.counts, "sample_keys": self.samples(), "problem": self.problem,
            "action": self.action, "deep_rows": self.deep_rows, "deep_note": self.deep_note,
            "seconds": round(self.seconds, 3), "repair": self.repair,
        }


@dataclass
class Reconciliation:
    """One ``bronze reconcile`` run over some tables, in one source snapshot."""

    run_id: str
    started: datetime
    tables: list[TableReconciliation] = field(default_factory=list)
    deep: bool = False

    @property
    def healthy(self) -> bool:
        return all(t.healthy for t in self.tables)

    def as_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "started": self.started.isoformat(), "deep": self.deep,
                "healthy": self.healthy, "tables": [t.as_json() for t in self.tables]}
