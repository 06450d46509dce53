"""Overlapping the stages of a load on the machine's cores, results kept in order: an iterator
produced on a thread of its own (:func:`read_ahead`), a function mapped over an iterator on a few
threads (:func:`ordered_map`) and a call beside a block of work (:func:`beside`). The first two bound
what is in flight, so memory stays bounded by a few items; the work they overlap (DuckDB, Arrow,
file reads, ``hashlib``, a server's work) releases the GIL."""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def read_ahead(produce: Callable[[], Iterator[T]], depth: int = 2, name: str = "read-ahead"
               ) -> Generator[T, None, None]:
    """The items of ``produce()``, in order, produced on a thread of its own at most ``depth`` items
    ahead of the consumer. An exception of the producer is raised here, at its place in the order;
    closing this iterator early stops the producer (at its next item)."""
    items: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            source = produce()
            try:
                for item in source:
                    if not put(item):
                        return
            finally:
                close = getattr(source, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # handed to the consumer, raised there
            failure.append(exc)
        put(_DONE)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not _DONE:
            yield item  # type: ignore[misc]
        if failure:
            raise failure[0]
    finally:
        stop.set()
        thread.join()


def ordered_map(fn: Callable[[T], R], items: Iterator[T], workers: int = 2, name: str = "ordered-map"
                ) -> Iterator[R]:
    """``fn`` of each of ``items`` on ``workers`` threads, yielded in the items' order, at most
    ``workers + 1`` items in flight (taken from ``items`` on the caller's thread; ``items`` is
    closed when this iterator is)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            close = getattr(items, "close", None)
            if close is not None:
                close()


@contextmanager
def beside(fn: Callable[[], object], name: str = "beside") -> Iterator[None]:
    """``fn()`` on a thread of its own while the body runs; the body's end waits for it, then
    raises its exception (the body's own, if it raised, goes first: the call's is then logged)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # raised on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        thread.join()
        if failure:  # the body's error goes on; the call's is not lost without a word
            error = failure[0]
            log.warning("%s failed too: %s: %s", name, type(error).__name__, " ".join(str(error).split()))
        raise
    thread.join()
    if failure:
        raise failure[0]

