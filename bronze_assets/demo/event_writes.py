"""A ranged run's per-partition materializations written to in-memory event storage as one batch.

With ``DAGSTER_EVENT_BATCH_SIZE`` (set by ``bronze demo``) Dagster hands a step's per-partition
materializations (or observations) to the event log storage in one ``store_event_batch`` call.
PostgreSQL storage (dagster-postgres) writes such a batch with one ``INSERT`` and updates the
asset's row once, with the last event; Dagster's SQLite storages store it event by event: per
partition a connection to the event table, another to the index, a reflection of the asset table's
columns, the asset's row written again (the event serialized a second time). This writes such a
batch of an ephemeral instance's in-memory storage as dagster-postgres does: the same event and tag
rows, the asset's row as the last event leaves it, the watchers told of each event. Anything else
goes to Dagster's own ``store_event_batch``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster._core.events import DagsterEventType

if TYPE_CHECKING:  # Dagster's event storage imports alembic (0.2-0.3 s): imported where used, by then
    # the instance has imported it
    from dagster._core.events.log import EventLogEntry
    from dagster._core.storage.event_log.in_memory import InMemoryEventLogStorage

BATCHED_TYPES = frozenset({DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_OBSERVATION})


def _one_asset_and_run(events: Sequence[EventLogEntry]) -> bool:
    """Whether ``events`` are all materializations, or all observations (what dagster-postgres
    writes as one batch), of one asset by one run."""
    kinds = {(e.dagster_event.event_type, e.dagster_event.asset_key, e.run_id) if e.dagster_event is not None
             else None for e in events}
    return len(kinds) == 1 and None not in kinds and next(iter(kinds))[0] in BATCHED_TYPES


def _insert_returning_ids(conn: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` into the event table on ``conn``; their ids, in the rows' order."""
    from dagster._core.storage.event_log.schema import SqlEventLogStorageTable

    statement = SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id,
                                                           sort_by_parameter_order=True)
    return [int(row[0]) for row in conn.execute(statement, rows)]


def _store_in_memory(storage: InMemoryEventLogStorage, events: Sequence[EventLogEntry]) -> None:
    from dagster._core.storage.event_log.base import EventLogCursor

    rows = [storage._event_to_row(event) for event in events]
    with storage.run_connection(events[0].run_id) as conn:
        ids = _insert_returning_ids(conn, rows)
    with storage.index_transaction() as conn:
        storage._store_asset_event_tags(conn, events, ids)
        storage._store_asset_event(conn, events[-1], ids[-1])
    for event in events:  # as its store_event does after each write: the watchers' cursors
        storage._storage_id += 1
        for handler in list(storage._handlers[event.run_id]):
            try:
                handler(event, str(EventLogCursor.from_storage_id(storage._storage_id)))
            except Exception:  # as Dagster's: a watcher's error does not fail the write
                logging.exception("Exception in callback for event watch on run %s.", event.run_id)


@contextmanager
def batched_event_writes(instance: dg.DagsterInstance) -> Iterator[None]:
    """While this lasts, a batch of one run's materializations (or observations) handed to
    ``instance``'s in-memory event storage (an ephemeral instance: ``bronze demo`` without
    ``$DAGSTER_HOME``) is written at once; other storages and batches as Dagster writes them."""
    from dagster._core.storage.event_log.in_memory import InMemoryEventLogStorage

    storage = instance.event_log_storage
    if type(storage) is not InMemoryEventLogStorage or "store_event_batch" in vars(storage):
        yield
        return
    stock = storage.store_event_batch

    def store_event_batch(events: Sequence[EventLogEntry]) -> None:
        if len(events) > 1 and _one_asset_and_run(events):
            _store_in_memory(storage, events)
        else:
            stock(events)

    storage.store_event_batch = store_event_batch  # type: ignore[method-assign]
    try:
        yield
    finally:
        del storage.store_event_batch
