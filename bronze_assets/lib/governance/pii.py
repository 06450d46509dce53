"""Column-level encryption of a contract's ``encrypted_columns`` with per-data-subject keys.

Crypto-shredding instead of rewriting history: erasing a subject destroys only its key, so every
retained version of ``bz_customers`` becomes unreadable for that subject at once, while time
travel, VACUUM retention and the MERGE keep working unchanged for everyone else (a history
rewrite would have to rewrite or drop every old version of the whole table).
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import compress
from typing import TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.governance.crypto import PREFIX, PiiKeyError, SealError, aad, seal, unseal
from bronze_assets.lib.governance.keystore import KeyStore, SubjectKeys

log = logging.getLogger(__name__)

Data = TypeVar("Data", pa.Table, pa.RecordBatch)
Columns = dict[str, list[bytes]]
# Rows whose AESGCM objects (~2.4 KB of OpenSSL state each) live at once: few enough to stay in
# CPU cache (encrypting 250k customers: 1.2 s in slices of 512 to 2,048 rows, 2.1 s in one slice
# of 131,072) and to bound memory (holding all 250k keys as AESGCM objects took 600 MB).
SLICE_ROWS = 1024


class PiiDecryptionError(RuntimeError):
    """A ciphertext failed authentication: tampered, or moved to another row/column/table."""


class PiiCipher:
    """Encrypts/decrypts the encrypted columns of one contract's bronze rows.

    Vectorised: Arrow masks and polars base64 around tight AES-GCM loops (one ``urandom`` call
    per slice); values keep :func:`~bronze_assets.lib.governance.crypto.encrypt_value`'s format.
    """

    def __init__(
        self, contract: Contract, storage: StorageLike, kek: bytes | None = None,
    ) -> None:
        if not contract.encrypted_columns or contract.data_subject is None:
            raise ValueError(f"contract {contract.name} has no encrypted columns")
        self.contract = contract
        self.subject: str = contract.data_subject
        self.table_name = contract.bronze_table
        self.store = KeyStore(storage, kek)

    def subject_ids(self, data: pa.Table | pa.RecordBatch) -> list[str | None]:
        """The data-subject id of every row, as text (the key store's id)."""
        return self._subjects(data).to_pylist()

    def _subjects(self, data: pa.Table | pa.RecordBatch) -> pa.Array:
        return _array(data.column(self.subject)).cast(pa.string())

    def prepare(self, subject_ids: Iterable[str | int | None], create: bool = True) -> SubjectKeys:
        """Keys of ``subject_ids`` (missing ones created in one commit when ``create``)."""
        ids = {str(s) for s in subject_ids if s is not None}
        return self.store.keys_for(self.contract.name, ids, create=create)

    def encrypt(self, data: Data, keys: SubjectKeys | None = None) -> Data:
        """``data`` with each encrypted column replaced by ciphertext; NULL stays NULL and a
        forgotten subject (tombstone) gets NULL."""
        sids = self._subjects(data)
        subjects = sids.to_pylist()
        keys = keys or self.prepare(subjects)
        raw = list(map(keys.keys.get, subjects))  # None: no subject, or forgotten (no key)
        unprepared = {s for s, k in zip(subjects, raw, strict=True) if k is None} - keys.forgotten - {None}
        if unprepared:
            raise PiiKeyError(
                f"{self.table_name}: no data key prepared for {len(unprepared)} {self.subject} values "
                f"(e.g. {sorted(unprepared)[:3]}); call prepare() with every subject of the batch"
            )
        keyed = pa.array([k is not None for k in raw], pa.bool_())
        rows, plain = {}, {}
        for column in self.contract.encrypted_columns:
            values = _array(data.column(column))
            rows[column] = pc.and_(keyed, pc.is_valid(values))
            plain[column] = values.filter(rows[column]).cast(pa.binary()).to_pylist()
        sealed = self._by_slice(raw, sids, rows, plain, seal)
        for column, mask in rows.items():
            tokens = (PREFIX + pl.Series(sealed[column], dtype=pl.Binary).bin.encode("base64")).to_arrow()
            if len(tokens) < len(subjects):  # NULLs where a row had no value or no key
                tokens = pc.replace_with_mask(pa.nulls(len(subjects), tokens.type), mask, tokens)
            data = _replace(data, column, tokens)
        return data

    def decrypt(self, data: Data, keys: SubjectKeys | None = None) -> Data:
        """``data`` with encrypted columns in plaintext; a subject without a key reads NULL."""
        sids = self._subjects(data)
        subjects = sids.to_pylist()
        keys = keys or self.prepare(subjects, create=False)
        raw = list(map(keys.keys.get, subjects))
        keyed = pa.array([k is not None for k in raw], pa.bool_())
        tombstoned = pc.is_in(sids, pa.array(list(keys.forgotten), pa.string()))
        unknown = pc.and_not(pc.is_valid(sids), pc.or_(keyed, tombstoned))  # neither key nor tombstone
        rows, tokens, kept = {}, {}, {}
        for column in (c for c in self.contract.encrypted_columns if c in data.schema.names):
            values = _array(data.column(column))
            sealed = pc.fill_null(pc.starts_with(values, PREFIX), False)
            rows[column] = pc.and_(sealed, keyed)
            raw_tokens = pl.Series(values.filter(rows[column]).cast(pa.string())).str.strip_prefix(PREFIX)
            tokens[column] = raw_tokens.str.decode("base64").to_list()
            legacy = pc.and_not(pc.is_valid(sids), sealed)  # written before encryption was enabled
            kept[column] = pc.if_else(legacy, values, pa.scalar(None, values.type))  # shredded: NULL
            if n := _count(pc.and_(legacy, pc.is_valid(values))):
                log.warning("%s.%s: %d values are not encrypted", self.table_name, column, n)
            if n := _count(pc.and_(sealed, unknown)):
                log.warning("%s.%s: %d values have no key in %s (neither a key nor a tombstone); "
                            "they read NULL", self.table_name, column, n, self.store.uri)
        plain = self._by_slice(raw, sids, rows, tokens, unseal)
        for column, mask in rows.items():
            out = pa.array(plain[column], pa.binary()).cast(kept[column].type)
            data = _replace(data, column, pc.replace_with_mask(kept[column], mask, out))
        return data

    def _by_slice(
        self, raw: list[bytes | None], sids: pa.Array, rows: dict[str, pa.Array], inputs: Columns,
        fn: Callable[[list[AESGCM], list[bytes], list[bytes]], list[bytes]],
    ) -> Columns:
        """``fn(ciphers, inputs, aads)`` over the ``rows`` of each column (``raw``: each row's data
        key), ``SLICE_ROWS`` rows at a time with one ``AESGCM`` per data key and slice, shared by
        the columns. The cyclic garbage collector is paused meanwhile: an ``AESGCM`` is a tracked
        object, so building one per subject otherwise runs a collection every few hundred
        subjects, and the full ones walk the whole process's heap; nothing here forms a cycle."""
        aads = {c: self._aads(c, sids.filter(mask)) for c, mask in rows.items()}
        masks = {c: None if mask.null_count == 0 and bool(pc.all(mask).as_py()) else mask.to_pylist()
                 for c, mask in rows.items()}
        out: Columns = {c: [] for c in rows}
        with _collector_paused():
            for lo in range(0, len(raw), SLICE_ROWS):
                chunk = raw[lo:lo + SLICE_ROWS]
                built = {k: AESGCM(k) for k in set(chunk) if k is not None}
                ciphers = list(map(built.get, chunk))  # the row's cipher (None: no key)
                for column, mask in masks.items():
                    part = None if mask is None else mask[lo:lo + SLICE_ROWS]
                    used = ciphers if part is None else list(compress(ciphers, part))
                    done = len(out[column])
                    try:
                        out[column] += fn(used, inputs[column][done:done + len(used)],  # type: ignore[arg-type]
                                          aads[column][done:done + len(used)])
                    except SealError as exc:
                        failed = list(compress(range(lo, lo + len(chunk)), part or [True] * len(chunk)))
                        raise PiiDecryptionError(
                            f"{self.table_name}.{column}: the ciphertext of {self.subject} "
                            f"{sids[failed[exc.index]].as_py()} does not authenticate (tampered, or "
                            f"copied from another row/column)"
                        ) from None
        return out

    def _aads(self, column: str, sids: pa.Array) -> list[bytes]:
        """:func:`aad` of each subject id in ``sids`` (no nulls) for ``column``."""
        prefix = aad(self.table_name, column, "")
        return [prefix + sid for sid in sids.cast(pa.binary()).to_pylist()]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (reference counting still frees
    everything; objects left over are collected when it is back on), unless it was off already."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _count(mask: pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)


def _replace(data: Data, column: str, values: pa.Array) -> Data:
    i = data.schema.get_field_index(column)
    return data.set_column(i, data.schema.field(i), values.cast(data.schema.field(i).type))


class PiiProtection:
    """The writer's PII hook (:class:`~bronze_assets.lib.delta.protection.PiiHook`) for one table:
    subject keys created before a write, PII columns encrypted, erased subjects listed."""

    def __init__(self, contract: Contract, storage: StorageLike, kek: bytes | None = None) -> None:
        self.contract, self.storage, self.kek = contract, as_storage(storage), kek
        self.cipher = PiiCipher(contract, self.storage, kek) if contract.encrypted_columns else None
        self.keys: SubjectKeys | None = None

    def prepare(self, subjects: Iterable[str | int | None]) -> None:
        if self.cipher is not None:
            self.keys = self.cipher.prepare(subjects)

    def protect(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return batch if self.cipher is None else self.cipher.encrypt(batch, self.keys)

    def release(self) -> None:
        """Drop the prepared data keys: a raw key and its subject id per row of the last commit
        chunk (≈ 145 bytes each), which the staged batch holding this hook would otherwise keep
        for as long as it lives (Dagster keeps a run's outputs until the run ends)."""
        self.keys = None

    def erased_subjects(self) -> list[str]:
        rows = KeyStore(self.storage, self.kek).rows(self.contract.name)
        return rows.filter(pl.col("forgotten_at").is_not_null()).get_column("subject_id").to_list()


def pii_protection(contract: Contract, storage: StorageLike) -> PiiProtection | None:
    """The PII hook for writing or restoring ``contract``'s table; None when it holds no PII subject."""
    if not contract.encrypted_columns and contract.data_subject is None:
        return None
    return PiiProtection(contract, storage)


def encrypt_table(data: Data, contract: Contract, storage: StorageLike) -> Data:
    """Encrypt ``contract``'s encrypted columns in ``data`` (creating subject keys as needed)."""
    return PiiCipher(contract, storage).encrypt(data)


def decrypt_table(data: Data, contract: Contract, storage: StorageLike) -> Data:
    """Decrypt ``contract``'s encrypted columns in ``data``; shredded subjects read NULL."""
    return PiiCipher(contract, storage).decrypt(data)


def encrypt_json_records(
    batch: pa.RecordBatch, contract: Contract, storage: StorageLike) -> pa.RecordBatch:
    """Raw rows as JSON objects (one string column, e.g. for ``bz_quarantine``) with the encrypted
    columns' values replaced by ciphertext; a row without a subject id loses those values."""
    cipher = PiiCipher(contract, storage)
    rows = [json.loads(r) if r is not None else None for r in batch.column(0).to_pylist()]
    present = [r for r in rows if isinstance(r, dict)]
    table = pa.table({
        cipher.subject: pa.array([None if r.get(cipher.subject) is None else str(r[cipher.subject])
                                  for r in present], pa.string()),
        **{c: pa.array([None if r.get(c) is None else str(r[c]) for r in present], pa.string())
           for c in contract.encrypted_columns},
    })
    encrypted = cipher.encrypt(table, cipher.prepare(table.column(cipher.subject).to_pylist()))
    for i, row in enumerate(present):
        for c in contract.encrypted_columns:
            if c in row:
                row[c] = encrypted.column(c)[i].as_py()
    out = [json.dumps(r) if r is not None else None for r in rows]
    return pa.RecordBatch.from_arrays([pa.array(out, pa.string())], names=[batch.schema.names[0]])
