"""The source protocol of the load lifecycle, and the one place a load's source is chosen.

A :class:`Source` opens a :class:`SourceRead` that stays open while the engine stages (a CDC
read holds its slot's exported snapshot). The lifecycle sees only that: the read's
:attr:`~SourceRead.selection` (what the engine stages), its :meth:`~SourceRead.metadata` (which
load pattern ran, its figures) and its :meth:`~SourceRead.acknowledge` after the commit.
:func:`source_for` picks the source of a load. A new source (landing-zone files, ARCHITECTURE
§2.6) is one more implementation, a branch in :func:`source_for`, its selection type in
:data:`Selection` and how each engine stages it; the lifecycle does not change.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load.landing_source import FileSelection, LandingSource
from bronze_assets.lib.load.postgres_source import postgres_source
from bronze_assets.lib.source.window import TableSelection

if TYPE_CHECKING:
    from bronze_assets.lib.load.lifecycle import LoadRequest

# what a read tells the engine to stage, one type per kind of source
Selection: TypeAlias = TableSelection | FileSelection


class SourceRead(Protocol):
    """One open read of a source."""

    @property
    def selection(self) -> Selection:
        """What the engine stages."""

    def metadata(self) -> dict[str, Any]:
        """Which load pattern ran and its figures, for the asset (asked once the engine has staged)."""

    def acknowledge(self) -> None:
        """Tell the source its rows are committed (after the commit; a read may have nothing to say)."""


class Source(Protocol):
    """Where one load's rows come from."""

    def open(self) -> AbstractContextManager[SourceRead]:
        """The read, open while the block runs (the engine stages inside it)."""


def source_for(request: LoadRequest, dsn: str, storage: Storage, logger: logging.Logger,
               commits: CommitLog | None = None) -> Source:
    """The source ``request`` reads: a landing table's new files
    (:class:`~bronze_assets.lib.load.landing_source.LandingSource`), else a PostgreSQL table, by its
    window or its log-based CDC stream (:func:`~bronze_assets.lib.load.postgres_source.postgres_source`).
    ``logger``: the run's log; ``commits``: the target table's commit log (e.g. the CDC position it
    holds), when read already."""
    if request.contract.landing is not None:
        return LandingSource(request, storage)
    return postgres_source(request, dsn, storage, logger, commits)


def table_selection(selection: Selection, engine: str) -> TableSelection:
    """``selection`` as a read of a PostgreSQL table, or a TypeError naming what ``engine`` cannot stage."""
    if not isinstance(selection, TableSelection):
        raise TypeError(f"the {engine} engine cannot stage {type(selection).__name__}")
    return selection
