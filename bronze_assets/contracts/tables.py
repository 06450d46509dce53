"""The table contracts the product loads: every ``BronzeTables`` component under
``bronze_assets/defs`` (ARCHITECTURE §2.10), read once at import.

The ten tables of the inventory database (§2.1–§3) are the shipped example of that file,
``bronze_assets/defs/inventory/defs.yaml``; a table declared there (or in any other tables file of
the project, e.g. one written by ``bronze init``) is a contract here. Only the files are read (no
database): the columns are recorded in them.
"""

from __future__ import annotations

from pathlib import Path

from bronze_assets.contracts.model import Contract, RegexRule, ValueSetRule
from bronze_assets.contracts.tablefile import LANDING_COMPONENT_TYPE, load_contracts, read_file, table_files

DEFS_DIR = Path(__file__).resolve().parents[1] / "defs"
EXAMPLE_FILE = DEFS_DIR / "inventory" / "defs.yaml"


def _example_first(paths: list[Path], example_file: Path = EXAMPLE_FILE) -> list[Path]:
    return sorted(paths, key=lambda p: (p != example_file, str(p)))


def registry(defs_dir: Path, example_file: Path) -> tuple[tuple[Contract, ...], tuple[Contract, ...]]:
    """Every table the files under ``defs_dir`` load, and those of ``example_file`` among them (a
    table listed with ``skip`` loads nothing, so it is in neither)."""
    everything = load_contracts(_example_first(table_files(defs_dir), example_file))
    by_name = {c.name: c for c in everything}
    return everything, tuple(by_name[name] for name, spec in read_file(example_file).tables.items()
                             if spec.skip is None)


# EXAMPLE: the shipped example's tables: what `bronze seed` and `bronze ddl` create, `bronze demo` seeds
ALL, EXAMPLE = registry(DEFS_DIR, EXAMPLE_FILE)
_BY_NAME = {c.name: c for c in ALL}
# LANDING: the landing-zone tables (ARCHITECTURE §2.6) of every ``LandingFiles`` component, e.g. the
# shipped ``bronze_assets/defs/landing/defs.yaml`` (shipment_events); their foreign keys may name ALL
LANDING = load_contracts(table_files(DEFS_DIR, LANDING_COMPONENT_TYPE), LANDING_COMPONENT_TYPE, _BY_NAME)


def _regex(table: str, column: str) -> str:
    return next(r.pattern for r in _BY_NAME[table].quality.formats
                if isinstance(r, RegexRule) and r.column == column)


def _values(table: str, column: str) -> tuple[str, ...]:
    return next(r.values for r in _BY_NAME[table].quality.formats
                if isinstance(r, ValueSetRule) and r.column == column)


# the example's rules the demo data generator draws valid (and, by the defect rate, invalid) values for
EMAIL_PATTERN = _regex("customers", "email")
PHONE_PATTERN = _regex("suppliers", "contact_number")
SKU_PATTERN = _regex("products", "sku")
ORDER_STATUSES = _values("orders", "status")
SHIPMENT_STATUSES = _values("shipments", "status")
