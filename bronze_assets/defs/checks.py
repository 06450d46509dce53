"""Asset checks of every bronze asset: names as constants, results with failing keys as metadata."""

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
from deltalake import DeltaTable

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.merge import open_table, read_columns
from bronze_assets.lib.delta.staging import StagedBatch
from bronze_assets.lib.quality import worker
from bronze_assets.lib.quality.validate import QualityReport
from bronze_assets.lib.source.schema import SchemaDrift
from bronze_assets.settings import data_dir

SCHEMA_CONTRACT = "schema_contract"
QUALITY_SCORE = "quality_score"
KEY_UNIQUENESS = "key_uniqueness"
REFERENTIAL_INTEGRITY = "referential_integrity"
QUALITY_KPI = 80.0
STATUS = "record_status"
SCAN_CACHE_BYTES = 64 * 2**20  # key/status scans kept for the next check of the same table version


def check_specs(contract: Contract) -> list[dg.AssetCheckSpec]:
    asset = contract.bronze_table
    return [
        dg.AssetCheckSpec(SCHEMA_CONTRACT, asset=asset, blocking=True,
                          description="Source columns and types match the contract before anything is "
                                      "merged; a mismatch fails the run and quarantines the batch."),
        dg.AssetCheckSpec(QUALITY_SCORE, asset=asset,
                          description="Great Expectations suite from the contract on the loaded batch; "
                                      f"warns when the average per-record score is below {QUALITY_KPI:g}."),
        dg.AssetCheckSpec(KEY_UNIQUENESS, asset=asset,
                          description="No primary key appears twice among the bronze rows."),
        *([dg.AssetCheckSpec(REFERENTIAL_INTEGRITY, asset=asset,
                             description="Orphan count and rate per foreign key against the parent's "
                                         "ACTIVE bronze keys (warning only).")]
          if contract.foreign_keys else []),
    ]


def schema_contract_result(drift: SchemaDrift, quarantined: int | None = None) -> dg.AssetCheckResult:
    """ERROR on a missing column or changed type; new columns are reported, not failed."""
    metadata: dict[str, object] = {
        "missing_columns": ", ".join(drift.missing) or "-",
        "changed_types": ", ".join(f"{c}: {want} -> {got}" for c, want, got in drift.changed) or "-",
        "new_columns": ", ".join(f"{c} ({t})" for c, t in drift.added) or "-",
    }
    if drift.rescued:
        metadata["read_per_record"] = ", ".join(f"{c}: {want} <- {got}" for c, want, got in drift.rescued)
    if quarantined is not None:
        metadata["quarantined_rows"] = quarantined
    return dg.AssetCheckResult(
        check_name=SCHEMA_CONTRACT, passed=not drift.breaking, severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata, description=drift.describe(),
    )


def _docs_dir(contract: Contract) -> Path:
    return data_dir() / "gx_docs" / contract.bronze_table


def warm_quality_suite(contract: Contract) -> None:
    """Start importing Great Expectations and building today's suite for ``contract`` in the GX
    worker process, which does it on another core while the load reads the source."""
    worker.warm(contract, datetime.now(UTC).date(), _docs_dir(contract))


def start_quality_check(staged: StagedBatch) -> Future[QualityReport]:
    """Validate the staged batch (source columns) in the GX worker while the IO manager MERGEs
    it; the staged file must be kept until :func:`quality_score_result` has the answer."""
    return worker.validate_staged(staged.contract, staged.ctx.load_date, _docs_dir(staged.contract),
                                  staged.path)


def quality_score_result(staged: StagedBatch, pending: Future[QualityReport]) -> dg.AssetCheckResult:
    """Score distribution of the batch plus GX violation counts per rule (WARN below the KPI)."""
    report = worker.report(pending, staged.contract.bronze_table)
    rows = staged.rows
    metadata: dict[str, object] = {"rows": rows, "gx_counts_match_score": report.agree}
    average = staged.score_sum / rows if rows else 100.0
    if rows:
        below = int(staged.score_histogram[: int(QUALITY_KPI)].sum())
        metadata |= {
            "avg_score": round(average, 2),
            "p5_score": staged.score_percentile(5),
            "p50_score": staged.score_percentile(50),
            "share_below_80": round(below / rows, 4),
        }
    metadata |= {f"violations {rule}": n for rule, n in sorted(report.gx_counts.items())}
    if report.docs_url:
        metadata["data_docs"] = dg.MetadataValue.url(report.docs_url)
    samples = {rule: keys for rule, keys in report.failing_keys.items() if keys}
    if samples:
        metadata["failing_keys_sample"] = dg.MetadataValue.json(samples)
    return dg.AssetCheckResult(
        check_name=QUALITY_SCORE,
        passed=average >= QUALITY_KPI,
        description=f"average score {average:.1f} (KPI {QUALITY_KPI:.0f})",
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
    )


