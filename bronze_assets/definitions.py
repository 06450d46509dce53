"""Dagster entry point: loads every definition under ``bronze_assets/defs`` (the bronze assets carry
their cadence's freshness policy from the asset factory, so nothing is re-mapped here)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
