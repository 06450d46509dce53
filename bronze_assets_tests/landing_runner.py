"""A landing run in a process of its own, for the fault tests of ``test_landing_faults.py``: it
lands ``shipment_events`` from ``<data>/landing`` into ``<data>/bronze`` and can stop at a point
(writing ``<marker>`` when it gets there, then waiting to be killed) or wait at the commit for a
second run (``barrier``: both runs staged, then both commit at once).

``python -m bronze_assets_tests.landing_runner <data> <keyed|keyless> <mode> <marker> [<other marker>]``,
mode one of ``none``, ``before_commit``, ``after_commit``, ``barrier``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from bronze_assets.contracts.tables import LANDING
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load import landing_source
from bronze_assets.lib.load.engine import LocalEngine
from bronze_assets.lib.load.lifecycle import Lifecycle, LoadRequest
from bronze_assets.settings import Settings

EVENTS = next(c for c in LANDING if c.name == "shipment_events")


def storage_at(data: Path) -> Storage:
    """The storage the fault tests land into (the same layout as ``test_landing``'s fixture)."""
    settings = Settings(data_dir=data, bronze_root=str(data / "bronze"), landing_root=str(data / "landing"),
                        stage_dir=data / "stage")
    return Storage(settings.bronze_root, settings=settings)


def contract(kind: str):
    return EVENTS if kind == "keyed" else replace(EVENTS, primary_key=())


def _stop_here(marker: Path) -> None:
    marker.write_text("here")
    while True:  # until SIGKILL
        time.sleep(1)


def main(argv: list[str]) -> None:
    data, kind, mode, marker = Path(argv[0]), argv[1], argv[2], Path(argv[3])
    merge = BronzeMerger.merge
    if mode == "before_commit":  # staged and quarantined, nothing committed
        BronzeMerger.merge = lambda self, staged, on_commit=None: _stop_here(marker)  # type: ignore[method-assign]
    elif mode == "after_commit":  # the data and its ledger rows committed, not copied to bz_landing_files
        landing_source.LandingRead.acknowledge = lambda self: _stop_here(marker)  # type: ignore[method-assign]
    elif mode == "barrier":
        other = Path(argv[4])

        def together(self, staged, on_commit=None):  # type: ignore[no-untyped-def]
            marker.write_text("staged")
            deadline = time.monotonic() + 120
            while not other.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return merge(self, staged, on_commit)

        BronzeMerger.merge = together  # type: ignore[method-assign]
    storage = storage_at(data)
    Lifecycle(LoadRequest(contract(kind), None), LocalEngine(storage), "", storage).run()


if __name__ == "__main__":
    main(sys.argv[1:])
