"""The overlap helpers the landing stage runs on: order kept, errors raised in place, an early stop
stops the producer."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

from bronze_assets.lib.overlap import beside, ordered_map, read_ahead


def test_read_ahead_keeps_the_order_and_runs_on_another_thread() -> None:
    threads: set[str] = set()

    def produce() -> Iterator[int]:
        for i in range(50):
            threads.add(threading.current_thread().name)
            yield i

    assert list(read_ahead(produce, depth=2, name="t-read")) == list(range(50))
    assert threads == {"t-read"}


def test_read_ahead_raises_the_producers_error_after_its_items() -> None:
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("broken file")

    got = []
    with pytest.raises(ValueError, match="broken file"):
        for item in read_ahead(produce):
            got.append(item)
    assert got == [1, 2]


def test_closing_read_ahead_early_stops_the_producer() -> None:
    closed = threading.Event()
    produced = []

    def produce() -> Iterator[int]:
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    items = read_ahead(produce, depth=1)
    assert next(items) == 0
    items.close()
    assert closed.wait(5)
    assert len(produced) <= 4  # bounded: never ran far ahead


def test_ordered_map_keeps_the_order_with_uneven_work_and_bounds_what_is_in_flight() -> None:
    taken: list[int] = []
    yielded: list[int] = []

    def items() -> Iterator[int]:
        for i in range(40):
            taken.append(i)
            yield i

    def work(i: int) -> int:
        time.sleep(random.random() / 200)
        return i * i

    for out in ordered_map(work, items(), workers=2):
        yielded.append(out)
        assert len(taken) - len(yielded) <= 3
    assert yielded == [i * i for i in range(40)]


def test_ordered_map_raises_the_error_of_an_item_in_its_place() -> None:
    def work(i: int) -> int:
        if i == 3:
            raise RuntimeError("item 3")
        return i

    got = []
    with pytest.raises(RuntimeError, match="item 3"):
        for out in ordered_map(work, iter(range(10))):
            got.append(out)
    assert got == [0, 1, 2]


def test_beside_runs_beside_the_body_and_is_done_when_it_ends() -> None:
    started, done = threading.Event(), []

    def call() -> None:
        assert started.wait(5), "the body runs while the call waits"
        time.sleep(0.05)
        done.append(threading.current_thread().name)

    with beside(call, name="ack"):
        started.set()  # a call on the body's own thread would wait here forever (5 s, then fail)
    assert done == ["ack"]


def test_beside_raises_the_calls_error_after_the_body_and_the_bodys_own_first() -> None:
    def fail() -> None:
        raise ValueError("the call")

    ran = []
    with pytest.raises(ValueError, match="the call"), beside(fail):
        ran.append(True)
    assert ran == [True], "the body ran to its end"
    with pytest.raises(KeyError, match="the body"), beside(fail):
        raise KeyError("the body")


def test_beside_logs_the_calls_error_when_the_body_raised_its_own(caplog: pytest.LogCaptureFixture) -> None:
    """The body's error is raised; the call's (e.g. a CDC slot's acknowledgement that failed
    beside checks that failed) is not lost without a word: it is logged."""
    def fail() -> None:
        raise ValueError("the slot refused")

    with caplog.at_level("WARNING"), pytest.raises(KeyError, match="the body"), beside(fail, name="ack t"):
        raise KeyError("the body")
    assert any("ack t" in r.getMessage() and "the slot refused" in r.getMessage() for r in caplog.records)
