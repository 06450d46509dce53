"""Today's ten source-table contracts as Python (ARCHITECTURE §2.1–§3), frozen as they were written
before the tables moved to ``bronze_assets/defs/inventory/defs.yaml``: the reference the shipped
example must reproduce field by field (test_tables_file.py)."""

from __future__ import annotations

from bronze_assets.contracts.model import (
    Cadence,
    Column,
    Comparison,
    Contract,
    ForeignKey,
    LoadPattern,
    NotAfterLoadDateRule,
    Partitioning,
    PgType,
    QualityRules,
    RangeRule,
    RegexRule,
    ValueSetRule,
)

INT, BIGINT, TEXT, DATE = PgType.INTEGER, PgType.BIGINT, PgType.TEXT, PgType.DATE
TSTZ, MONEY, AMOUNT = PgType.TIMESTAMPTZ, PgType.NUMERIC_10_2, PgType.NUMERIC_12_2
GE, GT = Comparison.GE, Comparison.GT

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"
PHONE_PATTERN = r"^\+?[0-9][0-9 ()-]{6,19}$"
SKU_PATTERN = r"^[A-Z0-9]{3,}-[0-9]{3,}$"
ORDER_STATUSES = ("PENDING", "PROCESSING", "SHIPPED", "DELIVERED", "CANCELLED")
SHIPMENT_STATUSES = ("PENDING", "IN_TRANSIT", "DELIVERED", "RETURNED")


def _cols(*pairs: tuple[str, PgType]) -> tuple[Column, ...]:
    return tuple(Column(name, type_) for name, type_ in pairs)


PRODUCTS = Contract(
    name="products",
    description="Product catalogue: names, categories, list prices and SKUs.",
    columns=_cols(
        ("product_id", INT), ("product_name", TEXT), ("category", TEXT),
        ("unit_price", MONEY), ("sku", TEXT), ("updated_at", TSTZ),
    ),
    primary_key=("product_id",),
    load_pattern=LoadPattern.FULL,
    cadence=Cadence.DAILY,
    partitioning=Partitioning.none(),
    zorder_columns=("product_id",),
    quality=QualityRules(
        required=("product_name", "category", "unit_price"),
        formats=(RegexRule("sku", SKU_PATTERN),),
        ranges=(RangeRule("unit_price", GE, 0),),
    ),
    history=True,
    seed_rows=10_000,
)

SUPPLIERS = Contract(
    name="suppliers",
    description="Suppliers with contact details and the product they supply.",
    columns=_cols(
        ("supplier_id", INT), ("supplier_name", TEXT), ("contact_number", TEXT),
        ("email", TEXT), ("product_id", INT), ("updated_at", TSTZ),
    ),
    primary_key=("supplier_id",),
    load_pattern=LoadPattern.FULL,
    cadence=Cadence.WEEKLY,
    partitioning=Partitioning.none(),
    zorder_columns=("supplier_id",),
    quality=QualityRules(
        required=("supplier_name", "contact_number", "product_id"),
        formats=(RegexRule("contact_number", PHONE_PATTERN), RegexRule("email", EMAIL_PATTERN)),
    ),
    foreign_keys=(ForeignKey("product_id", "products", "product_id"),),
    pii_columns=("contact_number",),
    history=True,
    seed_rows=1_000,
)

WAREHOUSES = Contract(
    name="warehouses",
    description="Warehouses with their location and storage capacity.",
    columns=_cols(("warehouse_id", INT), ("location", TEXT), ("capacity", INT), ("updated_at", TSTZ)),
    primary_key=("warehouse_id",),
    load_pattern=LoadPattern.FULL,
    cadence=Cadence.MONTHLY,
    partitioning=Partitioning.none(),
    zorder_columns=("warehouse_id",),
    quality=QualityRules(
        required=("location", "capacity"),
        ranges=(RangeRule("capacity", GT, 0),),
    ),
    history=True,
    seed_rows=50,
)

INVENTORY = Contract(
    name="inventory",
    description="Quantity of each product available in each warehouse.",
    columns=_cols(
        ("inventory_id", BIGINT), ("product_id", INT), ("warehouse_id", INT),
        ("quantity_available", INT), ("updated_at", TSTZ),
    ),
    primary_key=("inventory_id",),
    load_pattern=LoadPattern.INCREMENTAL,
    cdc=True,
    cadence=Cadence.HOURLY,
    partitioning=Partitioning.daily_load_date(),
    zorder_columns=("product_id", "warehouse_id"),
    quality=QualityRules(
        required=("product_id", "warehouse_id", "quantity_available"),
        ranges=(RangeRule("quantity_available", GE, 0),),
    ),
    foreign_keys=(
        ForeignKey("product_id", "products", "product_id"),
        ForeignKey("warehouse_id", "warehouses", "warehouse_id"),
    ),
    seed_rows=100_000,
)

