"""AES-256-GCM primitives for PII: the master key (KEK), key wrapping and value ciphertext.

A value is stored as ``enc:v1:`` + base64(nonce ‖ ciphertext ‖ tag). The associated data binds
it to its bronze table, column and data subject, so a ciphertext copied to another row, column
or table does not decrypt. Data keys (one per data subject) are wrapped under the master key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bronze_assets.lib.secrets import K_PII_MASTER_KEY, get_secret, providers, register_secret
from bronze_assets.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "enc:v1:"
NONCE_BYTES = 12
KEY_BYTES = 32
MASTER_KEY_FILE = ("secrets", "pii_master.key")


class PiiKeyError(RuntimeError):
    """The PII master key is missing, malformed, or not the one the key store was written with."""


class SealError(InvalidTag):
    """Value ``index`` of a batch does not authenticate (wrong key or associated data)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


def master_key_path(data_dir: Path) -> Path:
    """Where a laptop's generated master key lives: ``$BRONZE_DATA_DIR/secrets/pii_master.key``."""
    return data_dir.joinpath(*MASTER_KEY_FILE)


def _decode(value: str, source: str) -> bytes:
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise PiiKeyError(
            f"the PII master key from {source} is not base64 of {KEY_BYTES} bytes; generate one with "
            f"python -c \"import os,base64;print(base64.b64encode(os.urandom(32)).decode())\""
        )
    return key


def master_key(settings: Settings, create: bool = True) -> bytes:
    """The KEK: secret ``KPiiMasterKey`` (from the providers ``settings`` configure), else the
    local key file under ``settings.data_dir`` (generated once if ``create``)."""
    value = get_secret(K_PII_MASTER_KEY, providers(settings))
    if value:
        return _decode(value, f"secret {K_PII_MASTER_KEY}")
    path = master_key_path(settings.data_dir)
    if not path.exists():
        if not create:
            raise PiiKeyError(
                f"no PII master key: secret {K_PII_MASTER_KEY} is not set and {path} does not exist. "
                f"Set {K_PII_MASTER_KEY} (env, Databricks secret scope or Azure Key Vault) to the key "
                f"the bronze tables were encrypted with."
            )
        _generate(path)
    text = path.read_text().strip()
    register_secret(text)
    return _decode(text, str(path))


def _generate(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()
    # Written whole under a name of its own, then linked into place: a process that finds the key
    # file never reads it half written, and of two generating at once the first link wins.
    fd, tmp = tempfile.mkstemp(prefix=".pii_master.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process generated it first
            return
    finally:
        os.unlink(tmp)
    register_secret(text)
    log.warning(
        "no %s configured: generated a local PII master key in %s (mode 0600). Back it up — without "
        "it encrypted PII cannot be read; in production set %s in the secret provider instead.",
        K_PII_MASTER_KEY, path, K_PII_MASTER_KEY,
    )


def kek_id(key: bytes) -> str:
    """A non-secret fingerprint of a master key (stored with each wrapped key)."""
    return hashlib.sha256(b"bronze-pii-kek\x00" + key).hexdigest()[:16]


def aad(table: str, column: str, subject_id: str) -> bytes:
    """Associated data binding a ciphertext to its table, column and data subject."""
    return f"{table}\x1f{column}\x1f{subject_id}".encode()


def wrap_key(kek: AESGCM, data_key: bytes, context: bytes) -> bytes:
    """``nonce ‖ AES-GCM(data_key)`` under the master key, bound to ``context``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + kek.encrypt(nonce, data_key, context)


def unwrap_key(kek: AESGCM, wrapped: bytes, context: bytes) -> bytes:
    """Inverse of :func:`wrap_key`; raises ``InvalidTag`` for a wrong key or context."""
    return kek.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context)


def random_keys(n: int) -> list[bytes]:
    """``n`` fresh AES-256 data keys (one ``urandom`` call)."""
    return _split(os.urandom(KEY_BYTES * n), KEY_BYTES)


def _split(blob: bytes, size: int) -> list[bytes]:
    return [blob[i:i + size] for i in range(0, len(blob), size)]


def _per_value(keys: AESGCM | Sequence[AESGCM], n: int) -> Sequence[AESGCM]:
    return [keys] * n if isinstance(keys, AESGCM) else keys


def seal(keys: AESGCM | Sequence[AESGCM], plaintexts: Sequence[bytes], associated: Sequence[bytes]
         ) -> list[bytes]:
    """``nonce ‖ AES-GCM(plaintext)`` of each value under one key or a key per value, each with a
    fresh random nonce: :func:`wrap_key`'s format, and :func:`encrypt_value`'s before base64."""
    nonces = _split(os.urandom(NONCE_BYTES * len(plaintexts)), NONCE_BYTES)
    return [n + k.encrypt(n, p, a) for k, n, p, a
            in zip(_per_value(keys, len(plaintexts)), nonces, plaintexts, associated, strict=True)]


def unseal(keys: AESGCM | Sequence[AESGCM], sealed: Sequence[bytes], associated: Sequence[bytes]
           ) -> list[bytes]:
    """Inverse of :func:`seal`; raises :class:`SealError` naming the first value that fails."""
    ciphers = _per_value(keys, len(sealed))
    try:
        return [k.decrypt(s[:NONCE_BYTES], s[NONCE_BYTES:], a)
                for k, s, a in zip(ciphers, sealed, associated, strict=True)]
    except InvalidTag:
        for i, (k, s, a) in enumerate(zip(ciphers, sealed, associated, strict=True)):
            try:
                k.decrypt(s[:NONCE_BYTES], s[NONCE_BYTES:], a)
            except InvalidTag:
                raise SealError(i) from None
        raise


def encrypt_value(key: AESGCM, plaintext: str, associated: bytes, nonce: bytes | None = None) -> str:
    """Ciphertext string of ``plaintext`` (a fresh random nonce unless one is given)."""
    nonce = nonce or os.urandom(NONCE_BYTES)
    sealed = key.encrypt(nonce, plaintext.encode(), associated)
    return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")


def is_ciphertext(value: str | None) -> bool:
    return value is not None and value.startswith(PREFIX)


def decrypt_value(key: AESGCM, token: str, associated: bytes) -> str:
    """Plaintext of a :func:`encrypt_value` string; raises ``InvalidTag`` if key or AAD differ."""
    raw = base64.b64decode(token[len(PREFIX):])
    return key.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated).decode()
