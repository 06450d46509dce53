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



RACE = textwrap.dedent("""
    import ast, gc, sys, threading, time

    entered, release, seen = threading.Event(), threading.Event(), {}

    def parse(source, *args, **kwargs):  # stands for the C parse: the first call holds on
        if source == "first":
            entered.set()
            release.wait(10)
        else:
            first.join(10)  # the first call has returned: it has done all it does
            seen["collector on"] = gc.isenabled()
        return ast.Module(body=[], type_ignores=[])

    ast.parse = parse
    from bronze_assets.lib import ast_lock
    ast_lock.install()

    first = threading.Thread(target=ast.parse, args=("first",))
    first.start()
    entered.wait(10)
    second = threading.Thread(target=ast.parse, args=("second",))
    second.start()  # waits for the first one's lock
    while sys._current_frames()[second.ident].f_code.co_name != "locked_parse":
        time.sleep(0.001)
    release.set()
    second.join(10)
    assert gc.isenabled()
    print("collector on" if seen["collector on"] else "collector off")
""")


def test_a_parse_waiting_for_another_threads_keeps_the_collector_paused() -> None:
    """Two threads formatting tracebacks at once: the second parse, which waited for the first
    one's lock, still runs with the collector paused after the first one has returned."""
    done = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "collector off"
