"""The load's own errors, whose messages name the table and the fix."""

from __future__ import annotations

from typing import Any

from bronze_assets.lib.source.schema import SchemaDrift


class SchemaMismatchError(RuntimeError):
    """The source no longer matches the contract; the batch went to quarantine, nothing merged."""

    def __init__(self, message: str, drift: SchemaDrift, quarantined: int, batch_id: str) -> None:
        super().__init__(message)
        self.drift, self.quarantined, self.batch_id = drift, quarantined, batch_id

    @property
    def failure_metadata(self) -> dict[str, Any]:
        """What the failed run shows besides the message."""
        return {"quarantined_rows": self.quarantined, "batch_id": self.batch_id}


class SourceTableMissingError(RuntimeError):
    """The source has no table for the contract: a configuration problem, not a data problem."""
