"""The native allocators of a process that loads or validates tables: freed memory handed back.

A load's memory is mostly outside Python's allocator: glibc's heap (one arena per thread by
default, each keeping what its thread freed), Arrow's mimalloc pool (which keeps freed segments
for reuse) and Polars' jemalloc (which, as Polars configures it, returns freed pages only while it
is being called, and keeps them counted in the process's RSS a second longer). Without these
settings a run's RSS only grows from step to step, by what the largest step freed; with them it
falls back between steps (README "Performance").
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Set

# variables read when their library is first imported: (that module, value), applied by
# ``settings.set_allocator_defaults`` where the user set none. Polars appends its jemalloc's to its
# own defaults: a background thread returns freed pages 0.1 s after they are freed, at once to
# the system. Arrow: the system allocator (glibc, bounded below) instead of its mimalloc pool.
DEFAULTS = {
    "_RJEM_MALLOC_CONF": ("polars", "background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0"),
    "ARROW_DEFAULT_MEMORY_POOL": ("pyarrow", "system"),
}
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt parameters
MMAP_THRESHOLD_BYTES = 128 * 1024
LOAD_ARENAS = 2


def bound_glibc_heap(arenas: int = LOAD_ARENAS, keep: Set[str] = frozenset()) -> None:
    """At most ``arenas`` glibc arenas for the threads started from now on (each arena keeps
    memory its threads freed), and allocations from 128 KiB up always mapped on their own
    (glibc otherwise raises that threshold as large blocks are freed, and later large arrays
    then stay in the heap after they are freed). The parameters in ``keep`` (``arena_max``,
    ``mmap_threshold``: those the user set, ``settings.glibc_malloc_set_by_user``) are left as
    they are. No effect where libc is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        if "arena_max" not in keep:
            libc.mallopt(M_ARENA_MAX, arenas)
        if "mmap_threshold" not in keep:
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def trim_glibc_heap() -> None:
    """Hand glibc's freed memory back to the system now."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
