"""``bz_pii_keys``: one AES-256 data key per data subject, wrapped under the master key.

Rows: (subject_type, subject_id, wrapped_key, kek_id, created_at, forgotten_at). Erasure sets
``wrapped_key`` to NULL and ``forgotten_at`` (a tombstone, so later loads encrypt that subject
to NULL), then VACUUMs this table with zero retention: the files that held the old key are
deleted, so no retained version of any bronze table can be decrypted for that subject again.
Only column statistics of the identifying columns are kept in the Delta log (never key bytes).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from deltalake import DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from bronze_assets.lib.delta.create_race import race_safe_properties
from bronze_assets.lib.delta.exclusive_append import append_exclusive_from, is_conflict
from bronze_assets.lib.delta.key_ranges import sql_literal
from bronze_assets.lib.delta.query import read_snapshot, scan_columns
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.governance.crypto import (
    PiiKeyError,
    SealError,
    kek_id,
    master_key,
    random_keys,
    seal,
    unseal,
)

KEY_STORE = "bz_pii_keys"
TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([
    ("subject_type", pa.string()), ("subject_id", pa.string()), ("wrapped_key", pa.binary()),
    ("kek_id", pa.string()), ("created_at", TS), ("forgotten_at", TS),
])
CONFIGURATION = {"delta.dataSkippingStatsColumns": "subject_type,subject_id,created_at,forgotten_at"}
MATCH = "t.subject_type = s.subject_type AND t.subject_id = s.subject_id"
MAX_ATTEMPTS = 5


@dataclass
class SubjectKeys:
    """Raw data keys of some subjects of one subject type; ``forgotten`` subjects have none.

    Raw bytes, not ``AESGCM`` objects: one of those holds ~2.4 KB of OpenSSL state (600 MB for
    250k subjects); :class:`~bronze_assets.lib.governance.pii.PiiCipher` builds them per slice.
    """

    keys: dict[str, bytes] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)


@dataclass
class ShredResult:
    keys_shredded: int
    tombstones_added: int
    files_vacuumed: int


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _app(subject_type: str) -> str:
    """The app transaction of every write of ``subject_type``'s keys (creates and erasures): of two
    writers at once only one commits, the other chooses its rows again."""
    return f"bronze_assets/{KEY_STORE}/{subject_type}"


def _contexts(subject_type: str, subject_ids: list[str]) -> list[bytes]:
    """Associated data of each subject's wrapped key: ``bz_pii_keys␟type␟id``."""
    prefix = f"{KEY_STORE}\x1f{subject_type}\x1f".encode()
    return [prefix + sid.encode() for sid in subject_ids]


