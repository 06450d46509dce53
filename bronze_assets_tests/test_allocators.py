"""Importing bronze_assets tunes the process's native allocators (``lib/allocators.py``), but only
where the user did not: a variable or glibc parameter the user set stands (README "Configuration")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bronze_assets.lib.allocators import LOAD_ARENAS

ROOT = Path(__file__).resolve().parents[1]
THREADS = 6
# glibc gives each new thread its own arena while it has fewer than its maximum: count the arenas
# (malloc_info's heaps) while THREADS threads each hold a block
ARENAS = textwrap.dedent(f"""
    import ctypes, re, tempfile, threading
    import bronze_assets
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    held = threading.Barrier({THREADS} + 1)
    def hold():
        block = libc.malloc(1000)
        held.wait(); held.wait()
        libc.free(block)
    threads = [threading.Thread(target=hold) for _ in range({THREADS})]
    for t in threads: t.start()
    held.wait()
    with tempfile.NamedTemporaryFile("r") as out:
        fp = libc.fopen(out.name.encode(), b"w"); libc.malloc_info(0, fp); libc.fclose(fp)
        print(len(re.findall("<heap nr=", out.read())))
    held.wait()
""")
POOL = "import bronze_assets, pyarrow as pa, os; print(pa.default_memory_pool().backend_name)"
USER_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES", "ARROW_DEFAULT_MEMORY_POOL",
                  "_RJEM_MALLOC_CONF")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")


def _run(code: str, **user: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES} | user
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True, timeout=120).stdout.strip()


def test_import_bounds_glibcs_arenas_unless_the_user_set_them() -> None:
    assert int(_run(ARENAS)) <= LOAD_ARENAS
    assert int(_run(ARENAS, MALLOC_ARENA_MAX="8")) > LOAD_ARENAS
    assert int(_run(ARENAS, GLIBC_TUNABLES="glibc.malloc.arena_max=8")) > LOAD_ARENAS


def test_import_sets_arrows_pool_only_where_the_user_chose_none() -> None:
    assert _run(POOL) == "system"
    assert _run(POOL, ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"
