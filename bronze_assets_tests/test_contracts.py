"""The contracts equal ARCHITECTURE §2.1, §2.4, §2.5 and §3 (a literal copy of the spec)."""

from __future__ import annotations

import re

import pytest

from bronze_assets.contracts import (
    CONTRACTS,
    Cadence,
    Comparison,
    LoadPattern,
    NotAfterLoadDateRule,
    PartitionKind,
    RangeRule,
    RegexRule,
    ValueSetRule,
    get_contract,
    in_dependency_order,
)

SPEC_COLUMNS = {
    "products": "product_id int PK, product_name text, category text, unit_price numeric(10,2), sku text, updated_at timestamptz",
    "suppliers": "supplier_id int PK, supplier_name text, contact_number text, email text, product_id int, updated_at timestamptz",
    "warehouses": "warehouse_id int PK, location text, capacity int, updated_at timestamptz",
    "inventory": "inventory_id bigint PK, product_id int, warehouse_id int, quantity_available int, updated_at timestamptz",
    "orders": "order_id bigint PK, customer_id int, order_date date, status text, total_amount numeric(12,2), updated_at timestamptz",
    "order_details": "order_detail_id bigint PK, order_id bigint, product_id int, quantity_ordered int, unit_price numeric(10,2), updated_at timestamptz",
    "shipments": "shipment_id bigint PK, order_id bigint, shipment_date date, carrier text, status text, updated_at timestamptz",
    "returns": "return_id bigint PK, order_id bigint, return_reason text, return_date date, updated_at timestamptz",
    "stock_levels": "stock_level_id bigint PK, warehouse_id int, product_id int, reorder_threshold int, updated_at timestamptz",
    "customers": "customer_id int PK, customer_name text, email text, updated_at timestamptz",
}  # fmt: skip
PG_NAMES = {
    "int": "integer", "bigint": "bigint", "text": "text", "date": "date",
    "timestamptz": "timestamp with time zone", "numeric(10,2)": "numeric(10,2)",
    "numeric(12,2)": "numeric(12,2)",
}  # fmt: skip
SEED_ROWS = {
    "products": 10_000, "suppliers": 1_000, "warehouses": 50, "inventory": 100_000, "orders": 50_000,
    "order_details": 200_000, "shipments": 45_000, "returns": 5_000, "stock_levels": 50_000,
    "customers": 25_000,
}  # fmt: skip
PARTITIONS = {
    "inventory": ("daily", "load_date", None), "order_details": ("daily", "load_date", None),
    "returns": ("daily", "load_date", None), "stock_levels": ("daily", "load_date", None),
    "orders": ("monthly", "order_month", "order_date"),
    "shipments": ("monthly", "shipment_month", "shipment_date"),
}  # fmt: skip
ZORDER = {
    "products": ("product_id",), "suppliers": ("supplier_id",), "warehouses": ("warehouse_id",),
    "inventory": ("product_id", "warehouse_id"), "orders": ("customer_id", "order_date"),
    "order_details": ("order_id", "product_id"), "shipments": ("order_id",), "returns": ("order_id",),
    "stock_levels": ("warehouse_id", "product_id"), "customers": ("customer_id",),
}  # fmt: skip
PATTERNS = {
    "full": {"products": "daily", "customers": "daily", "suppliers": "weekly", "warehouses": "monthly"},
    "incremental": {"inventory": "hourly", "orders": "hourly", "order_details": "hourly"},
    "batch": {"shipments": "daily", "returns": "daily", "stock_levels": "hourly"},
}  # fmt: skip
EMAIL = r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"
RULES = {  # required, formats, ranges  (ARCHITECTURE §3)
    "products": ({"product_name", "category", "unit_price"}, {"sku": r"^[A-Z0-9]{3,}-[0-9]{3,}$"}, {"unit_price >= 0"}),
    "suppliers": ({"supplier_name", "contact_number", "product_id"},
                  {"contact_number": r"^\+?[0-9][0-9 ()-]{6,19}$", "email": EMAIL}, set()),
    "warehouses": ({"location", "capacity"}, {}, {"capacity > 0"}),
    "inventory": ({"product_id", "warehouse_id", "quantity_available"}, {}, {"quantity_available >= 0"}),
    "orders": ({"customer_id", "order_date"},
               {"status": {"PENDING", "PROCESSING", "SHIPPED", "DELIVERED", "CANCELLED"}},
               {"total_amount >= 0", "order_date <= load_date"}),
    "order_details": ({"order_id", "product_id", "quantity_ordered"}, {}, {"quantity_ordered > 0", "unit_price >= 0"}),
    "shipments": ({"order_id", "shipment_date"}, {"status": {"PENDING", "IN_TRANSIT", "DELIVERED", "RETURNED"}},
                  {"shipment_date <= load_date"}),
    "returns": ({"order_id", "return_reason"}, {}, {"return_date <= load_date"}),
    "stock_levels": ({"warehouse_id", "product_id", "reorder_threshold"}, {}, {"reorder_threshold >= 0"}),
    "customers": ({"customer_name", "email"}, {"email": EMAIL}, set()),
}  # fmt: skip
FOREIGN_KEYS = {
    ("suppliers", "product_id", "products"), ("inventory", "product_id", "products"),
    ("inventory", "warehouse_id", "warehouses"), ("orders", "customer_id", "customers"),
    ("order_details", "order_id", "orders"), ("order_details", "product_id", "products"),
    ("shipments", "order_id", "orders"), ("returns", "order_id", "orders"),
    ("stock_levels", "warehouse_id", "warehouses"), ("stock_levels", "product_id", "products"),
}  # fmt: skip


