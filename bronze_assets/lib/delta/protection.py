"""What the bronze writer asks of PII protection, as a hook (``governance.pii.PiiProtection``
implements it): lib/delta writes and restores tables without knowing how PII is protected."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa

from bronze_assets.contracts import Contract


class PiiHook(Protocol):
    """Called by the writer around every write of a table with PII."""

    def prepare(self, subjects: Sequence[Any]) -> None:
        """Make ready to protect the rows of these data subjects (e.g. create their keys)."""

    def protect(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` as it may be stored (its PII columns protected)."""

    def erased_subjects(self) -> list[str]:
        """The data subjects whose PII was erased (a restore must not bring it back)."""

    def release(self) -> None:
        """Drop what :meth:`prepare` made ready (the write is over)."""


class UnprotectedWriteError(RuntimeError):
    """A table with PII was about to be written without its protection hook."""


def require_hook(contract: Contract, hook: PiiHook | None, action: str) -> PiiHook | None:
    """``hook``, or an error when ``contract`` has PII and there is none: never plaintext by omission."""
    if hook is None and (contract.encrypted_columns or (action == "restore" and contract.data_subject)):
        raise UnprotectedWriteError(
            f"{contract.bronze_table}: cannot {action} without PII protection; pass "
            f"bronze_assets.lib.governance.pii.pii_protection(contract, storage) as the PII hook.")
    return hook
