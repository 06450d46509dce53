"""Column-level encryption of a contract's ``encrypted_columns`` with per-data-subject keys.

Crypto-shredding instead of rewriting history: erasing a subject destroys only its key, so every
retained version of ``bz_customers`` becomes unreadable for that subject at once, while time
travel, VACUUM retention and the MERGE keep working unchanged for everyone else (a history
rewrite would have to rewrite or drop every old version of the whole table).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import TypeVar

import pyarrow as pa
from cryptography.exceptions import InvalidTag

from bronze_assets.contracts import Contract
from bronze_assets.lib.governance.crypto import (
    NONCE_BYTES,
    PiiKeyError,
    aad,
    decrypt_value,
    encrypt_value,
    is_ciphertext,
)
from bronze_assets.lib.governance.keystore import KeyStore, SubjectKeys

log = logging.getLogger(__name__)

Data = TypeVar("Data", pa.Table, pa.RecordBatch)


class PiiDecryptionError(RuntimeError):
    """A ciphertext failed authentication: tampered, or moved to another row/column/table."""


class PiiCipher:
    """Encrypts/decrypts the encrypted columns of one contract's bronze rows."""

    def __init__(
        self, contract: Contract, root: str | None = None, storage_options: dict[str, str] | None = None
    ) -> None:
        if not contract.encrypted_columns or contract.data_subject is None:
            raise ValueError(f"contract {contract.name} has no encrypted columns")
        self.contract = contract
        self.subject: str = contract.data_subject
        self.table_name = contract.bronze_table
        self.store = KeyStore(root, storage_options)

    def subject_ids(self, data: pa.Table | pa.RecordBatch) -> list[str | None]:
        """The data-subject id of every row, as text (the key store's id)."""
        return data.column(self.subject).cast(pa.string()).to_pylist()

    def prepare(self, subject_ids: Iterable[str | int | None], create: bool = True) -> SubjectKeys:
        """Keys of ``subject_ids`` (missing ones created in one commit when ``create``)."""
        ids = {str(s) for s in subject_ids if s is not None}
        return self.store.keys_for(self.contract.name, ids, create=create)

    def encrypt(self, data: Data, keys: SubjectKeys | None = None) -> Data:
        """``data`` with each encrypted column replaced by ciphertext; NULL stays NULL and a
        forgotten subject (tombstone) gets NULL."""
        subjects = self.subject_ids(data)
        keys = keys or self.prepare(subjects)
        unprepared = {s for s in subjects if s is not None} - keys.keys.keys() - keys.forgotten
        if unprepared:
            raise PiiKeyError(
                f"{self.table_name}: no data key prepared for {len(unprepared)} {self.subject} values "
                f"(e.g. {sorted(unprepared)[:3]}); call prepare() with every subject of the batch"
            )
        for column in self.contract.encrypted_columns:
            values = data.column(column).to_pylist()
            nonces = os.urandom(NONCE_BYTES * len(values))
            out: list[str | None] = []
            for i, (value, sid) in enumerate(zip(values, subjects, strict=True)):
                key = keys.keys.get(sid) if sid is not None and value is not None else None
                if key is None:
                    out.append(None)  # NULL value, or a forgotten subject (no key)
                    continue
                nonce = nonces[i * NONCE_BYTES:(i + 1) * NONCE_BYTES]
                out.append(encrypt_value(key, value, aad(self.table_name, column, sid), nonce))
            data = _replace(data, column, out)
        return data

    def decrypt(self, data: Data, keys: SubjectKeys | None = None) -> Data:
        """``data`` with encrypted columns in plaintext; a subject without a key reads NULL."""
        subjects = self.subject_ids(data)
        keys = keys or self.prepare(subjects, create=False)
        for column in self.contract.encrypted_columns:
            if column not in data.schema.names:
                continue
            out: list[str | None] = []
            legacy = keyless = 0
            for value, sid in zip(data.column(column).to_pylist(), subjects, strict=True):
                if value is None or sid is None:
                    out.append(None)
                elif not is_ciphertext(value):
                    legacy += 1  # written before encryption was enabled
                    out.append(value)
                elif (key := keys.keys.get(sid)) is None:
                    keyless += sid not in keys.forgotten  # neither a key nor a tombstone
                    out.append(None)  # crypto-shredded
                else:
                    try:
                        out.append(decrypt_value(key, value, aad(self.table_name, column, sid)))
                    except InvalidTag:
                        raise PiiDecryptionError(
                            f"{self.table_name}.{column}: the ciphertext of {self.subject} {sid} does "
                            f"not authenticate (tampered, or copied from another row/column)"
                        ) from None
            if legacy:
                log.warning("%s.%s: %d values are not encrypted", self.table_name, column, legacy)
            if keyless:
                log.warning("%s.%s: %d values have no key in %s (neither a key nor a tombstone); "
                            "they read NULL", self.table_name, column, keyless, self.store.uri)
            data = _replace(data, column, out)
        return data


def _replace(data: Data, column: str, values: list[str | None]) -> Data:
    i = data.schema.get_field_index(column)
    return data.set_column(i, data.schema.field(i), pa.array(values, data.schema.field(i).type))


def encrypt_table(
    data: Data, contract: Contract, root: str | None = None, storage_options: dict[str, str] | None = None
) -> Data:
    """Encrypt ``contract``'s encrypted columns in ``data`` (creating subject keys as needed)."""
    return PiiCipher(contract, root, storage_options).encrypt(data)


def decrypt_table(
    data: Data, contract: Contract, root: str | None = None, storage_options: dict[str, str] | None = None
) -> Data:
    """Decrypt ``contract``'s encrypted columns in ``data``; shredded subjects read NULL."""
    return PiiCipher(contract, root, storage_options).decrypt(data)


def encrypt_json_records(
    batch: pa.RecordBatch, contract: Contract, root: str | None = None,
    storage_options: dict[str, str] | None = None,
) -> pa.RecordBatch:
    """Raw rows as JSON objects (one string column, e.g. for ``bz_quarantine``) with the encrypted
    columns' values replaced by ciphertext; a row without a subject id loses those values."""
    cipher = PiiCipher(contract, root, storage_options)
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
