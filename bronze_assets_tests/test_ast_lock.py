"""ast.parse re-entered from a finalizer during its own conversion (CPython's shared recursion
counter, python/cpython#106905): with :func:`ast_lock.install` the outer parse succeeds."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import ast, gc, sys
    if sys.argv[1] == "installed":  # "plain" raises SystemError on CPython 3.11.7
        from bronze_assets.lib import ast_lock
        ast_lock.install()

    class Reparse:
        def __init__(self):
            self.me = self  # a cycle: only the cyclic collector frees it, inside the parse below
        def __del__(self):
            ast.parse("x = (1 + 2) * 3")

    source = "\\n".join(f"def f{i}(a, b):\\n    return [a + b * {i} for _ in range(3)]" for i in range(2000))
    gc.set_threshold(50)
    for _ in range(200):
        Reparse()
    assert len(ast.parse(source).body) == 2000
    assert gc.isenabled()
    print("parsed")
""")


def _probe(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)


def test_a_parse_re_entered_by_the_collector_succeeds_once_installed() -> None:
    done = _probe("installed")
    assert done.returncode == 0 and done.stdout.strip() == "parsed", done.stderr

