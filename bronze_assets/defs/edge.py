"""The one place ``defs/`` reads the environment: the :class:`Settings` of this process.

Resources (the source, the bronze root, the engine) take them when they are set up or first asked,
and the definition builders (``@dg.definitions`` functions, the components' ``build_defs``) when
they build assets, schedules and sensors, which receive them as a value; nothing else in
``defs/`` calls ``Settings.from_env`` or reads a variable (test_settings checks it).
"""

from __future__ import annotations

from bronze_assets.settings import Settings


def edge_settings() -> Settings:
    """This process's settings, read from its environment now (``dagster dev``, ``dagster asset
    materialize``, ``bronze`` and the tests each read theirs when they build or run definitions)."""
    return Settings.from_env()
