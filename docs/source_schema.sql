-- The source schema bronze_assets expects (docs/contract.md §1), generated from the contracts by
-- `bronze ddl` (bronze_assets_tests/test_cli_ddl.py keeps this file equal to it).

CREATE SCHEMA IF NOT EXISTS "tests";

CREATE TABLE IF NOT EXISTS "tests"."products" (
    "product_id" integer,
    "product_name" text,
    "category" text,
    "unit_price" numeric(10,2),
    "sku" text,
    "updated_at" timestamp with time zone,
    PRIMARY KEY ("product_id")
);

CREATE TABLE IF NOT EXISTS "tests"."suppliers" (
    "supplier_id" integer,
    "supplier_name" text,
    "contact_number" text,
    "email" text,
    "product_id" integer,
    "updated_at" timestamp with time zone,
    PRIMARY KEY ("supplier_id")
);

CREATE TABLE IF NOT EXISTS "tests"."warehouses" (
    "warehouse_id" integer,
    "location" text,
    "capacity" integer,
    "updated_at" timestamp with time zone,
    PRIMARY KEY ("warehouse_id")
);

CREATE TABLE IF NOT EXISTS "tests"."inventory" (
    "inventory_id" bigint,
    "product_id" integer,
    "warehouse_id" integer,
    "quantity_available" integer,
    "updated_at" timestamp with time zone,
    PRIMARY KEY ("inventory_id")
);

CREATE TABLE IF NOT EXISTS "tests"."customers" (
    "customer_id" integer,
    "customer_name" text,
    "email" text,
    "updated_at" timestamp with time zone,
    PRIMARY KEY ("customer_id")
);

CREATE TABLE IF NOT EXISTS "tests"."orders" (
    "order_id" bigint,
    "customer_id" integer,
    "order_date" date,
    "status" text,
    "total_amount" numeric(12,2),
    "updated_at" timestamp with time zone,
    PRIMARY KEY ("order_id")
);

CREATE TABLE IF NOT EXISTS "tests"."order_details" (
    "order_detail_id" bigint,
    "order_id" bigint,
    "product_id" integer,
    "quantity_ordered" integer,
    "unit_price" numeric(10,2),
    "updated_at" timestamp with time zone,
    PRIMARY KEY ("order_detail_id")
);

CREATE TABLE IF NOT EXISTS "tests"."shipments" (
    "shipment_id" bigint,
    "order_id" bigint,
    "shipment_date" date,
    "carrier" text,
    "status" text,
    "updated_at" timestamp with time zone,
    PRIMARY KEY ("shipment_id")
);

CREATE TABLE IF NOT EXISTS "tests"."returns" (
    "return_id" bigint,
    "order_id" bigint,
    "return_reason" text,
    "return_date" date,
    "updated_at" timestamp with time zone,
    PRIMARY KEY ("return_id")
);

CREATE TABLE IF NOT EXISTS "tests"."stock_levels" (
    "stock_level_id" bigint,
    "warehouse_id" integer,
    "product_id" integer,
    "reorder_threshold" integer,
    "updated_at" timestamp with time zone,
    PRIMARY KEY ("stock_level_id")
);

CREATE INDEX IF NOT EXISTS "inventory_updated_at" ON "tests"."inventory" (updated_at);

CREATE INDEX IF NOT EXISTS "orders_updated_at" ON "tests"."orders" (updated_at);

CREATE INDEX IF NOT EXISTS "order_details_updated_at" ON "tests"."order_details" (updated_at);

CREATE INDEX IF NOT EXISTS "shipments_updated_at" ON "tests"."shipments" (updated_at);

CREATE INDEX IF NOT EXISTS "returns_updated_at" ON "tests"."returns" (updated_at);

CREATE INDEX IF NOT EXISTS "stock_levels_updated_at" ON "tests"."stock_levels" (updated_at);