def test_ten_tables() -> None:
    assert set(CONTRACTS) == set(SPEC_COLUMNS)


@pytest.mark.parametrize("name", sorted(SPEC_COLUMNS))
def test_columns_types_and_primary_key(name: str) -> None:
    contract = CONTRACTS[name]
    spec = [part.split() for part in SPEC_COLUMNS[name].split(", ")]
    assert contract.column_names == [p[0] for p in spec]
    assert [c.type.value for c in contract.columns] == [PG_NAMES[p[1]] for p in spec]
    assert contract.primary_key == tuple(p[0] for p in spec if p[-1] == "PK")
    assert contract.seed_rows == SEED_ROWS[name]
    assert contract.bronze_table == f"bz_{name}"


@pytest.mark.parametrize("name", sorted(SPEC_COLUMNS))
def test_partitioning_zorder_and_cadence(name: str) -> None:
    contract = CONTRACTS[name]
    kind, delta_col, business = PARTITIONS.get(name, ("none", None, None))
    assert contract.partitioning.kind is PartitionKind(kind)
    assert contract.partitioning.delta_column == delta_col
    assert contract.partitioning.business_date_column == business
    assert contract.zorder_columns == ZORDER[name]
    pattern = next(p for p, tables in PATTERNS.items() if name in tables)
    assert contract.load_pattern is LoadPattern(pattern)
    assert contract.cadence is Cadence(PATTERNS[pattern][name])


def _rule_text(rule: RangeRule | NotAfterLoadDateRule) -> str:
    if isinstance(rule, NotAfterLoadDateRule):
        return f"{rule.column} <= load_date"
    op = {Comparison.GE: ">=", Comparison.GT: ">"}[rule.op]
    return f"{rule.column} {op} {rule.bound:g}"


@pytest.mark.parametrize("name", sorted(SPEC_COLUMNS))
def test_quality_rules(name: str) -> None:
    required, formats, ranges = RULES[name]
    q = CONTRACTS[name].quality
    assert set(q.required) == required
    got_formats = {
        r.column: r.pattern if isinstance(r, RegexRule) else set(r.values)
        for r in q.formats
        if isinstance(r, RegexRule | ValueSetRule)
    }
    assert got_formats == formats
    assert {_rule_text(r) for r in q.ranges} == ranges
    for r in q.formats:
        if isinstance(r, RegexRule):
            re.compile(r.pattern)


def test_foreign_keys_and_dependency_order() -> None:
    got = {(c.name, fk.column, fk.parent_table) for c in CONTRACTS.values() for fk in c.foreign_keys}
    assert got == FOREIGN_KEYS
    order = [c.name for c in in_dependency_order()]
    for child, _, parent in FOREIGN_KEYS:
        assert order.index(parent) < order.index(child)


def test_pii_columns() -> None:
    assert CONTRACTS["customers"].pii_columns == ("customer_name", "email")
    assert CONTRACTS["suppliers"].pii_columns == ("contact_number",)


def test_get_contract_accepts_bronze_name_and_rejects_unknown() -> None:
    assert get_contract("bz_orders") is CONTRACTS["orders"]
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        get_contract("nope")
