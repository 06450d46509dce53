"""ARCHITECTURE §2.7 History (SCD type 2) on the Spark engine: delta-spark writes the same
versions as the local engine for the same source changes, adds nothing on a re-run or a killed and
repeated run, and a FORGOTTEN customer's personal columns are unreadable in every version and every
file of the history it wrote."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from bronze_assets.contracts import CONTRACTS
from bronze_assets.lib.delta.change_feed import change_feed_on
from bronze_assets.lib.delta.history import IS_DELETED, VALID_FROM, VALID_TO
from bronze_assets.lib.delta.query import read_snapshot
from bronze_assets.lib.governance import decrypt_table, forget_subject
from bronze_assets.lib.spark.load import SparkLoader
from bronze_assets_tests.bronze_helpers import Bronze, env_storage, rewrite_as_v1
from bronze_assets_tests.conftest import query

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("spark")]

PK = "customer_id"
CUSTOMERS = CONTRACTS["customers"]
T1 = datetime(2026, 11, 27, 10, tzinfo=UTC)
T2, T3, T4 = T1 + timedelta(hours=1), T1 + timedelta(hours=2), T1 + timedelta(hours=3)


def _history(root: Path, version: int | None = None) -> pl.DataFrame:
    """The customers history under ``root``, decrypted, sorted by key and version start, without
    the per-run batch id."""
    dt = DeltaTable(str(root / CUSTOMERS.history_table), version=version)
    frame = pl.from_arrow(decrypt_table(read_snapshot(dt), CUSTOMERS, env_storage(root)))
    assert isinstance(frame, pl.DataFrame)
    columns = sorted(c for c in frame.columns if c != "batch_id")
    return frame.select(columns).sort(PK, VALID_FROM)


def test_spark_writes_the_versions_the_local_engine_writes(seeded: str, spark, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    local, root = Bronze(seeded, tmp_path / "local"), tmp_path / "spark"
    loader = SparkLoader(spark, env_storage(root))

    def both(at: datetime) -> tuple[int, int]:
        ours = local.load_direct("customers", batch_time=at).history_versions
        theirs = loader.load(CUSTOMERS, seeded, batch_time=at).merge.history_versions
        assert _history(root).equals(_history(local.root)), at
        return ours, theirs

    rows = both(T1)[0]
    assert rows == local.read("customers").height
    assert change_feed_on(DeltaTable(str(root / CUSTOMERS.history_table))), "its history has a change feed"
    # an update, a delete, then the deleted key back (the source as a user changes it)
    query(seeded, "UPDATE tests.customers SET email = 'moved@example.com', updated_at = now() "
                  "WHERE customer_id = 1")
    query(seeded, "DELETE FROM tests.customers WHERE customer_id = 2")
    assert both(T2) == (2, 2)
    ((email2,),) = _history(root).filter(pl.col(PK) == 2).select("email").unique().rows()
    query(seeded, f"INSERT INTO tests.customers VALUES (2, 'Back Again', '{email2}', now())")
    assert both(T3) == (1, 1)
    spark_history = _history(root)
    versions = spark_history.filter(pl.col(PK) == 2).select(VALID_FROM, VALID_TO, IS_DELETED).rows()
    assert versions == [(T1, T2, False), (T2, T3, True), (T3, None, False)]
    assert spark_history.height == rows + 3
    assert spark_history.filter(pl.col(VALID_TO).is_null()).height == rows, "one current version per key"

    # an unchanged re-run writes no history
    settled = DeltaTable(str(root / CUSTOMERS.history_table)).version()
    assert both(T4) == (0, 0)
    assert DeltaTable(str(root / CUSTOMERS.history_table)).version() == settled

    # killed after the history commit, before the current table's MERGE, then repeated: no duplicate
    query(seeded, "UPDATE tests.customers SET email = 'k@example.com', updated_at = now() "
                  "WHERE customer_id = 3")

    def killed(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="killed"):
        patch.setattr(SparkLoader, "_merge", killed)
        loader.load(CUSTOMERS, seeded, batch_time=T4)
    assert _history(root).height == rows + 4
    repeated = loader.load(CUSTOMERS, seeded, batch_time=T4 + timedelta(hours=1)).merge
    assert repeated.updated == 1 and repeated.history_versions == 0
    assert _history(root).height == rows + 4
    assert _history(root).filter(pl.col(PK) == 3)["email"].to_list()[-1] == "k@example.com"


def test_forget_leaves_no_personal_data_in_any_version_spark_wrote(seeded: str, spark, tmp_path: Path
                                                                   ) -> None:
    root = tmp_path / "spark"
    loader = SparkLoader(spark, env_storage(root))
    ((name, email),) = query(seeded, "SELECT customer_name, email FROM tests.customers WHERE customer_id = 7")
    loader.load(CUSTOMERS, seeded, batch_time=T1)
    query(seeded, "UPDATE tests.customers SET customer_name = 'Renamed Person', "
                  "email = 'renamed@example.com', updated_at = now() WHERE customer_id = 7")
    loader.load(CUSTOMERS, seeded, batch_time=T2)
    query(seeded, "DELETE FROM tests.customers WHERE customer_id = 7")
    loader.load(CUSTOMERS, seeded, batch_time=T3)
    assert _history(root).filter(pl.col(PK) == 7)["email"].to_list() == [email, "renamed@example.com",
                                                                         "renamed@example.com"]

    forget_subject(CUSTOMERS, 7, storage=root)
    hist = root / CUSTOMERS.history_table
    for version in range(DeltaTable(str(hist)).version() + 1):
        rows = _history(root, version).filter(pl.col(PK) == 7)
        assert set(rows["customer_name"]) <= {None} and set(rows["email"]) <= {None}, version
    ((other,),) = query(seeded, "SELECT email FROM tests.customers WHERE customer_id = 8")
    assert _history(root).filter(pl.col(PK) == 8)["email"].to_list() == [other]
    files = [p for p in hist.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any("_change_data" in p.parts for p in files)
    leaks = [(p.name, s) for p in files for s in (name, email, "Renamed Person", "renamed@example.com")
             if s.encode() in p.read_bytes()]
    assert not leaks


def test_a_partitioned_tables_versions_keep_the_partition_its_rows_keep(
        seeded: str, spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An order whose date moves to another month stays in its partition of bz_orders (the MERGE
    keeps it), and its new version records that partition on both engines."""
    monkeypatch.setitem(CONTRACTS, "orders", replace(CONTRACTS["orders"], history=True))
    orders = CONTRACTS["orders"]
    local, root = Bronze(seeded, tmp_path / "local"), tmp_path / "spark"
    loader = SparkLoader(spark, env_storage(root))
    for at in (T1, T2):
        if at == T2:
            query(seeded, "UPDATE tests.orders SET order_date = order_date - 62, updated_at = now() "
                          "WHERE order_id IN (1, 2)")
        local.load_direct("orders", batch_time=at)
        loader.load(orders, seeded, batch_time=at)

    def versions(where: Path) -> pl.DataFrame:
        frame = pl.from_arrow(read_snapshot(DeltaTable(str(where / orders.history_table))))
        assert isinstance(frame, pl.DataFrame)
        return frame.drop("batch_id").select(sorted(c for c in frame.columns if c != "batch_id")) \
            .sort("order_id", VALID_FROM)

    ours, theirs = versions(local.root), versions(root)
    assert ours.equals(theirs)
    moved = theirs.filter(pl.col("order_id") == 1)
    assert moved.height == 2 and moved["order_month"].n_unique() == 1, "the version keeps the row's partition"


def test_a_rehash_only_load_runs_no_history_merge_on_either_engine(seeded: str, spark, tmp_path: Path
                                                                   ) -> None:
    """A load that only replaces v1 hashes by v2 (no data changed) adds no version: neither engine
    runs a history MERGE for it (one rule, lib/delta/history.adds_versions), so the history
    table keeps its version."""
    loaders = {"local": None, "spark": SparkLoader(spark, env_storage(tmp_path / "spark"))}
    for engine, loader in loaders.items():
        b = Bronze(seeded, tmp_path / engine)
        b.load_direct("customers", batch_time=T1)
        rows = rewrite_as_v1(b, "customers", PK).height
        before = DeltaTable(str(b.root / CUSTOMERS.history_table)).version()
        result = b.load_direct("customers", batch_time=T2) if loader is None \
            else loader.load(CUSTOMERS, seeded, batch_time=T2).merge
        assert result.rehashed_v1 == rows and result.rows_changed == rows, engine
        assert result.history_versions == 0, engine
        after = DeltaTable(str(b.root / CUSTOMERS.history_table)).version()
        assert after == before, f"{engine}: no history commit"
