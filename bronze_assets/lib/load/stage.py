"""The local engine's staging: read a PostgreSQL window (or CDC keys), enrich, stage for the MERGE."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.commit_log import HASH_VERSION, CommitLog
from bronze_assets.lib.delta.load_commit import partition_range_metadata
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE, quarantine_rows
from bronze_assets.lib.delta.staging import StagedBatch, write_stream
from bronze_assets.lib.delta.storage import Storage, StorageLike, as_storage
from bronze_assets.lib.delta.writers import DELTA_RS, check_target, refuse_deletion_vectors
from bronze_assets.lib.enrich.metadata import BatchContext, RowKeys, bronze_schema, enrich, staged_schema
from bronze_assets.lib.governance.pii import encrypt_json_records, pii_protection
from bronze_assets.lib.load.errors import SchemaMismatchError, SourceTableMissingError
from bronze_assets.lib.load.plan import DEFAULT_OVERLAP, describe_window, next_watermark, plan_from_log
from bronze_assets.lib.source.dsn import describe_dsn
from bronze_assets.lib.source.extract import INVALID_PREFIX, LEGACY_HASH, RAW_PREFIX, SourceReader, key_schema
from bronze_assets.lib.source.schema import SchemaDrift, compare, live_columns_sql
from bronze_assets.lib.source.window import LoadWindow, SourceKey, TableSelection, cdc_window
from bronze_assets.settings import ENV_SOURCE_DSN

log = logging.getLogger(__name__)


def extract_and_stage(
    contract: Contract,
    dsn: str,
    storage: StorageLike,
    *,
    partition: tuple[datetime, datetime] | None = None,
    overlap: timedelta = DEFAULT_OVERLAP,
    batch_time: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    changes_only: bool = False,
    keys: Sequence[SourceKey] | None = None,
    all_rows: bool = False,
    snapshot_id: str | None = None,
    commits: CommitLog | None = None,
) -> StagedBatch:
    """Read the window of ``contract`` from the source and stage enriched rows for the MERGE.

    Reads data, the key sweep (for soft deletes) and the watermark cap in one snapshot. If
    the live table does not match the contract (missing column, changed type) the window's raw
    rows go to ``bz_quarantine`` and :class:`SchemaMismatchError` is raised before staging.

    ``keys`` (log-based CDC, a repair) reads just those primary keys (integers, or key texts),
    wherever they live; the ones the source no longer has are staged as deleted keys. ``all_rows``
    reads every row and places new keys in ``partition`` (a CDC slot's snapshot taken by the run
    of that partition).
    ``snapshot_id`` reads in an exported snapshot (a replication slot's, so the snapshot and the
    change stream meet exactly). ``commits`` is the table's commit log (and table) when the caller
    read it already; the staged batch carries it to the MERGE.
    """
    started = time.perf_counter()
    ctx = BatchContext(str(uuid.uuid4()), batch_time or datetime.now(UTC))
    storage = as_storage(storage)
    if commits is None:
        commits = CommitLog.read(storage.open(contract.bronze_table))
    target = commits.table
    check_target(storage, contract.bronze_table, DELTA_RS, target)  # one engine per S3 table
    refuse_deletion_vectors(target, contract.bronze_table, "load")  # before the source is read
    # migrate v1 hashes once (a keyless table is v2 from its first load: its keys are v2 hashes)
    legacy = target is not None and not contract.keyless and commits.hash_version() < HASH_VERSION
    legacy_hashes: list[pa.RecordBatch] = []
    planned, previous = plan_from_log(contract, partition, ctx.batch_time, commits, overlap, changes_only,
                                      settings=storage.settings)
    window = cdc_window(planned, keys, all_rows)
    found: list[pa.Array] = []
    named_by_value = window.keys is not None and not any(isinstance(k, tuple) for k in window.keys)
    gone: pa.Table | None = None  # keys named by text that the source no longer has
    histogram = np.zeros(101, dtype=np.int64)

    unreadable: list[pa.RecordBatch] = []

    def transform(raw: pa.RecordBatch) -> pa.RecordBatch:
        if any(name.startswith(INVALID_PREFIX) for name in raw.schema.names):
            unreadable.append(unreadable_records(raw, contract))
        if legacy:
            legacy_hashes.append(raw.select([*contract.primary_key, LEGACY_HASH]))
        return enrich(raw, contract, ctx, extras)

    def enriched(reader: SourceReader) -> Iterator[pa.RecordBatch]:
        numbered = RowKeys() if contract.keyless else None  # a keyless table's record_key, in one place
        for batch in reader.batches(window, transform=transform, extra_columns=extras, rescued=rescued,
                                     legacy=legacy):
            if numbered is not None:
                batch = numbered(batch, rows_schema)
            scores = batch.column("data_quality_score").to_numpy(zero_copy_only=False)
            histogram[:] += np.bincount(scores, minlength=101)
            if named_by_value:
                found.append(batch.column(contract.primary_key[0]))
            if progress is not None:
                progress(batch.num_rows)
            yield batch

    name = contract.bronze_table
    with SourceReader(dsn, contract, parallelism=storage.settings.extract_parallelism,
                      snapshot_id=snapshot_id) as reader:
        drift = inspect_source(reader, contract, window, ctx.batch_id, storage)
        extras = [c for c, _ in drift.added]
        rescued = [c for c, _, _ in drift.rescued]
        snapshot = reader.snapshot()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="key-sweep") as pool:
            # a window over every row stages the key set itself; other loads sweep the keys (for
            # deletes) beside the rows, in the same snapshot; nothing to sweep before the table exists
            sweep = pool.submit(_sweep_keys, reader, contract, storage.settings.stage_dir) \
                if not window.covers_table and window.keys is None and target is not None else None
            rows_schema = staged_schema(bronze_schema(contract, extras))
            path, rows = write_stream(enriched(reader), rows_schema, name, storage.settings.stage_dir)
            keys_path = sweep.result() if sweep is not None else None
        if window.keys is not None and not named_by_value:
            gone = reader.missing_keys(window.keys)  # type: ignore[arg-type]
    rescued_rows = sum(b.num_rows for b in unreadable)
    if rescued_rows:
        columns = sorted({c for b in unreadable for c in b.schema.metadata[b"columns"].decode().split(",")})
        quarantine_unstorable(contract, ctx.batch_id, unreadable, columns, storage,
                              drift.describe() if rescued else None)
    watermark = next_watermark(window, snapshot.watermark_cap(), previous)
    staged = StagedBatch(
        contract=contract, ctx=ctx, path=path, schema=bronze_schema(contract, extras), rows=rows,
        score_histogram=histogram, source_keys_path=keys_path, keys_are_rows=window.covers_table,
        watermark=watermark,
        window=describe_window(window), extract_seconds=round(time.perf_counter() - started, 3),
        metadata={"bronze.snapshot_xmin": str(snapshot.snapshot_xmin)} | partition_range_metadata(partition)
        | ({"bronze.new_columns": ", ".join(extras)} if extras else {})
        | ({"bronze.unreadable_records": str(rescued_rows)} if rescued or rescued_rows else {}),
        schema_drift=drift,
        legacy_hashes=pa.Table.from_batches(legacy_hashes) if legacy_hashes else None,
        pii=pii_protection(contract, storage),
        deleted_keys=gone if gone is not None or window.keys is None else
        _missing(contract, window.keys, found),
        commits=commits,
    )
    return staged


def stage_selection(contract: Contract, storage: StorageLike, selection: TableSelection,
                    batch_time: datetime | None = None, commits: CommitLog | None = None) -> StagedBatch:
    """Stage what a read of the PostgreSQL table selects (:func:`extract_and_stage`), with the
    metadata its last commit carries; ``commits``: the table's commit log, when read already."""
    staged = extract_and_stage(contract, selection.dsn, storage, partition=selection.partition,
                               batch_time=batch_time, changes_only=selection.changes_only,
                               keys=selection.keys, all_rows=selection.all_rows,
                               snapshot_id=selection.snapshot_id, commits=commits)
    staged.commit_always = selection.commit_always
    staged.final_metadata |= selection.final_metadata
    return staged