def key_uniqueness_result(contract: Contract, table_uri: str, storage_options: dict[str, str] | None
                          ) -> dg.AssetCheckResult:
    """Duplicate primary keys among all bronze rows (ERROR); run after the MERGE."""
    dt = open_table(table_uri, storage_options)
    if dt is None:
        return dg.AssetCheckResult(check_name=KEY_UNIQUENESS, passed=True, metadata={"rows": 0})
    # one scan of the columns both key checks need: the referential check then reuses it
    keys = _scan(dt, table_uri, _key_columns(contract)).select(contract.primary_key)
    dupes = keys.filter(keys.is_duplicated())
    sample = dupes.unique().head(5).to_dicts()
    return dg.AssetCheckResult(
        check_name=KEY_UNIQUENESS,
        passed=dupes.height == 0,
        description=f"{dupes.height:,} rows share a primary key" if dupes.height else "every key once",
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows": keys.height, "duplicate_rows": dupes.height,
                  "duplicate_keys_sample": dg.MetadataValue.json(sample)},
    )


def referential_integrity_result(
    contract: Contract, table_uri: Callable[[str], str], storage_options: dict[str, str] | None
) -> dg.AssetCheckResult:
    """Orphans per foreign key: ACTIVE child values with no ACTIVE parent key in bronze (WARN)."""
    child_uri = table_uri(contract.bronze_table)
    child = open_table(child_uri, storage_options)
    active_child = None
    if child is not None and contract.foreign_keys:
        scanned = _scan(child, child_uri, _key_columns(contract))
        active_child = scanned.filter(pl.col(STATUS) == "ACTIVE")
    metadata: dict[str, object] = {}
    orphans_total = 0
    for fk in contract.foreign_keys:
        label = f"{fk.column} -> {fk.parent_table}.{fk.parent_column}"
        parent_uri = table_uri(f"bz_{fk.parent_table}")
        parent = open_table(parent_uri, storage_options)
        if active_child is None or parent is None:
            metadata[f"orphans {label}"] = "parent or child not loaded yet"
            continue
        values = active_child.select(fk.column).drop_nulls()
        keys = _scan(parent, parent_uri, [fk.parent_column, STATUS])
        keys = keys.filter(pl.col(STATUS) == "ACTIVE").select(fk.parent_column)
        dtype = values[fk.column].dtype
        keys = keys.rename({fk.parent_column: fk.column}).with_columns(pl.col(fk.column).cast(dtype))
        orphans = values.join(keys.unique(), on=fk.column, how="anti")
        orphans_total += orphans.height
        metadata[f"orphans {label}"] = orphans.height
        metadata[f"orphan_rate {label}"] = round(orphans.height / values.height, 6) if values.height else 0.0
        if orphans.height:
            sample = orphans[fk.column].unique().sort().head(5).to_list()
            metadata[f"orphan_values_sample {label}"] = dg.MetadataValue.json(sample)
    return dg.AssetCheckResult(
        check_name=REFERENTIAL_INTEGRITY, passed=orphans_total == 0,
        severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
        description=f"{orphans_total:,} ACTIVE rows reference a parent key missing from bronze"
        if orphans_total else "every foreign key has its parent",
    )


def _key_columns(contract: Contract) -> list[str]:
    """What the key and referential checks read from a bronze table: keys, foreign keys, status."""
    if not contract.foreign_keys:  # no referential check
        return list(contract.primary_key)
    return list(dict.fromkeys([*contract.primary_key, *(fk.column for fk in contract.foreign_keys), STATUS]))


_scans: OrderedDict[tuple[str, str, int], pl.DataFrame] = OrderedDict()
_scans_lock = threading.Lock()


def _scan(dt: DeltaTable, uri: str, columns: list[str]) -> pl.DataFrame:
    """``columns`` of the table's current version, every row.

    A tick's checks read the same versions several times (a table's key check, then its
    referential check; a parent's keys for each of its children), and scanning a table of
    thousands of small files costs more than the check itself: scans of one table version (a
    Delta version never changes) are kept while they fit in ``SCAN_CACHE_BYTES``.
    """
    key = (uri, dt.metadata().id, dt.version())
    with _scans_lock:
        cached = _scans.get(key)
        if cached is not None and set(columns) <= set(cached.columns):
            _scans.move_to_end(key)
            return cached.select(columns)
    frame = pl.from_arrow(read_columns(dt, columns))
    assert isinstance(frame, pl.DataFrame)
    if frame.estimated_size() <= SCAN_CACHE_BYTES:
        with _scans_lock:
            _scans[key] = frame
            _scans.move_to_end(key)
            while sum(f.estimated_size() for f in _scans.values()) > SCAN_CACHE_BYTES:
                _scans.popitem(last=False)
    return frame
