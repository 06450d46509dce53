"""Dagster entry point: loads every definition under ``bronze_assets/defs`` and applies the
cadence-derived freshness policies once, here."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from bronze_assets.defs.freshness import with_freshness


@dg.definitions
def defs() -> dg.Definitions:
    loaded = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return loaded.map_asset_specs(func=with_freshness)
