"""The bronze load, written once for every engine and source: the window plan and watermark
(:mod:`.plan`), the local engine's staging (:mod:`.stage`), the engine protocol (:mod:`.engine`),
the source protocol and the choice of a load's source (:mod:`.source`; a PostgreSQL table's two
sources in :mod:`.postgres_source`), and the lifecycle that runs a load on any engine from any
source (:mod:`.lifecycle`)."""

from bronze_assets.lib.load.errors import SchemaMismatchError, SourceTableMissingError
from bronze_assets.lib.load.plan import (
    DEFAULT_OVERLAP,
    describe_window,
    month_start,
    next_month,
    next_watermark,
    plan_from_log,
    plan_window,
)
from bronze_assets.lib.load.stage import (
    extract_and_stage,
    inspect_source,
    quarantine_unstorable,
    unreadable_records,
)

__all__ = [
    "DEFAULT_OVERLAP",
    "SchemaMismatchError",
    "SourceTableMissingError",
    "describe_window",
    "extract_and_stage",
    "inspect_source",
    "month_start",
    "next_month",
    "next_watermark",
    "plan_from_log",
    "plan_window",
    "quarantine_unstorable",
    "unreadable_records",
]
