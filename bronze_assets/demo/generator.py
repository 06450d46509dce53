"""Deterministic, vectorised generator of the inventory source data, with injected defects.

Clean values are realistic (names, emails, phones, SKUs, cities, carriers, seasonal order
dates over three years, recent ``updated_at`` more likely) and referentially intact. Defects are
then injected from each table's contract: one disjoint slice of ``round(rate * rows)`` rows per
rule — a NULL per required column, a malformed value per format rule, a violation per range
rule and an orphan per foreign key — so every defect kind hits exactly the requested rate.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from bronze_assets.contracts import (
    CONTRACTS,
    Comparison,
    Contract,
    NotAfterLoadDateRule,
    PgType,
    RangeRule,
    RegexRule,
    ValueSetRule,
    in_dependency_order,
)
from bronze_assets.contracts.arrow import arrow_type
from bronze_assets.contracts.tables import EMAIL_PATTERN, PHONE_PATTERN, SKU_PATTERN
from bronze_assets.demo import vocab

US_PER_SECOND = 1_000_000
US_PER_HOUR = 3_600 * US_PER_SECOND
US_PER_DAY = 24 * US_PER_HOUR
HISTORY_DAYS = 3 * 365 + 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

MALFORMED_BY_PATTERN = {
    EMAIL_PATTERN: vocab.MALFORMED_EMAILS,
    PHONE_PATTERN: vocab.MALFORMED_PHONES,
    SKU_PATTERN: vocab.MALFORMED_SKUS,
}
GENERIC_MALFORMED = ("#invalid value#", "??")

Columns = dict[str, Any]  # column name -> numpy array or polars Series (strings)


def default_as_of() -> datetime:
    """Start of the current UTC day: the same seed gives the same data all day long."""
    now = datetime.now(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def rows_for(contract: Contract, scale: float) -> int:
    """Rows of ``contract`` at ``scale`` (1 = the seed volumes; any positive scale gives ≥ 1)."""
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    return 0 if scale == 0 else max(1, round(contract.seed_rows * scale))


def defect_kinds(contract: Contract) -> list[str]:
    """The defect kinds injected into ``contract``'s table, one per §3 rule and foreign key."""
    q = contract.quality
    return (
        [f"null:{c}" for c in q.required]
        + [f"format:{r.column}" for r in q.formats]
        + [f"range:{r.column}" for r in q.ranges]
        + [f"orphan:{fk.column}" for fk in contract.foreign_keys]
    )


@dataclass(frozen=True)
class SeedOptions:
    """What to generate: volume, defect rate, RNG seed and the 'now' the data is relative to."""

    scale: float = 1.0
    defect_rate: float = 0.01
    seed: int = 42
    as_of: datetime = field(default_factory=default_as_of)

    def __post_init__(self) -> None:
        if not 0 <= self.defect_rate < 1:
            raise ValueError(f"defect rate must be in [0, 1), got {self.defect_rate}")
        if self.as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware (UTC)")


@dataclass
class GeneratedTable:
    """One generated source table and the number of rows carrying each injected defect."""

    contract: Contract
    data: pa.Table
    defects: dict[str, int]


