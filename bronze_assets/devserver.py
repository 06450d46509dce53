"""``make ui``: run ``dagster dev`` so that it stops, cleanly, when whoever started it goes away.

``dagster dev`` itself shuts its webserver, daemon and code server down on SIGINT and SIGTERM. But a
SIGTERM sent to ``make ui`` alone (not to its process group) ends make and leaves ``dagster dev``
running. On Linux the parent-death signal (``prctl(PR_SET_PDEATHSIG)``, kept across ``exec``)
hands make's end on to ``dagster dev`` as a SIGTERM.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent went away before the signal was armed
            sys.exit(0)
    dagster = Path(sys.executable).with_name("dagster")
    os.execv(str(dagster), [str(dagster), "dev", *args])


if __name__ == "__main__":
    main()
