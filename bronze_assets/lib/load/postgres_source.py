"""The two sources of a PostgreSQL table: the window read and the log-based CDC read, and the
choice between them (:func:`postgres_source`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bronze_assets.contracts import Contract
from bronze_assets.lib.cdc import CdcRead, acknowledge, cdc_choice, cdc_read
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.source import replication
from bronze_assets.lib.source.window import TableSelection

if TYPE_CHECKING:
    from bronze_assets.lib.load.lifecycle import LoadRequest


@dataclass(frozen=True)
class WindowRead:
    """The request's window, in the snapshot the engine takes; ``pattern``: why the watermark
    pattern ran (a CDC table that could not use its slot), shown with the asset."""

    selection: TableSelection
    pattern: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return dict(self.pattern)

    def acknowledge(self) -> None:
        """Nothing to tell: the window holds no position in the source."""


@dataclass(frozen=True)
class WindowSource:
    """The rows of the request's partition range by the window plan (ARCHITECTURE §2.4)."""

    request: LoadRequest
    dsn: str = field(repr=False)
    pattern: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def open(self) -> Iterator[WindowRead]:
        request = self.request
        yield WindowRead(TableSelection(self.dsn, request.window, request.changes_only), self.pattern)


@dataclass(frozen=True)
class LogRead:
    """A read of the table's replication slot (:class:`~bronze_assets.lib.cdc.CdcRead`): the
    changed keys, or every row in the new slot's snapshot; acknowledged to the slot once the
    changes are committed."""

    contract: Contract
    dsn: str = field(repr=False)
    read: CdcRead
    selection: TableSelection

    def metadata(self) -> dict[str, Any]:
        """The read's figures and the slot's health now."""
        return self.read.metadata(replication.slot_state(self.dsn, self.contract, self.read.slot))

    def acknowledge(self) -> None:
        acknowledge(self.contract, self.dsn, self.read)


@dataclass(frozen=True)
class CdcSource:
    """This deployment's replication slot of the table (:func:`~bronze_assets.lib.cdc.cdc_read`),
    chosen by :func:`~bronze_assets.lib.cdc.cdc_choice`, which set up the table's publication."""

    request: LoadRequest
    dsn: str = field(repr=False)
    storage: Storage
    commits: CommitLog | None = field(default=None, repr=False)  # the table's, when read already

    @contextmanager
    def open(self) -> Iterator[LogRead]:
        contract = self.request.contract
        with cdc_read(contract, self.dsn, self.storage, chosen=True, commits=self.commits) as read:
            yield LogRead(contract, self.dsn, read, read.selection(self.dsn, self.request.window))


def postgres_source(request: LoadRequest, dsn: str, storage: Storage, logger: logging.Logger,
                    commits: CommitLog | None = None) -> WindowSource | CdcSource:
    """The slot for a CDC table's run that reaches the open partition when the source allows it,
    else the window (with the reason CDC could not run, also logged to ``logger``). ``commits``:
    the table's commit log (the CDC position bronze holds), when read already."""
    use_cdc, pattern = cdc_choice(request.contract, dsn, request.window, storage, logger, commits)
    return CdcSource(request, dsn, storage, commits) if use_cdc else WindowSource(request, dsn, pattern)