ORDERS = Contract(
    name="orders",
    description="Customer orders with status and total amount.",
    columns=_cols(
        ("order_id", BIGINT), ("customer_id", INT), ("order_date", DATE),
        ("status", TEXT), ("total_amount", AMOUNT), ("updated_at", TSTZ),
    ),
    primary_key=("order_id",),
    load_pattern=LoadPattern.INCREMENTAL,
    cdc=True,
    cadence=Cadence.HOURLY,
    partitioning=Partitioning.monthly_on("order_date", "order_month"),
    zorder_columns=("customer_id", "order_date"),
    quality=QualityRules(
        required=("customer_id", "order_date"),
        formats=(ValueSetRule("status", ORDER_STATUSES),),
        ranges=(RangeRule("total_amount", GE, 0), NotAfterLoadDateRule("order_date")),
    ),
    foreign_keys=(ForeignKey("customer_id", "customers", "customer_id"),),
    seed_rows=50_000,
)

ORDER_DETAILS = Contract(
    name="order_details",
    description="Order lines: product, quantity and unit price per order.",
    columns=_cols(
        ("order_detail_id", BIGINT), ("order_id", BIGINT), ("product_id", INT),
        ("quantity_ordered", INT), ("unit_price", MONEY), ("updated_at", TSTZ),
    ),
    primary_key=("order_detail_id",),
    load_pattern=LoadPattern.INCREMENTAL,
    cdc=True,
    cadence=Cadence.HOURLY,
    partitioning=Partitioning.daily_load_date(),
    zorder_columns=("order_id", "product_id"),
    quality=QualityRules(
        required=("order_id", "product_id", "quantity_ordered"),
        ranges=(RangeRule("quantity_ordered", GT, 0), RangeRule("unit_price", GE, 0)),
    ),
    foreign_keys=(
        ForeignKey("order_id", "orders", "order_id"),
        ForeignKey("product_id", "products", "product_id"),
    ),
    seed_rows=200_000,
)

SHIPMENTS = Contract(
    name="shipments",
    description="Shipments of orders with carrier and delivery status.",
    columns=_cols(
        ("shipment_id", BIGINT), ("order_id", BIGINT), ("shipment_date", DATE),
        ("carrier", TEXT), ("status", TEXT), ("updated_at", TSTZ),
    ),
    primary_key=("shipment_id",),
    load_pattern=LoadPattern.BATCH,
    cadence=Cadence.DAILY,
    partitioning=Partitioning.monthly_on("shipment_date", "shipment_month"),
    zorder_columns=("order_id",),
    quality=QualityRules(
        required=("order_id", "shipment_date"),
        formats=(ValueSetRule("status", SHIPMENT_STATUSES),),
        ranges=(NotAfterLoadDateRule("shipment_date"),),
    ),
    foreign_keys=(ForeignKey("order_id", "orders", "order_id"),),
    seed_rows=45_000,
)

RETURNS = Contract(
    name="returns",
    description="Returned orders with the customer's reason.",
    columns=_cols(
        ("return_id", BIGINT), ("order_id", BIGINT), ("return_reason", TEXT),
        ("return_date", DATE), ("updated_at", TSTZ),
    ),
    primary_key=("return_id",),
    load_pattern=LoadPattern.BATCH,
    cadence=Cadence.DAILY,
    partitioning=Partitioning.daily_load_date(),
    zorder_columns=("order_id",),
    quality=QualityRules(
        required=("order_id", "return_reason"),
        ranges=(NotAfterLoadDateRule("return_date"),),
    ),
    foreign_keys=(ForeignKey("order_id", "orders", "order_id"),),
    seed_rows=5_000,
)

STOCK_LEVELS = Contract(
    name="stock_levels",
    description="Reorder thresholds per product and warehouse.",
    columns=_cols(
        ("stock_level_id", BIGINT), ("warehouse_id", INT), ("product_id", INT),
        ("reorder_threshold", INT), ("updated_at", TSTZ),
    ),
    primary_key=("stock_level_id",),
    load_pattern=LoadPattern.BATCH,
    cadence=Cadence.HOURLY,
    partitioning=Partitioning.daily_load_date(),
    zorder_columns=("warehouse_id", "product_id"),
    quality=QualityRules(
        required=("warehouse_id", "product_id", "reorder_threshold"),
        ranges=(RangeRule("reorder_threshold", GE, 0),),
    ),
    foreign_keys=(
        ForeignKey("warehouse_id", "warehouses", "warehouse_id"),
        ForeignKey("product_id", "products", "product_id"),
    ),
    seed_rows=50_000,
)

CUSTOMERS = Contract(
    name="customers",
    description="Customers with their name and email address (personal data).",
    columns=_cols(("customer_id", INT), ("customer_name", TEXT), ("email", TEXT), ("updated_at", TSTZ)),
    primary_key=("customer_id",),
    load_pattern=LoadPattern.FULL,
    cadence=Cadence.DAILY,
    partitioning=Partitioning.none(),
    zorder_columns=("customer_id",),
    quality=QualityRules(
        required=("customer_name", "email"),
        formats=(RegexRule("email", EMAIL_PATTERN),),
    ),
    pii_columns=("customer_name", "email"),
    encrypted_columns=("customer_name", "email"),
    data_subject="customer_id",
    history=True,
    seed_rows=25_000,
)

ALL: tuple[Contract, ...] = (
    PRODUCTS, SUPPLIERS, WAREHOUSES, INVENTORY, ORDERS,
    ORDER_DETAILS, SHIPMENTS, RETURNS, STOCK_LEVELS, CUSTOMERS,
)