class KeyStore:
    """The key table under a bronze root."""

    def __init__(self, storage: StorageLike, kek: bytes | None = None) -> None:
        self.storage = as_storage(storage)
        self.uri = self.storage.uri(KEY_STORE)
        self.storage_options = self.storage.delta_options
        self._kek = kek  # the master key, when the caller resolved it (e.g. for Spark executors)

    def _open(self) -> DeltaTable | None:
        return self.storage.open(KEY_STORE)

    def rows(self, subject_type: str, subject_ids: Iterable[str] | None = None) -> pl.DataFrame:
        """Key rows of ``subject_type`` (only ``subject_ids`` if given)."""
        return self._rows(self._open(), subject_type, subject_ids)

    @staticmethod
    def _rows(dt: DeltaTable | None, subject_type: str, subject_ids: Iterable[str] | None) -> pl.DataFrame:
        """:meth:`rows` of ``dt`` as opened. Given ids, the scan is streamed and filtered batch by
        batch and the files outside the ids' range are skipped by their statistics: a load's chunk
        of subjects holds its own keys, not the key table's."""
        if dt is None:
            return _frame(SCHEMA.empty_table())
        schema = pa.schema(dt.schema().to_arrow())
        where = f"subject_type = {sql_literal(subject_type)}"
        if subject_ids is None:
            return _frame(read_snapshot(dt, where=where))
        wanted = pa.array(sorted(set(subject_ids)), pa.string())
        if not len(wanted):
            return _frame(schema.empty_table())
        where += (f" AND subject_id >= {sql_literal(wanted[0].as_py())}"
                  f" AND subject_id <= {sql_literal(wanted[-1].as_py())}")
        parts = []
        for batch in pa.RecordBatchReader.from_stream(scan_columns(dt, schema.names, where)):
            rows = pa.Table.from_batches([batch]).cast(schema)
            parts.append(rows.filter(pc.is_in(rows["subject_id"], value_set=wanted)))
        return _frame(pa.concat_tables(parts) if parts else schema.empty_table())

    def keys_for(self, subject_type: str, subject_ids: Iterable[str], create: bool = True) -> SubjectKeys:
        """Data keys of ``subject_ids``; with ``create``, missing keys are made in one commit.

        The missing keys are appended, chosen against the key rows of ``subject_ids`` only (no MERGE
        against the whole key table); the commit carries the key store's app transaction, as every
        write to it does, so a concurrent creator or erasure fails it and the keys are chosen again."""
        wanted = set(subject_ids)
        start = self._open()
        rows = self._rows(start, subject_type, wanted)
        created: dict[str, bytes] = {}
        if create and rows.height < len(wanted):

            def missing_keys(dt: DeltaTable | None) -> pa.Table | None:
                nonlocal rows, created
                if dt is not start:  # a retry: the table as a concurrent writer left it
                    rows = self._rows(dt, subject_type, wanted)
                missing = sorted(wanted - set(rows.get_column("subject_id").to_list()))
                table, created = self._new_keys(subject_type, missing) if missing else (None, {})
                return table

            append_exclusive_from(start, self.storage, KEY_STORE, _app(subject_type), missing_keys,
                                  configuration=CONFIGURATION)
        result = SubjectKeys(created, set(rows.filter(pl.col("forgotten_at").is_not_null())["subject_id"]))
        live = rows.filter(pl.col("forgotten_at").is_null() & pl.col("wrapped_key").is_not_null())
        if not live.height:
            return result
        kek_bytes = self._kek or master_key(self.storage.settings, create=create)
        expected = kek_id(kek_bytes)
        others = set(live.get_column("kek_id").unique().to_list()) - {expected}
        if others:
            raise PiiKeyError(
                f"{self.uri} holds keys wrapped under master key {sorted(others)} but the configured "
                f"KPiiMasterKey is {expected}. Configure the master key the keys were created with."
            )
        sids = live.get_column("subject_id").to_list()
        try:
            data_keys = unseal(AESGCM(kek_bytes), live.get_column("wrapped_key").to_list(),
                               _contexts(subject_type, sids))
        except SealError as exc:
            raise PiiKeyError(f"{self.uri}: the key of {subject_type} {sids[exc.index]} does not unwrap"
                              ) from None
        result.keys.update(zip(sids, data_keys, strict=True))
        return result

    def _new_keys(self, subject_type: str, subject_ids: list[str]) -> tuple[pa.Table, dict[str, bytes]]:
        """Key rows for ``subject_ids`` (new random data keys wrapped under the master key) and
        the raw keys by subject."""
        kek_bytes = master_key(self.storage.settings, create=True)
        kek, kid = AESGCM(kek_bytes), kek_id(kek_bytes)
        material = random_keys(len(subject_ids))
        wrapped = seal(kek, material, _contexts(subject_type, subject_ids))
        n = len(subject_ids)
        table = pa.table({
            "subject_type": pa.repeat(pa.scalar(subject_type, pa.string()), n),
            "subject_id": pa.array(subject_ids, pa.string()),
            "wrapped_key": pa.array(wrapped, pa.binary()),
            "kek_id": pa.repeat(pa.scalar(kid, pa.string()), n),
            "created_at": pa.repeat(pa.scalar(datetime.now(UTC), TS), n),
            "forgotten_at": pa.nulls(n, TS),
        })
        return table, dict(zip(subject_ids, material, strict=True))

    def _commit(self, subject_type: str, merge, table: pa.Table) -> None:  # type: ignore[no-untyped-def]
        """Create the table with ``table`` or run ``merge(dt, commit_properties)`` on it, in a commit
        of the key store's app transaction for ``subject_type``; retry concurrent commits."""
        app = _app(subject_type)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            dt = self._open()
            version = ((dt.transaction_version(app) if dt is not None else None) or 0) + 1
            properties = race_safe_properties(dt, app_transactions=[
                Transaction(app, version, int(time.time() * 1000))])
            try:
                if dt is None:
                    write_deltalake(self.uri, table, mode="error", configuration=CONFIGURATION,
                                    storage_options=self.storage_options, commit_properties=properties)
                else:
                    merge(dt, properties)
                return
            except (CommitFailedError, DeltaError) as exc:
                if attempt == MAX_ATTEMPTS or not is_conflict(exc):
                    raise
                time.sleep(0.05 * 2**attempt)

    def forget(self, subject_type: str, subject_ids: Iterable[str]) -> ShredResult:
        """Destroy the keys of ``subject_ids`` (tombstones stay) and vacuum the old key files."""
        ids = sorted(set(subject_ids))
        existing = self.rows(subject_type, ids)
        shredded = existing.filter(pl.col("wrapped_key").is_not_null()).height
        n = len(ids)
        now = datetime.now(UTC)
        tombstones = pa.table({
            "subject_type": pa.array([subject_type] * n, pa.string()),
            "subject_id": pa.array(ids, pa.string()),
            "wrapped_key": pa.nulls(n, pa.binary()),
            "kek_id": pa.nulls(n, pa.string()),
            "created_at": pa.array([now] * n, TS),
            "forgotten_at": pa.array([now] * n, TS),
        })
        self._commit(subject_type, lambda dt, properties: dt.merge(
            tombstones, predicate=MATCH, source_alias="s", target_alias="t", commit_properties=properties,
        ).when_matched_update(
            {"wrapped_key": "NULL", "kek_id": "NULL", "forgotten_at": "s.forgotten_at"},
            predicate="t.forgotten_at IS NULL OR t.wrapped_key IS NOT NULL",
        ).when_not_matched_insert_all().execute(), tombstones)
        dt = self._open()
        assert dt is not None
        removed = dt.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False)
        orphans = self._delete_orphans(dt, subject_type, ids)
        return ShredResult(shredded, n - existing.height, len(removed) + orphans)

    def _delete_orphans(self, dt: DeltaTable, subject_type: str, ids: list[str]) -> int:
        """Delete the key table's files that no commit references and that hold a key of ``ids``;
        returns how many. A write that lost a race leaves its file behind (a MERGE attempt copies
        every key of the files it rewrites), which the vacuum of removed files never deletes. A
        write still in flight whose file holds such a key chose its rows before this erasure
        committed, so its commit fails (the key store's app transaction); the others are kept."""
        wanted = pa.array(ids, pa.string())
        columns = ["subject_type", "subject_id", "wrapped_key"]
        orphans = []
        for name in dt.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False, full=True):
            raw = self.storage.read_file(f"{KEY_STORE}/{name}")
            try:
                rows = pq.read_table(pa.BufferReader(raw), columns=columns)
            except (pa.ArrowInvalid, OSError, TypeError):  # gone, or still being written
                continue
            kind, sid = (rows[c].cast(pa.string()) for c in ("subject_type", "subject_id"))
            held = pc.and_(pc.and_(pc.equal(kind, subject_type), pc.is_valid(rows["wrapped_key"])),
                           pc.is_in(sid, value_set=wanted))
            if pc.any(held).as_py():
                orphans.append(f"{KEY_STORE}/{name}")
        self.storage.delete_files(orphans)
        return len(orphans)
