"""Retention: bronze rows whose business date is older than N years move to an archive table.

The move is idempotent and loses nothing: rows are first MERGEd into the archive on the primary
key (insert-only, so a re-run after a crash never duplicates them), then deleted from bronze
with the same predicate. Tables without a business date (dimensions, stock states) are kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime

import pyarrow as pa
from deltalake import write_deltalake

from bronze_assets.contracts import Contract, PgType
from bronze_assets.lib.delta.control import audited
from bronze_assets.lib.delta.create_race import race_safe_properties
from bronze_assets.lib.delta.query import quoted, read_snapshot
from bronze_assets.lib.delta.storage import Storage, StorageLike, as_storage
from bronze_assets.lib.delta.writers import refuse_deletion_vectors


def archive(storage: Storage) -> Storage:
    """Where retention moves old rows: ``Storage.settings.archive_root`` (``$BRONZE_ARCHIVE_ROOT``)
    or ``<bronze root>/_archive`` (with the bronze root's options)."""
    return storage.at(storage.settings.archive_root or storage.uri("_archive"))


def business_date_column(contract: Contract) -> str | None:
    """The date retention applies to: the partitioning business date, else the first DATE column."""
    if contract.partitioning.business_date_column:
        return contract.partitioning.business_date_column
    return next((c.name for c in contract.columns if c.type == PgType.DATE), None)


def cutoff_date(today: date, years: int) -> date:
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February
        return today.replace(year=today.year - years, day=28)


@dataclass
class RetentionResult:
    table: str
    cutoff: date | None
    moved: int
    archive_uri: str | None


def apply_retention(contract: Contract, storage: StorageLike, *, years: int | None = None,
                    today: date | None = None) -> RetentionResult:
    """Move the rows of ``bz_<table>`` with a business date before the cutoff to the archive."""
    storage = as_storage(storage)
    column = business_date_column(contract)
    dt = storage.open(contract.bronze_table)
    if column is None or dt is None:
        return RetentionResult(contract.bronze_table, None, 0, None)
    refuse_deletion_vectors(dt, contract.bronze_table, "retention")
    years = storage.settings.retention_years if years is None else years
    cutoff = cutoff_date(today or datetime.now(UTC).date(), years)
    predicate = f"{column} < '{cutoff.isoformat()}'"
    archived_to = archive(storage)
    archive_uri = archived_to.uri(contract.bronze_table)
    with audited(storage, contract.bronze_table, "RETENTION") as entry:
        old = read_snapshot(dt, where=f"{quoted([column])} < DATE '{cutoff.isoformat()}'")
        entry.details = json.dumps({"cutoff": cutoff.isoformat(), "column": column, "archive": archive_uri})
        if old.num_rows:
            archived = old.append_column("archived_at", pa.array([datetime.now(UTC)] * old.num_rows,
                                                                pa.timestamp("us", tz="UTC")))
            target = archived_to.open(contract.bronze_table)
            if target is None:
                write_deltalake(archive_uri, archived, storage_options=archived_to.delta_options,
                                commit_properties=race_safe_properties(None))
            else:
                on = " AND ".join(f"t.{k} = s.{k}" for k in contract.merge_key)
                (target.merge(archived, predicate=on, source_alias="s", target_alias="t")
                 .when_not_matched_insert_all().execute())
            dt.delete(predicate)
        entry.records_affected = old.num_rows
    return RetentionResult(contract.bronze_table, cutoff, old.num_rows, archive_uri)