class InventoryGenerator:
    """Generates the ten source tables from their contracts, parents before children."""

    def __init__(self, options: SeedOptions) -> None:
        self.options = options
        self.as_of_us = (options.as_of.astimezone(UTC) - EPOCH) // timedelta(microseconds=1)
        self.as_of_day = self.as_of_us // US_PER_DAY
        self.rows = {name: rows_for(c, options.scale) for name, c in CONTRACTS.items()}
        self._product_cents: np.ndarray | None = None
        self._sales: dict[str, Columns] | None = None

    # ------------------------------------------------------------------ public API
    def generate_all(self) -> Iterator[GeneratedTable]:
        for contract in in_dependency_order():
            yield self.generate(contract)

    def generate(self, contract: Contract) -> GeneratedTable:
        n = self.rows[contract.name]
        cols = self._clean(contract, n) if n else {c.name: np.array([]) for c in contract.columns}
        nulls: dict[str, np.ndarray] = {}
        defects = self._inject_defects(contract, cols, nulls, n) if n else {}
        return GeneratedTable(contract, _to_arrow(contract, cols, nulls, n), defects)

    # ------------------------------------------------------------------ helpers
    def _rng(self, stream: str) -> np.random.Generator:
        return np.random.default_rng([self.options.seed, zlib.crc32(stream.encode())])

    def _recent_ts(self, rng: np.random.Generator, n: int, mean_days: float) -> np.ndarray:
        """Timestamps before ``as_of``, exponentially more likely to be recent."""
        age = rng.exponential(mean_days * US_PER_DAY, n).astype(np.int64)
        return self.as_of_us - np.clip(age, US_PER_SECOND, HISTORY_DAYS * US_PER_DAY)

    def _cap(self, rng: np.random.Generator, ts: np.ndarray) -> np.ndarray:
        """Keep timestamps strictly before ``as_of`` (events cannot come from the future)."""
        cap = self.as_of_us - rng.integers(US_PER_SECOND, US_PER_HOUR, ts.size)
        return np.minimum(ts, cap)

    def _clean(self, contract: Contract, n: int) -> Columns:
        builder = getattr(self, f"_build_{contract.name}", None)
        if builder is None:
            raise KeyError(f"the demo generator has no builder for table {contract.name!r}")
        cols: Columns = builder(self._rng(contract.name), n)
        missing = set(contract.column_names) - set(cols)
        if missing:
            raise AssertionError(f"generator for {contract.name} misses columns {missing}")
        return cols

    # ------------------------------------------------------------------ dimensions
    def _build_warehouses(self, rng: np.random.Generator, n: int) -> Columns:
        ids = np.arange(1, n + 1)
        city_idx = (ids - 1) % len(vocab.CITIES)
        site_no = (ids - 1) // len(vocab.CITIES) + 1
        cities = pl.Series([f"{c}, {r}" for c, r in vocab.CITIES]).gather(city_idx)
        location = pl.select(
            pl.when(pl.lit(site_no) > 1)
            .then(pl.concat_str([cities, pl.lit(" DC-"), pl.lit(site_no).cast(pl.String)]))
            .otherwise(cities)
        ).to_series()
        return {
            "warehouse_id": ids,
            "location": location,
            "capacity": rng.integers(20, 800, n) * 500,
            "updated_at": self._recent_ts(rng, n, 240),
        }

    def _product_prices(self) -> np.ndarray:
        """Clean list price in cents of every product (also used by order lines)."""
        if self._product_cents is None:
            rng = self._rng("products.price")
            n = self.rows["products"]
            cats = list(vocab.CATEGORIES.values())
            cat_idx = rng.integers(0, len(cats), n)
            base = np.array([c[1] for c in cats])[cat_idx]
            cents = np.round(base * rng.lognormal(0.0, 0.5, n) * 100).astype(np.int64)
            self._product_cents = np.maximum(cents, 99)
            self._product_cat = cat_idx
        return self._product_cents

    def _build_products(self, rng: np.random.Generator, n: int) -> Columns:
        ids = np.arange(1, n + 1)
        cents = self._product_prices()
        cat_idx = self._product_cat
        cats = list(vocab.CATEGORIES.items())
        nouns = [noun for _, (_, _, ns) in cats for noun in ns]
        offsets = np.cumsum([0] + [len(ns) for _, (_, _, ns) in cats])[:-1]
        lens = np.array([len(ns) for _, (_, _, ns) in cats])
        noun_idx = offsets[cat_idx] + (rng.random(n) * lens[cat_idx]).astype(np.int64)
        adjectives = pl.Series(vocab.PRODUCT_ADJECTIVES).gather(
            rng.integers(0, len(vocab.PRODUCT_ADJECTIVES), n)
        )
        name = pl.select(
            pl.concat_str(
                [adjectives, pl.lit(pl.Series(nouns).gather(noun_idx)),
                 pl.lit(pl.Series(rng.integers(100, 9999, n)).cast(pl.String))],
                separator=" ",
            )
        ).to_series()
        prefix = pl.Series([c[1][0] for c in cats]).gather(cat_idx)
        sku = pl.select(
            pl.concat_str([prefix, pl.lit("-"), pl.lit(pl.Series(ids)).cast(pl.String).str.zfill(6)])
        ).to_series()
        return {
            "product_id": ids,
            "product_name": name,
            "category": pl.Series([c[0] for c in cats]).gather(cat_idx),
            "unit_price": cents,
            "sku": sku,
            "updated_at": self._recent_ts(rng, n, 180),
        }

    def _build_customers(self, rng: np.random.Generator, n: int) -> Columns:
        ids = np.arange(1, n + 1)
        first = pl.Series(vocab.FIRST_NAMES).gather(rng.integers(0, len(vocab.FIRST_NAMES), n))
        last = pl.Series(vocab.LAST_NAMES).gather(rng.integers(0, len(vocab.LAST_NAMES), n))
        domain = pl.Series(vocab.EMAIL_DOMAINS).gather(rng.integers(0, len(vocab.EMAIL_DOMAINS), n))
        frame = pl.DataFrame({"f": first, "l": last, "d": domain, "id": ids})
        out = frame.select(
            name=pl.concat_str(["f", "l"], separator=" "),
            email=pl.concat_str(
                [pl.col("f").str.to_lowercase(), pl.lit("."), pl.col("l").str.to_lowercase(),
                 pl.col("id").cast(pl.String), pl.lit("@"), pl.col("d")]
            ),
        )
        return {
            "customer_id": ids,
            "customer_name": out["name"],
            "email": out["email"],
            "updated_at": self._recent_ts(rng, n, 150),
        }

    def _phones(self, rng: np.random.Generator, n: int) -> pl.Series:
        frame = pl.DataFrame({
            "a": rng.integers(201, 990, n), "e": rng.integers(200, 1000, n),
            "l": rng.integers(0, 10_000, n), "fmt": rng.integers(0, 4, n),
        }).with_columns(pl.col("l").cast(pl.String).str.zfill(4), pl.col("a", "e").cast(pl.String))
        return frame.select(
            pl.when(pl.col("fmt") == 0).then(pl.format("+1 ({}) {}-{}", "a", "e", "l"))
            .when(pl.col("fmt") == 1).then(pl.format("{}-{}-{}", "a", "e", "l"))
            .when(pl.col("fmt") == 2).then(pl.format("+1 {} {} {}", "a", "e", "l"))
            .otherwise(pl.format("+44 20 {}{} {}", pl.col("e"), pl.col("a").str.slice(0, 1), "l"))
        ).to_series()

    def _build_suppliers(self, rng: np.random.Generator, n: int) -> Columns:
        ids = np.arange(1, n + 1)
        last = pl.Series(vocab.LAST_NAMES).gather(rng.integers(0, len(vocab.LAST_NAMES), n))
        suffix = pl.Series(vocab.COMPANY_SUFFIXES).gather(
            rng.integers(0, len(vocab.COMPANY_SUFFIXES), n)
        )
        frame = pl.DataFrame({"l": last, "s": suffix, "id": ids})
        out = frame.select(
            name=pl.concat_str(["l", "s"], separator=" "),
            email=pl.concat_str([
                pl.lit("sales"), pl.col("id").cast(pl.String), pl.lit("@"),
                pl.col("l").str.to_lowercase(), pl.lit("-"),
                pl.col("s").str.to_lowercase().str.replace_all(r"[^a-z]", ""), pl.lit(".com"),
            ]),
        )
        return {
            "supplier_id": ids,
            "supplier_name": out["name"],
            "contact_number": self._phones(rng, n),
            "email": out["email"],
            "product_id": rng.integers(1, self.rows["products"] + 1, n),
            "updated_at": self._recent_ts(rng, n, 240),
        }

    def _product_warehouse_pairs(self, rng: np.random.Generator, n: int) -> tuple[Any, Any]:
        products, warehouses = self.rows["products"], self.rows["warehouses"]
        total = products * warehouses
        pairs = rng.choice(total, n, replace=False) if n <= total else rng.integers(0, total, n)
        return pairs // warehouses + 1, pairs % warehouses + 1

    def _build_inventory(self, rng: np.random.Generator, n: int) -> Columns:
        product_id, warehouse_id = self._product_warehouse_pairs(rng, n)
        return {
            "inventory_id": np.arange(1, n + 1),
            "product_id": product_id,
            "warehouse_id": warehouse_id,
            "quantity_available": rng.gamma(1.6, 140.0, n).astype(np.int64),
            "updated_at": self._recent_ts(rng, n, 30),
        }

    def _build_stock_levels(self, rng: np.random.Generator, n: int) -> Columns:
        product_id, warehouse_id = self._product_warehouse_pairs(rng, n)
        return {
            "stock_level_id": np.arange(1, n + 1),
            "warehouse_id": warehouse_id,
            "product_id": product_id,
            "reorder_threshold": rng.integers(1, 60, n) * 5,
            "updated_at": self._recent_ts(rng, n, 60),
        }

    # ------------------------------------------------------------------ sales facts
    def _build_orders(self, rng: np.random.Generator, n: int) -> Columns:
        return self._sales_plan()["orders"]

    def _build_order_details(self, rng: np.random.Generator, n: int) -> Columns:
        return self._sales_plan()["order_details"]

    def _build_shipments(self, rng: np.random.Generator, n: int) -> Columns:
        return self._sales_plan()["shipments"]

    def _build_returns(self, rng: np.random.Generator, n: int) -> Columns:
        return self._sales_plan()["returns"]

    def _order_days(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Order dates over the last three years: growing trend, Nov/Dec peak, quieter weekends."""
        offsets = np.arange(1, HISTORY_DAYS + 1)
        days = self.as_of_day - offsets
        month = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12
        season = np.array([0.8, 0.8, 0.9, 0.95, 1.0, 0.95, 0.9, 1.0, 1.0, 1.05, 1.35, 1.6])
        weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
        weights = (1.5 - offsets / HISTORY_DAYS) * season[month] * np.where(weekday >= 5, 0.75, 1.0)
        return rng.choice(days, n, p=weights / weights.sum())

    def _sales_plan(self) -> dict[str, Columns]:
        """Orders, order lines, shipments and returns generated together so they agree."""
        if self._sales is not None:
            return self._sales
        rng = self._rng("sales")
        n_o, n_d = self.rows["orders"], self.rows["order_details"]
        n_s, n_r = min(self.rows["shipments"], n_o), self.rows["returns"]
        today = self.as_of_day

        # orders, ids increasing with time
        order_day = np.sort(self._order_days(rng, n_o)) if n_o else np.array([], np.int64)
        order_ts = order_day * US_PER_DAY + rng.integers(7 * US_PER_HOUR, 22 * US_PER_HOUR, n_o)
        order_ts = self._cap(rng, np.sort(order_ts))
        order_day = order_ts // US_PER_DAY
        n_cust = self.rows["customers"]
        customer_id = np.minimum((n_cust * rng.random(n_o) ** 1.3).astype(np.int64), n_cust - 1) + 1

        # order lines: every order has at least one line when there are enough lines
        base = np.arange(n_o) if n_d >= n_o else rng.choice(n_o, n_d, replace=False)
        line_order = np.sort(np.concatenate([base, rng.integers(0, max(n_o, 1), n_d - base.size)]))
        prices = self._product_prices()
        popularity = rng.permutation(prices.size)
        product_idx = popularity[(prices.size * rng.random(n_d) ** 2).astype(np.int64)]
        quantity = np.minimum(rng.geometric(0.4, n_d), 50)
        unit_price = prices[product_idx]
        line_ts = self._cap(rng, order_ts[line_order] + rng.integers(0, 600 * US_PER_SECOND, n_d))
        total = np.bincount(line_order, weights=quantity * unit_price, minlength=n_o)

        # which orders shipped: the newest ones are still open, a few older ones were cancelled
        n_open = n_o - n_s
        recent = int(np.sum(order_day >= today - 2))
        k_recent = min(n_open, recent)
        shipped = np.ones(n_o, dtype=bool)
        shipped[n_o - k_recent :] = False
        cancelled = rng.choice(n_o - k_recent, n_open - k_recent, replace=False)
        shipped[cancelled] = False
        order_status = np.where(rng.random(n_o) < 0.5, "PENDING", "PROCESSING").astype(object)
        order_status[cancelled] = "CANCELLED"

        # shipments, ids increasing with shipment time
        s_order = np.flatnonzero(shipped)
        ship_day = np.minimum(order_day[s_order] + rng.geometric(0.5, s_order.size), today - 1)
        ship_day = np.maximum(ship_day, order_day[s_order])
        ship_ts = ship_day * US_PER_DAY + rng.integers(6 * US_PER_HOUR, 20 * US_PER_HOUR, s_order.size)
        order_by_ship = np.argsort(ship_ts, kind="stable")
        s_order, ship_day, ship_ts = s_order[order_by_ship], ship_day[order_by_ship], ship_ts[order_by_ship]
        delivered_day = ship_day + rng.integers(1, 6, s_order.size)
        ship_status = np.where(delivered_day < today, "DELIVERED", "IN_TRANSIT").astype(object)
        just_left = (ship_day >= today - 1) & (rng.random(s_order.size) < 0.3)
        ship_status[just_left] = "PENDING"
        ship_updated = np.where(
            ship_status == "DELIVERED",
            delivered_day * US_PER_DAY + rng.integers(8 * US_PER_HOUR, 20 * US_PER_HOUR, s_order.size),
            ship_ts + rng.integers(0, 2 * US_PER_HOUR, s_order.size),
        )

        # returns of delivered shipments
        eligible = np.flatnonzero((ship_status == "DELIVERED") & (delivered_day <= today - 2))
        n_r = min(n_r, eligible.size)
        returned = np.sort(rng.choice(eligible, n_r, replace=False))
        return_day = np.minimum(delivered_day[returned] + rng.integers(1, 30, n_r), today - 1)
        return_ts = return_day * US_PER_DAY + rng.integers(8 * US_PER_HOUR, 20 * US_PER_HOUR, n_r)
        by_return = np.argsort(return_ts, kind="stable")
        returned, return_day, return_ts = returned[by_return], return_day[by_return], return_ts[by_return]
        ship_status[returned] = "RETURNED"
        ship_updated[returned] = return_ts
        ship_updated = self._cap(rng, ship_updated)

        order_status[s_order] = np.where(
            np.isin(ship_status, ["DELIVERED", "RETURNED"]), "DELIVERED", "SHIPPED"
        )
        order_updated = order_ts + rng.integers(US_PER_SECOND, 900 * US_PER_SECOND, n_o)
        order_updated[s_order] = ship_updated
        reasons = pl.Series(vocab.RETURN_REASONS).gather(
            rng.integers(0, len(vocab.RETURN_REASONS), n_r)
        )

        self._sales = {
            "orders": {
                "order_id": np.arange(1, n_o + 1),
                "customer_id": customer_id,
                "order_date": order_day,
                "status": pl.Series(order_status.astype(str)),
                "total_amount": np.round(total).astype(np.int64),
                "updated_at": self._cap(rng, order_updated),
            },
            "order_details": {
                "order_detail_id": np.arange(1, n_d + 1),
                "order_id": line_order + 1,
                "product_id": product_idx + 1,
                "quantity_ordered": quantity,
                "unit_price": unit_price,
                "updated_at": line_ts,
            },
            "shipments": {
                "shipment_id": np.arange(1, s_order.size + 1),
                "order_id": s_order + 1,
                "shipment_date": ship_day,
                "carrier": pl.Series(vocab.CARRIERS).gather(
                    rng.choice(len(vocab.CARRIERS), s_order.size, p=vocab.CARRIER_WEIGHTS)
                ),
                "status": pl.Series(ship_status.astype(str)),
                "updated_at": ship_updated,
            },
            "returns": {
                "return_id": np.arange(1, n_r + 1),
                "order_id": s_order[returned] + 1,
                "return_reason": reasons,
                "return_date": return_day,
                "updated_at": self._cap(rng, return_ts + rng.integers(0, 4 * US_PER_HOUR, n_r)),
            },
        }
        return self._sales

    # ------------------------------------------------------------------ defects
    def _inject_defects(
        self, contract: Contract, cols: Columns, nulls: dict[str, np.ndarray], n: int
    ) -> dict[str, int]:
        kinds = defect_kinds(contract)
        per_kind = round(self.options.defect_rate * n)
        if per_kind * len(kinds) > n:
            raise ValueError(
                f"defect rate {self.options.defect_rate} is too high for {contract.name}: "
                f"{len(kinds)} defect kinds x {per_kind} rows exceed its {n} rows"
            )
        if per_kind == 0:
            return dict.fromkeys(kinds, 0)
        rng = self._rng(f"{contract.name}.defects")
        rows = rng.permutation(n)
        rules = {f"format:{r.column}": r for r in contract.quality.formats}
        rules |= {f"range:{r.column}": r for r in contract.quality.ranges}
        fks = {f"orphan:{fk.column}": fk for fk in contract.foreign_keys}
        for i, kind in enumerate(kinds):
            idx = np.sort(rows[i * per_kind : (i + 1) * per_kind])
            column = kind.split(":", 1)[1]
            values = cols[column]
            if kind.startswith("null:"):
                if isinstance(values, pl.Series):
                    cols[column] = values.scatter(idx, None)
                else:
                    nulls.setdefault(column, np.zeros(n, dtype=bool))[idx] = True
            elif kind.startswith("format:"):
                cols[column] = values.scatter(idx, self._malformed(rng, rules[kind], idx.size))
            elif kind.startswith("range:"):
                cols[column] = self._out_of_range(rng, rules[kind], np.array(values), idx)
            else:
                parent_rows = self.rows[fks[kind].parent_table]
                values = np.array(values)
                values[idx] = parent_rows + rng.integers(1, 100_000, idx.size)
                cols[column] = values
        return dict.fromkeys(kinds, per_kind)

    @staticmethod
    def _malformed(rng: np.random.Generator, rule: Any, k: int) -> pl.Series:
        if isinstance(rule, ValueSetRule):
            choices = tuple(v for v in vocab.UNKNOWN_STATUSES if v not in rule.values)
        elif isinstance(rule, RegexRule):
            choices = MALFORMED_BY_PATTERN.get(rule.pattern, GENERIC_MALFORMED)
        else:
            raise TypeError(f"not a format rule: {rule!r}")
        return pl.Series(choices).gather(rng.integers(0, len(choices), k))

    def _out_of_range(
        self, rng: np.random.Generator, rule: Any, values: np.ndarray, idx: np.ndarray
    ) -> np.ndarray:
        if isinstance(rule, NotAfterLoadDateRule):
            values[idx] = self.as_of_day + rng.integers(1, 366, idx.size)
        elif isinstance(rule, RangeRule):
            magnitude = np.maximum(np.abs(values[idx]), 1)
            if rule.op is Comparison.GT:  # zero or negative
                magnitude = np.where(rng.random(idx.size) < 0.5, 0, magnitude)
            values[idx] = np.floor(rule.bound) - magnitude
        else:
            raise TypeError(f"not a range rule: {rule!r}")
        return values


# ---------------------------------------------------------------------- Arrow conversion
def _cents_to_decimal(cents: np.ndarray, type_: pa.DataType) -> pa.Array:
    """Exact decimal from integer cents (via text, no float rounding)."""
    cents = cents.astype(np.int64)
    magnitude = np.abs(cents)
    text = pl.select(
        pl.concat_str([
            pl.lit(pl.Series(np.where(cents < 0, "-", ""))),
            pl.lit(pl.Series(magnitude // 100)).cast(pl.String), pl.lit("."),
            pl.lit(pl.Series(magnitude % 100)).cast(pl.String).str.zfill(2),
        ])
    ).to_series()
    return text.to_arrow().cast(pa.string()).cast(type_)


def _to_arrow(contract: Contract, cols: Columns, nulls: dict[str, np.ndarray], n: int) -> pa.Table:
    arrays = []
    for col in contract.columns:
        target = arrow_type(col.type)
        values = cols[col.name]
        mask = nulls.get(col.name)
        if isinstance(values, pl.Series):
            arr = values.to_arrow().cast(target)
        elif col.type.is_numeric:
            arr = _cents_to_decimal(np.asarray(values), target)
        elif col.type == PgType.DATE:
            arr = pa.array(np.asarray(values, dtype=np.int32), pa.int32()).view(target)
        elif col.type == PgType.TIMESTAMPTZ:
            arr = pa.array(np.asarray(values, dtype=np.int64), pa.int64()).view(target)
        else:
            arr = pa.array(np.asarray(values).astype(target.to_pandas_dtype()), target)
        if mask is not None:
            arr = pa.compute.if_else(pa.array(mask), pa.nulls(n, target), arr)
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, names=contract.column_names)
