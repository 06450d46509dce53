""":func:`ast.parse` safe from its own re-entry.

CPython (3.11 here) keeps the counter guarding the AST constructor's recursion (``ast2obj``) in
the interpreter: a call that starts while another is converting resets it, and the outer call
then raises ``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905).
A garbage collection inside the conversion can run a finalizer that parses again: objects left
by runs on threads (the demo's three runs at once) format a traceback when collected, and CPython
3.11 formats each frame's caret anchors with ``ast.parse``. :func:`install` makes ``ast.parse``
run with the cyclic collector paused and under a process-wide re-entrant lock (threads too
share the counter); bronze installs it where it starts step threads.
"""

from __future__ import annotations

import ast
import functools
import gc
import threading
from typing import Any

_LOCK = threading.RLock()


def install() -> None:
    """Make :func:`ast.parse` pause the collector and hold the lock (once; later calls do nothing)."""
    if getattr(ast.parse, "__bronze_locked__", False):
        return
    parse = ast.parse

    @functools.wraps(parse)
    def locked_parse(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:  # the collector paused and resumed under it: not by one parse while another runs
            enabled = gc.isenabled()
            gc.disable()
            try:
                return parse(*args, **kwargs)
            finally:
                if enabled:
                    gc.enable()

    locked_parse.__bronze_locked__ = True  # type: ignore[attr-defined]
    ast.parse = locked_parse  # type: ignore[assignment]
