"""PII governance: column encryption with per-subject keys, role-based reads, erasure, UC SQL."""

from __future__ import annotations

from bronze_assets.lib.governance.access import PLAINTEXT, Mask, Role, parse_role, sees_plaintext
from bronze_assets.lib.governance.crypto import PiiKeyError, master_key
from bronze_assets.lib.governance.erasure import ErasureResult, forget_subject
from bronze_assets.lib.governance.keystore import KEY_STORE, KeyStore, SubjectKeys
from bronze_assets.lib.governance.pii import PiiCipher, PiiDecryptionError, decrypt_table, encrypt_table
from bronze_assets.lib.governance.reader import TableNotLoadedError, protect, read_table
from bronze_assets.lib.governance.uc import uc_sql

__all__ = [
    "KEY_STORE",
    "PLAINTEXT",
    "ErasureResult",
    "KeyStore",
    "Mask",
    "PiiCipher",
    "PiiDecryptionError",
    "PiiKeyError",
    "Role",
    "SubjectKeys",
    "TableNotLoadedError",
    "decrypt_table",
    "encrypt_table",
    "forget_subject",
    "master_key",
    "parse_role",
    "protect",
    "read_table",
    "sees_plaintext",
    "uc_sql",
]
