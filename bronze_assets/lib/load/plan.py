"""What one load reads and the watermark it may record (ARCHITECTURE §2.4 v2), for every engine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from bronze_assets.contracts import Contract, PartitionKind
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.source.window import LoadWindow
from bronze_assets.settings import Settings

DEFAULT_OVERLAP = timedelta(minutes=15)


def month_start(value: datetime) -> datetime:
    return value.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(value: datetime) -> datetime:
    start = month_start(value)
    return (start + timedelta(days=32)).replace(day=1)


def plan_window(
    contract: Contract,
    partition: tuple[datetime, datetime] | None,
    now: datetime,
    watermark: datetime | None,
    overlap: timedelta = DEFAULT_OVERLAP,
    changes_only: bool = False,
    first_load: Callable[[], datetime | None] | None = None,
    *,
    settings: Settings,
) -> LoadWindow:
    """The window a load of ``partition`` (UTC start/end of a partition range, None = whole table)
    reads (ARCHITECTURE §2.4 v2).

    The run of the open partition (or of the one that closed last, which batch schedules load)
    also reads every row updated since the table's watermark minus ``overlap``, wherever it
    lives: so every change reaches bronze by that run, and rows committed late by long
    transactions are not missed. Older partitions (backfills) re-read just their own rows.
    ``changes_only`` (scheduled runs, once the table has a watermark): the open partition's run
    reads only what changed since the watermark, not the partition's own rows again, so an hourly
    tick costs the change rather than the partition (on the go-live day, the whole history).

    A table's watermark starts with its first run that reaches the open partition, whatever else
    that run covers or has covered: if earlier runs loaded other partitions separately (month by
    month, a partial backfill), that first run reads every row changed since the first of them
    (``first_load()``, the table's oldest load, asked only then) minus ``overlap``, so nothing
    changed in between is missed. ``settings`` give the first partition (``partitions_start``,
    :meth:`Settings.go_live`).
    """
    monthly = contract.partitioning.kind is PartitionKind.MONTHLY_BUSINESS_DATE
    first, newest_end = (settings.partitions_start, next_month(now).date()) if monthly \
        else (settings.go_live(now.date()), (now + timedelta(days=1)).date())
    if partition is None:
        return LoadWindow(first_month=first, newest_end=newest_end)
    start, end = partition
    open_start = month_start(now) if monthly else now.replace(hour=0, minute=0, second=0, microsecond=0)
    reaches_open = end >= open_start
    since = watermark if watermark is not None or not reaches_open or first_load is None else first_load()
    changed_since = since - overlap if since is not None and reaches_open else None
    changes_only = changes_only and watermark is not None and changed_since is not None
    if monthly:
        return LoadWindow(start, end, changed_since=changed_since, first_month=first, newest_end=newest_end,
                          changes_only=changes_only, reaches_open=reaches_open)
    return LoadWindow(start, end, initial=start.date() <= first, changed_since=changed_since,
                      first_month=first, newest_end=newest_end, open=end > now, changes_only=changes_only,
                      reaches_open=reaches_open)


def plan_from_log(
    contract: Contract,
    partition: tuple[datetime, datetime] | None,
    now: datetime,
    commits: CommitLog,
    overlap: timedelta = DEFAULT_OVERLAP,
    changes_only: bool = False,
    *,
    settings: Settings,
) -> tuple[LoadWindow, datetime | None]:
    """:func:`plan_window` with the watermark and first load read from the table's commit log
    (every engine), and the watermark read. Each is read only when the window depends on it: a
    whole-table load (a full load) asks the log nothing, so it reads just the latest commits
    however long its history; the first load (a walk of the whole log) only until the table has
    a watermark, by a run that reaches the open partition."""
    if partition is None:
        return plan_window(contract, None, now, None, overlap, changes_only, settings=settings), None
    previous = commits.watermark()
    return plan_window(contract, partition, now, previous, overlap, changes_only, commits.first_load_time,
                       settings=settings), previous


def next_watermark(window: LoadWindow, cap: datetime, previous: datetime | None) -> datetime | None:
    """The watermark a load of ``window`` may record: every row updated before it has been read.

    A widened load read everything since the previous watermark or the table's first load (→
    ``cap``, the snapshot's safe cap). The first run of a new table that reaches the open
    partition starts it at the end of what it read (ARCHITECTURE §2.4: later changes to any
    partition loaded since are read from there on); so does the initial snapshot. A run over
    every month of a business-date table read everything. Other backfills record none, and a
    watermark never goes back.
    """
    if window.is_full or window.end is None or window.start is None:
        return None
    if window.changed_since is not None or window.all_rows:
        new = cap
    elif window.initial or window.reaches_open:
        new = min(window.end, cap)
    elif window.first_month is not None and window.newest_end is not None \
            and window.start.date() <= window.first_month and window.end.date() >= window.newest_end:
        new = cap
    else:
        return None
    return new if previous is None or new > previous else None


def describe_window(window: LoadWindow) -> str:
    """How a load's window reads in logs, metadata and commits."""
    if window.keys is not None:
        return f"{len(window.keys):,} changed keys (log-based CDC)"
    if window.all_rows and not window.is_full:
        return "every row, in the snapshot of a new replication slot (log-based CDC)"
    if window.is_full:
        return "full table"
    text = f"[{window.start.isoformat()}, {window.end.isoformat()})"  # type: ignore[union-attr]
    if window.initial:
        text = f"initial snapshot up to {window.end.isoformat()}"  # type: ignore[union-attr]
    if window.changes_only and window.changed_since is not None:
        text = f"rows updated since {window.changed_since.isoformat()} (scheduled run: changes only)"
    elif window.changed_since is not None:
        text += f" + every row updated since {window.changed_since.isoformat()}"
    return text