def inspect_source(
    reader: SourceReader, contract: Contract, window: LoadWindow, batch_id: str, storage: Storage,
) -> SchemaDrift:
    """Compare the live source table with the contract (in the reader's snapshot).

    A missing table raises :class:`SourceTableMissingError`; a breaking mismatch sends the
    window's raw rows to ``bz_quarantine`` and raises :class:`SchemaMismatchError`; anything
    else (added columns, rescued types) comes back as the drift the load handles.
    """
    name, dsn = contract.bronze_table, reader.dsn
    live = reader.query(live_columns_sql(contract))
    if not live:
        raise SourceTableMissingError(
            f"{name}: the source has no table {contract.source_ref} ({describe_dsn(dsn)}). "
            f"Create it (`bronze ddl` prints the expected CREATE TABLE; `bronze seed` fills a scratch "
            f"database), or point {ENV_SOURCE_DSN} at the database that holds it. Nothing was loaded.")
    drift = compare(contract, live)
    if drift.breaking:
        records = reader.raw_json(window, {c for c, _ in live})
        if contract.encrypted_columns:  # quarantine never holds plaintext PII either
            records = (encrypt_json_records(b, contract, storage) for b in records)
        quarantined = quarantine_rows(
            storage, contract.name, batch_id, drift.describe(), records,
        )
        raise SchemaMismatchError(
            f"{name}: the source table no longer matches its contract — {drift.describe()}. "
            f"{quarantined:,} rows of batch {batch_id} are in {QUARANTINE_TABLE}; nothing was "
            f"merged. Fix the source, or accept the change: `bronze init --refresh` records the "
            f"source's columns in the table's tables file (defs.yaml), then re-run.",
            drift, quarantined, batch_id,
        )
    return drift


