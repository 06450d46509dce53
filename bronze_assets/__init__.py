"""bronze_assets: bronze-layer ingestion of PostgreSQL into Delta Lake, run by Dagster.

``bronze_assets.BronzeTables`` is the project's Dagster component (a tables file, ``defs.yaml``),
``bronze_assets.LandingFiles`` that of the landing-zone tables; they are imported on first use,
so ``import bronze_assets`` stays light for the ``bronze`` CLI.
"""

from __future__ import annotations

from typing import Any

from bronze_assets import settings as _settings
from bronze_assets.lib import allocators as _allocators

# before Polars is imported and before any thread starts (README "Performance": memory)
_settings.set_allocator_defaults(_allocators.DEFAULTS)
_allocators.bound_glibc_heap(keep=_settings.glibc_malloc_set_by_user())  # a user's setting stands

__all__ = ["BronzeTables", "LandingFiles"]


def __getattr__(name: str) -> Any:
    if name == "BronzeTables":
        from bronze_assets.defs.bronze_tables import BronzeTables

        return BronzeTables
    if name == "LandingFiles":
        from bronze_assets.defs.landing_files import LandingFiles

        return LandingFiles
    raise AttributeError(f"module 'bronze_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
