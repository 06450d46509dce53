"""Which part of a ``bronze`` command sends which object-store requests (``bench_s3.py --stages``).

    python benchmarks/s3_stages.py MARKS -- demo --scale 0.1    # runs `bronze demo`, traced

The functions below are wrapped (at every module attribute that holds them) so that each call
writes ``start end label`` to ``MARKS`` (``time.time()``); the benchmark's S3 server logs each
request with its ``time.time()`` too, and :func:`breakdown` gives each request to the innermost
traced call around it (requests outside every call: ``other``). Labels name the table when the
call's arguments hold a contract. A measuring aid: the traced command does what it always does.
"""

from __future__ import annotations

import bisect
import functools
import importlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (module, attribute path, label): label "{table}" is filled from the call's contract
TRACED: list[tuple[str, str, str]] = [
    ("bronze_assets.lib.load.lifecycle", "Lifecycle.stage", "load: stage (log read, source, staging)"),
    ("bronze_assets.lib.load.engine", "LocalEngine.merge", "load: MERGE"),
    ("bronze_assets.lib.delta.outcome", "LoadOutcome.audit", "control: load's audit/lineage/cost rows"),
    ("bronze_assets.lib.load.lifecycle", "Lifecycle._checkpoint", "load: checkpoint of an unchanged table"),
    ("bronze_assets.lib.load.lifecycle", "Lifecycle.finish", "checks: other"),
    ("bronze_assets.lib.quality.checks", "key_uniqueness", "checks: key_uniqueness"),
    ("bronze_assets.lib.quality.checks", "referential_integrity", "checks: referential_integrity"),
    ("bronze_assets.lib.load.engine", "LocalEngine.quality_report", "checks: quality_score (GX)"),
    ("bronze_assets.lib.quality.check_memo", "kept_outcome", "checks: kept outcome read"),
    ("bronze_assets.lib.quality.check_memo", "keep_outcome", "checks: kept outcome write"),
    ("bronze_assets.lib.quality.check_memo", "log_state", "checks: parent log listing"),
    ("bronze_assets.lib.delta.history", "history_metadata", "load: history metadata"),
    ("bronze_assets.defs.engines", "history_result", "load: history metadata"),
    ("bronze_assets.lib.reconcile.run", "reconcile_table", "reconciliation: compare"),
    ("bronze_assets.lib.reconcile.run", "_bronze_rows", "reconciliation: sizes"),
    ("bronze_assets.lib.reconcile.bronze_side", "pending_since", "reconciliation: pending_since (log)"),
    ("bronze_assets.lib.reconcile.bronze_side", "BronzeTable.key_range", "reconciliation: bronze key range"),
    ("bronze_assets.lib.reconcile.bronze_side", "BronzeTable.buckets", "reconciliation: bronze buckets"),
    ("bronze_assets.lib.reconcile.bronze_side", "BronzeTable.rows", "reconciliation: bronze rows"),
    ("bronze_assets.lib.reconcile.ledger", "record_mismatches", "control: reconciliation rows"),
    ("bronze_assets.defs.operations", "build_report", "report"),
    ("bronze_assets.demo.run", "history_summary", "summary: history tables"),
    ("bronze_assets.lib.delta.query", "value_counts", "summary: record_status counts"),
    ("bronze_assets.lib.delta.control", "append_rows", "control: append {table}"),
    ("bronze_assets.lib.delta.control", "post_audit_row", "control: audit inbox post"),
    ("bronze_assets.lib.delta.control", "release_appends", "control: the run's held rows committed"),
    ("bronze_assets.lib.delta.control", "_fold", "control: fold {table}"),
    ("bronze_assets.lib.delta.control", "read_table", "control: read {table}"),
    ("bronze_assets.lib.delta.exclusive_append", "append_exclusive", "control: exclusive append {table}"),
    ("bronze_assets.lib.delta.audit_inbox", "pending", "control: audit inbox listing"),
    ("bronze_assets.lib.delta.storage", "Storage.check", "root check"),
]

_lock = threading.Lock()


def _table(label: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    values = [*args, *kwargs.values()]
    for value in values:
        contract = getattr(value, "contract", value)
        name = getattr(contract, "bronze_table", None)
        if isinstance(name, str):
            return f"{label} [{name}]"
    if "{table}" in label:
        names = [v for v in values if isinstance(v, str) and v.startswith("bz_")]
        return label.replace("{table}", names[0] if names else "?")
    return label


def _wrap(fn: Callable[..., Any], label: str, out: Any) -> Callable[..., Any]:
    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        name, start = _table(label, args, kwargs), time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            with _lock:
                out.write(f"{start:.4f} {time.time():.4f} {name}\n")
                out.flush()
    return traced


def install(marks: Path) -> None:
    """Wrap every :data:`TRACED` function, writing its calls to ``marks``."""
    importlib.import_module("bronze_assets.definitions")
    importlib.import_module("bronze_assets.demo.run")
    out = marks.open("a", encoding="utf-8")
    for module_name, path, label in TRACED:
        owner: Any = importlib.import_module(module_name)
        *outer, attr = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        wrapped = _wrap(original, label, out)
        setattr(owner, attr, wrapped)
        if not outer:  # also where it was imported by name
            for module in list(sys.modules.values()):
                if getattr(module, "__name__", "").startswith("bronze_assets") and \
                        getattr(module, attr, None) is original:
                    setattr(module, attr, wrapped)


def breakdown(marks: Path, requests: list[tuple[float, str]]) -> Counter[str]:
    """Requests per innermost traced call around them (``requests``: (time, kind))."""
    calls = sorted((float(s), float(e), label) for s, e, label in
                   (line.split(" ", 2) for line in marks.read_text().splitlines() if line))
    starts = [c[0] for c in calls]
    counts: Counter[str] = Counter()
    for at, kind in requests:
        label = "other"  # the latest-started call still running then: the innermost
        for i in range(bisect.bisect_right(starts, at) - 1, -1, -1):
            start, end, name = calls[i]
            if start <= at <= end + 0.002:
                label = name
                break
        counts[f"{label} | {kind}"] += 1
    return counts


if __name__ == "__main__":
    marks_file, separator, *command = sys.argv[1:]
    assert separator == "--", "usage: s3_stages.py MARKS -- <bronze arguments>"
    install(Path(marks_file))
    from bronze_assets.cli import main

    sys.argv = ["bronze", *command]
    main()
