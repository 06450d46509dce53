"""A cooperative stop for loads running on threads other than the main one.

A Ctrl-C reaches only the main thread. A run whose steps run on other threads (the demo's
threaded executor) asks them to stop with :func:`request_stop`; a load then raises
:class:`KeyboardInterrupt` at its next :func:`stop_point` — between source batches and between
commits, where it holds no lock and has nothing half written — and fails as interrupted, as it
does in the main thread. (Raising an exception inside another thread at an arbitrary instruction
can leave a lock it was taking held for ever.)
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any

_requested = threading.Event()
_cancellable: weakref.WeakSet[Any] = weakref.WeakSet()  # source connections open in this process


def request_stop() -> None:
    """Ask every load running in this process to stop at its next stop point, and cancel the
    statements of the source connections open (:func:`cancel_on_stop`)."""
    _requested.set()
    for conn in list(_cancellable):
        with contextlib.suppress(Exception):  # closed meanwhile
            conn.adbc_cancel()


def cancel_on_stop(conn: Any) -> None:
    """Have a stop request cancel the running statement of ``conn`` (an ADBC connection): a
    statement the server blocks (on a lock) reaches no stop point, and a load on a thread never
    gets the Ctrl-C with which ADBC cancels it in the main thread. It fails as interrupted
    (SQLSTATE 57014, "canceling statement due to user request")."""
    _cancellable.add(conn)


def clear_stop() -> None:
    """Let loads run again (the interrupted run has ended)."""
    _requested.clear()


def stop_requested() -> bool:
    """Whether a stop was requested (for a wait that is no stop point, e.g. on a subprocess)."""
    return _requested.is_set()


def stop_point() -> None:
    """Raise :class:`KeyboardInterrupt` if a stop was requested."""
    if _requested.is_set():
        raise KeyboardInterrupt