def quarantine_unstorable(
    contract: Contract, batch_id: str, records: list[pa.RecordBatch], columns: list[str], storage: Storage,
    cause: str | None = None,
) -> None:
    """List the records whose values bronze could not store (JSON: primary key plus the
    PostgreSQL text of each such value) in ``bz_quarantine``, PII encrypted, and say so once."""
    name = contract.bronze_table
    if contract.encrypted_columns:  # quarantine never holds plaintext PII either
        records = [encrypt_json_records(b, contract, storage) for b in records]
    cause = cause or "values bronze cannot store (numeric NaN, ±infinity, years outside 1–9999)"
    quarantine_rows(storage, contract.name, batch_id,
                    f"{cause} in column(s) {', '.join(columns)} — kept as NULL in {name} (schema_fail "
                    f"scored); each record holds the primary key and the PostgreSQL text of the value",
                    records)
    log.warning("%s: %d records had values in %s that cannot be stored as the contract types; they "
                "are NULL in bronze, scored the schema penalty and are listed in %s", name,
                sum(b.num_rows for b in records), ", ".join(columns), QUARANTINE_TABLE)


def _missing(contract: Contract, keys: Sequence[SourceKey], found: list[pa.Array]) -> pa.Table:
    """The ``keys`` the source no longer has (read in the same snapshot as the rows)."""
    seen = {int(k) for arr in found for k in arr.to_pylist() if k is not None}
    schema = key_schema(contract)  # keys named by value: one integer column
    return pa.table([pa.array([k for k in keys if k not in seen], schema.field(0).type)], schema=schema)


def _sweep_keys(reader: SourceReader, contract: Contract, base: Path) -> Path:
    """Stage every primary key of the source (to find the keys that vanished)."""
    return write_stream(reader.key_batches(), key_schema(contract), f"{contract.bronze_table}-keys", base)[0]


def unreadable_records(raw: pa.RecordBatch, contract: Contract) -> pa.RecordBatch:
    """The records of ``raw`` with a value that could not be read as the contract type, as JSON
    (primary key, or a keyless table's record_hash, plus the raw text of every unreadable column),
    for ``bz_quarantine``."""
    flags = [c for c in raw.schema.names if c.startswith(INVALID_PREFIX)]
    frame = pl.from_arrow(raw)
    assert isinstance(frame, pl.DataFrame)
    bad = frame.filter(pl.any_horizontal([pl.col(f) for f in flags]))
    records = []
    identity = contract.primary_key or ("record_hash",)  # a keyless table's row: its content hash
    for row in bad.iter_rows(named=True):
        record = {k: row[k] for k in identity}
        for flag in flags:
            column = flag.removeprefix(INVALID_PREFIX)
            if row[flag]:
                record[column] = row[RAW_PREFIX + column]
        for c in contract.encrypted_columns:  # encrypted by the caller before quarantine
            record.setdefault(c, row.get(c))
        records.append(json.dumps(record, default=str))
    columns = ",".join(f.removeprefix(INVALID_PREFIX) for f in flags)
    schema = pa.schema([pa.field("record", pa.string())], metadata={"columns": columns})
    return pa.RecordBatch.from_arrays([pa.array(records, pa.string())], schema=schema)
