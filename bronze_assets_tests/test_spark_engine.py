"""The Spark engine, for real: local Spark + delta-spark against the embedded PostgreSQL.

Every test runs in the xdist group of the Spark tests, so one Spark session (one JVM, the
``spark`` fixture of conftest) serves them all.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from bronze_assets.contracts import CONTRACTS
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.delta.commit_log import (
    BATCH_KEY,
    HASH_VERSION_KEY,
    REHASHED_KEY,
    CommitLog,
    commit_history,
)
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE
from bronze_assets.lib.delta.query import read_snapshot
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.delta.writers import (
    DELTA_RS,
    SPARK,
    DeletionVectorsError,
    MixedEnginesError,
    commit_engine,
    files_with_deletion_vectors,
)
from bronze_assets.lib.governance.crypto import PREFIX
from bronze_assets.lib.governance.erasure import forget_subject
from bronze_assets.lib.governance.pii import PiiCipher
from bronze_assets.lib.load.engine import LocalEngine
from bronze_assets.lib.load.lifecycle import Lifecycle, LoadRequest
from bronze_assets.lib.source.postgres import connect
from bronze_assets.lib.spark.engine import SparkEngine
from bronze_assets.lib.spark.load import SparkLoader
from bronze_assets.lib.spark.score import java_regex
from bronze_assets.settings import Settings
from bronze_assets_tests.bronze_helpers import (
    Bronze,
    active_hashes,
    bronze_frame,
    env_storage,
    rewrite_as_v1,
    source_hashes,
)
from bronze_assets_tests.conftest import AS_OF, SeedDb, query
from bronze_assets_tests.s3 import ACCESS_KEY, S3, SECRET_KEY

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("spark")]

T1 = datetime(2026, 11, 27, 10, tzinfo=UTC)
T2 = T1 + timedelta(hours=1)
T3 = T2 + timedelta(hours=1)


@pytest.fixture
def seeded(seed_db: SeedDb) -> str:
    return seed_db(SeedOptions(scale=0.01, defect_rate=0.05, as_of=AS_OF))


HOSTILE = [
    # dates and timestamps bronze cannot store, NaN, the unit separator, backslash-N, Unicode
    "INSERT INTO tests.orders VALUES (990001, 1, DATE '0044-03-15 BC', 'PENDING', 1.50, now()), "
    "(990002, 1, 'infinity', 'PENDING', 'NaN', '-infinity'), (990003, 1, DATE '9999-12-31', "
    "E'a\\x1fb', 0.10, '2024-02-29 23:59:59.999999+00'), (990004, 1, NULL, E'\\\\N', NULL, 'infinity'), "
    "(990005, 1, DATE '0001-01-01', 'SHIPPED', 2.00, '0001-01-01 00:00:00+00'), "
    "(990006, 1, DATE '10000-01-01', 'PENDING', 3.00, '0044-03-15 12:00:00.5+00 BC')",
    "INSERT INTO tests.products VALUES (990001, 'NaN price', 'x', 'NaN', 'ABC-123', now()), "
    "(990002, 'Ünïcödé ✓ 𝄞', E'\\\\N', -1.00, E'\\x1f', now()), "
    "(990003, 'trailing newline', 'x', 1.00, E'ABC-123\\n', now()), "
    "(990004, 'unicode digits', 'x', 1.00, 'ABC-١٢٣', now())",
    # Java's $ also matches before a final line break, and \\s differs without (?U)
    "INSERT INTO tests.suppliers VALUES (990001, 's', E'+1 555 0100\\n', E'a@b.com\\n', 1, now()), "
    "(990002, 's', '+1 555 0100', E'a\\u00a0b@c.com', 1, now()), "
    "(990003, 's', '555-0100', 'a@b.co', 1, now())",
    "INSERT INTO tests.customers VALUES (990001, 'Zoë Ærøskøbing', E'zoe@x.org\\n', now()), "
    "(990002, NULL, 'nobody@x.org', 'infinity')",
]


def _frame(uri: str) -> pl.DataFrame:
    return bronze_frame(uri)


def _comparable(root: Path | str, table: str) -> pl.DataFrame:
    """A bronze table with PII decrypted, sorted by key, without the per-run batch id."""
    contract = CONTRACTS[table]
    arrow = read_snapshot(DeltaTable(f"{root}/{contract.bronze_table}"))
    if contract.encrypted_columns:
        arrow = PiiCipher(contract, env_storage(root)).decrypt(arrow)
    frame = pl.from_arrow(arrow)
    assert isinstance(frame, pl.DataFrame)
    return frame.drop("batch_id").select(sorted(c for c in frame.columns if c != "batch_id")) \
        .sort(list(contract.primary_key))


def _quarantined(root: Path) -> Counter:
    path = root / QUARANTINE_TABLE
    if not path.exists():
        return Counter()
    frame = _frame(str(path))
    records = []
    for table, record, reason in frame.select("table_name", "record", "reason").iter_rows():
        contract = CONTRACTS[table]
        value = json.loads(record)
        if contract.encrypted_columns:  # ciphertext differs per write: compare that it is there
            value = {k: (v is not None if k in contract.encrypted_columns else v) for k, v in value.items()}
        records.append((table, json.dumps(value, sort_keys=True), reason))
    return Counter(records)


def _assert_same(local: Path, spark: Path) -> None:
    for table in CONTRACTS:
        a, b = _comparable(local, table), _comparable(spark, table)
        assert a.schema == b.schema, table
        if not a.equals(b):
            for column in a.columns:
                diff = a.filter(pl.col(column).ne_missing(b[column]))
                assert diff.is_empty(), (table, column, diff.head(3).to_dicts(),
                                         b.filter(pl.col(column).ne_missing(a[column])).head(3).to_dicts())
    assert _quarantined(local) == _quarantined(spark)


def test_java_regex_keeps_the_contract_semantics() -> None:
    assert java_regex(r"^[A-Z]{3,}-[0-9]{3,}$") == r"(?U)^[A-Z]{3,}-[0-9]{3,}\z"
    assert java_regex(r"^a\$") == r"(?U)^a\$"


def test_both_engines_write_the_same_rows_for_all_ten_tables(seeded: str, spark, tmp_path: Path) -> None:
    for statement in HOSTILE:
        query(seeded, statement)
    local, spark_root = Bronze(seeded, tmp_path / "local"), tmp_path / "spark"
    loader = SparkLoader(spark, env_storage(spark_root))
    for table, contract in CONTRACTS.items():
        local.load_direct(table, batch_time=T1)
        result = loader.load(contract, seeded, batch_time=T1)
        assert result.merge.inserted == result.rows > 0, table
    _assert_same(local.root, spark_root)
    orders = _frame(str(spark_root / "bz_orders")).filter(pl.col("order_id") >= 990001).sort("order_id")
    assert orders["order_date"].to_list()[:3] == [None, None, datetime(9999, 12, 31).date()]
    assert orders.filter(pl.col("order_id") == 990005)["updated_at"].to_list() == \
        [datetime(1, 1, 1, tzinfo=UTC)]
    assert active_hashes(_frame(str(spark_root / "bz_orders")), "order_id") == source_hashes(seeded, "orders")
    # the second load: updates, deletes, a key back from the dead, unchanged rows
    query(seeded, "UPDATE tests.products SET unit_price = unit_price + 1, updated_at = now() "
                  "WHERE product_id % 7 = 0")
    query(seeded, "DELETE FROM tests.order_details WHERE order_detail_id % 11 = 0")
    query(seeded, "UPDATE tests.customers SET email = 'new-' || email, updated_at = now() "
                  "WHERE customer_id % 5 = 0")
    query(seeded, "DELETE FROM tests.suppliers WHERE supplier_id % 3 = 0")
    for table, contract in CONTRACTS.items():
        local.load_direct(table, batch_time=T2)
        loader.load(contract, seeded, batch_time=T2)
    _assert_same(local.root, spark_root)


def test_spark_merge_semantics(seeded: str, spark, tmp_path: Path) -> None:
    root = tmp_path / "spark"
    loader = SparkLoader(spark, env_storage(root))
    products, customers = CONTRACTS["products"], CONTRACTS["customers"]
    first = loader.load(products, seeded, batch_time=T1)
    loader.load(customers, seeded, batch_time=T1)
    version = DeltaTable(str(root / "bz_products")).version()
    again = loader.load(products, seeded, batch_time=T2)
    assert (again.merge.inserted, again.merge.updated, again.merge.unchanged) == (0, 0, first.rows)
    assert DeltaTable(str(root / "bz_products")).version() == version, "unchanged: no commit"

    query(seeded, "UPDATE tests.products SET unit_price = 12.34, updated_at = now() WHERE product_id = 1")
    query(seeded, "DELETE FROM tests.products WHERE product_id = 2")
    changed = loader.load(products, seeded, batch_time=T2)
    assert (changed.merge.updated, changed.merge.soft_deleted, changed.merge.inserted) == (1, 1, 0)
    rows = {r["product_id"]: r for r in _frame(str(root / "bz_products")).to_dicts()}
    assert rows[1]["load_timestamp"] == T1 and rows[1]["update_timestamp"] == T2
    assert str(rows[1]["unit_price"]) == "12.34" and rows[2]["record_status"] == "DELETED"
    assert rows[2]["update_timestamp"] == T2 and rows[2]["batch_id"] == changed.batch_id
    assert rows[3]["update_timestamp"] == T1, "an unchanged row keeps its timestamps"

    query(seeded, "INSERT INTO tests.products VALUES (2, 'back', 'x', 1.00, 'ABC-123', now())")
    back = loader.load(products, seeded, batch_time=T3)
    assert back.merge.updated == 1
    row = _frame(str(root / "bz_products")).filter(pl.col("product_id") == 2).to_dicts()[0]
    assert row["record_status"] == "ACTIVE" and row["load_timestamp"] == T1 and row["product_name"] == "back"
    frame = _frame(str(root / "bz_products"))
    assert frame["product_id"].n_unique() == frame.height
    assert active_hashes(frame, "product_id") == source_hashes(seeded, "products")

    forget_subject(customers, 3, storage=root)
    query(seeded, "UPDATE tests.customers SET customer_name = 'Still Here', updated_at = now() "
                  "WHERE customer_id = 3")
    kept = loader.load(customers, seeded, batch_time=T3)
    assert kept.merge.forgotten_skipped == 1 and kept.merge.updated == 0
    row = _frame(str(root / "bz_customers")).filter(pl.col("customer_id") == 3).to_dicts()[0]
    assert row["record_status"] == "FORGOTTEN" and row["customer_name"] is None and row["email"] is None


def test_spark_rehashes_a_v1_table_once_as_the_local_engine_does(seeded: str, spark, tmp_path: Path) -> None:
    """One rule for both engines (lib/delta/merge_rule): a table written with v1 hashes gets only
    its record_hash replaced by its first load on Spark, exactly as on the local engine."""
    roots = {}
    for engine in ("local", "spark"):
        b = Bronze(seeded, tmp_path / engine)
        b.load_direct("products", batch_time=T1)
        roots[engine] = (b, rewrite_as_v1(b, "products", "product_id"))
    query(seeded, "UPDATE tests.products SET product_name = 'changed', updated_at = now() "
                  "WHERE product_id = 3")
    b, v2 = roots["spark"]
    local = roots["local"][0].load_direct("products", batch_time=T2)
    result = SparkLoader(spark, env_storage(b.root)).load(CONTRACTS["products"], seeded, batch_time=T2).merge
    counts = [(r.rehashed_v1, r.updated, r.inserted, r.unchanged) for r in (result, local)]
    assert counts == [(v2.height - 1, 1, 0, v2.height - 1)] * 2
    after = _frame(b.uri("products")).sort("product_id")
    assert active_hashes(after, "product_id") == source_hashes(seeded, "products")
    same = after.filter(pl.col("product_id") != 3).drop("record_hash")
    assert same.equals(v2.sort("product_id").filter(pl.col("product_id") != 3).drop("record_hash")), \
        "nothing but the hash changes, not even a timestamp"
    (entry,) = commit_history(b.table("products"), 1)
    assert (entry[REHASHED_KEY], entry[HASH_VERSION_KEY]) == (str(v2.height - 1), "2")
    assert _comparable(b.root, "products").equals(_comparable(roots["local"][0].root, "products"))
    again = SparkLoader(spark, env_storage(b.root)).load(CONTRACTS["products"], seeded, batch_time=T3).merge
    assert not again.committed and again.rehashed_v1 == 0, "once: the next load changes nothing"


def test_a_table_stays_exact_whichever_engine_loads_it_next(seeded: str, spark, tmp_path: Path) -> None:
    local = Bronze(seeded, tmp_path / "bronze")
    loader = SparkLoader(spark, env_storage(local.root))
    orders = CONTRACTS["orders"]
    local.load_direct("orders", batch_time=T1)
    v1 = local.version("orders")
    unchanged = loader.load(orders, seeded, batch_time=T2)
    assert unchanged.merge.unchanged == unchanged.rows and local.version("orders") == v1
    query(seeded, "UPDATE tests.orders SET status = 'CANCELLED', updated_at = now() WHERE order_id % 9 = 0")
    query(seeded, "DELETE FROM tests.orders WHERE order_id % 13 = 0")
    by_spark = loader.load(orders, seeded, batch_time=T2)
    assert by_spark.merge.updated > 0 and by_spark.merge.soft_deleted > 0
    history = commit_history(local.table("orders"), 1)
    assert history[0][BATCH_KEY] == by_spark.batch_id, "the Spark commit carries the batch id"
    assert CommitLog.read(local.table("orders")).watermark() == by_spark.watermark
    # Spark's MERGE marked the replaced rows with deletion vectors: the local engine refuses the
    # table until they are purged on Spark, then carries on from Spark's commit
    with pytest.raises(DeletionVectorsError, match=r"^bz_orders: refusing the local engine's load"):
        local.load_direct("orders", batch_time=T3)
    spark.sql(f"REORG TABLE delta.`{local.uri('orders')}` APPLY (PURGE)")
    v2 = local.version("orders")
    local.load_direct("orders", batch_time=T3)  # nothing changed since: delta-rs commits nothing
    assert local.version("orders") == v2
    query(seeded, "UPDATE tests.orders SET total_amount = 1.23, updated_at = now() WHERE order_id % 10 = 1")
    local.load_direct("orders", batch_time=T3)
    frame = _frame(local.uri("orders"))
    assert frame["order_id"].n_unique() == frame.height
    assert active_hashes(frame, "order_id") == source_hashes(seeded, "orders")
    live = {k for (k,) in query(seeded, "SELECT order_id FROM tests.orders")}
    deleted = set(frame.filter(pl.col("record_status") == "DELETED")["order_id"].to_list())
    assert deleted == set(frame["order_id"].to_list()) - live and deleted


def test_every_jdbc_partition_reads_one_snapshot(seeded: str, spark, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer moves stock between the first and the last inventory rows in every transaction:
    the total is the same in every committed state, so a read that mixed two states would show."""
    from bronze_assets.lib.source import extract

    monkeypatch.setattr(extract, "MIN_BLOCKS_PER_PART", 1)  # the small table read in several parts
    (lo, hi), = query(seeded, "SELECT min(inventory_id), max(inventory_id) FROM tests.inventory")
    (total,), = query(seeded, "SELECT sum(quantity_available) FROM tests.inventory")
    stop, moves = threading.Event(), [0]

    def writer() -> None:
        with connect(seeded, autocommit=True) as conn, conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("BEGIN")
                cur.execute(f"UPDATE tests.inventory SET quantity_available = quantity_available - 1, "
                            f"updated_at = now() WHERE inventory_id = {lo}")
                cur.execute(f"UPDATE tests.inventory SET quantity_available = quantity_available + 1, "
                            f"updated_at = now() WHERE inventory_id = {hi}")
                cur.execute("COMMIT")
                moves[0] += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        loader = SparkLoader(spark, env_storage(tmp_path / "spark"), parallelism=8)
        result = loader.load(CONTRACTS["inventory"], seeded)
    finally:
        stop.set()
        thread.join()
    assert moves[0] > 10, "the writer ran during the read"
    frame = _frame(str(tmp_path / "spark" / "bz_inventory"))
    assert frame.height == result.rows
    assert frame["quantity_available"].sum() == total


def _protected_columns(root: Path, table: str) -> set[str]:
    """The columns of a bronze table whose every value is ciphertext (at least one value)."""
    frame = bronze_frame(root / table)
    return {c for c in frame.columns if frame[c].dtype == pl.String and frame[c].drop_nulls().len()
            and frame[c].drop_nulls().str.starts_with(PREFIX).all()}


def test_spark_protects_pii_through_the_writers_hook_and_forget_works(seeded: str, spark, tmp_path: Path
                                                                      ) -> None:
    """The Spark engine protects PII with the local writer's hook: the same columns ciphertext,
    no plaintext in any file, and the erasure of a subject shreds it in every version."""
    contract = CONTRACTS["customers"]
    root = tmp_path / "spark"
    local = Bronze(seeded, tmp_path / "local")
    local.load_direct("customers", batch_time=T1)
    SparkLoader(spark, env_storage(root)).load(contract, seeded, batch_time=T1)
    assert _protected_columns(root, "bz_customers") == _protected_columns(local.root, "bz_customers") \
        == set(contract.encrypted_columns)
    query(seeded, "UPDATE tests.customers SET email = 'changed-' || email, updated_at = now() "
                  "WHERE customer_id % 4 = 0")
    SparkLoader(spark, env_storage(root)).load(contract, seeded, batch_time=T2)
    secrets = [v for row in query(seeded, "SELECT customer_name, email FROM tests.customers") for v in row
               if v and len(v) > 6]
    files = [p for p in (root / "bz_customers").rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    blob = b"".join(p.read_bytes() for p in files)
    leaked = [s for s in secrets if s.encode() in blob]
    assert not leaked, leaked[:3]
    cipher = PiiCipher(contract, env_storage(root))
    uri = str(root / "bz_customers")
    plain = cipher.decrypt(read_snapshot(DeltaTable(uri)))
    source = dict(query(seeded, "SELECT customer_id, email FROM tests.customers"))
    assert dict(zip(plain["customer_id"].to_pylist(), plain["email"].to_pylist(), strict=True)) == source

    # erasure on a table Spark wrote (with deletion vectors): the key is shredded, so every
    # retained version reads NULL
    assert files_with_deletion_vectors(DeltaTable(uri)) > 0
    before = DeltaTable(uri).version()
    erased = forget_subject(contract, 4, storage=root)
    assert (erased.rows_forgotten, erased.keys_shredded) == (1, 1)
    for version in (0, before):
        old = cipher.decrypt(read_snapshot(DeltaTable(uri, version=version))).to_pylist()
        (row,) = [r for r in old if r["customer_id"] == 4]
        assert (row["customer_name"], row["email"]) == (None, None), version
        assert any(r["email"] == source[r["customer_id"]] for r in old if r["customer_id"] != 4)
    (now,) = [r for r in read_snapshot(DeltaTable(uri)).to_pylist() if r["customer_id"] == 4]
    assert now["record_status"] == "FORGOTTEN" and now["email"] is None


def test_spark_on_s3_writes_what_the_local_engine_writes_and_one_table_keeps_one_engine(
        seeded: str, spark, s3: S3, tmp_path: Path) -> None:
    """s3:// through hadoop-aws's S3A against the S3 test server (AWS_ENDPOINT_URL, path-style,
    no TLS): a create and a MERGE of bz_orders equal the local engine's; then neither engine may
    load an S3 table the other one loads (ARCHITECTURE §6, delta-io/delta #3596)."""
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()  # the JVM may predate the test's variables
    hadoop.set("fs.s3a.access.key", ACCESS_KEY)
    hadoop.set("fs.s3a.secret.key", SECRET_KEY)
    storage = Storage(s3.root, settings=Settings.from_env())
    query(seeded, HOSTILE[0])
    local, loader = Bronze(seeded, tmp_path / "local"), SparkLoader(spark, storage)
    orders = CONTRACTS["orders"]
    local.load_direct("orders", batch_time=T1)
    assert loader.load(orders, seeded, batch_time=T1).merge.inserted > 0
    query(seeded, "UPDATE tests.orders SET total_amount = total_amount + 1, updated_at = now() "
                  "WHERE order_id % 7 = 0")
    query(seeded, "DELETE FROM tests.orders WHERE order_id % 11 = 0")
    local.load_direct("orders", batch_time=T2)
    assert loader.load(orders, seeded, batch_time=T2).merge.updated > 0
    assert _comparable(local.root, "orders").equals(_comparable(s3.root, "orders"))
    assert active_hashes(_frame(f"{s3.root}/bz_orders"), "order_id") == source_hashes(seeded, "orders")
    assert any(k.startswith("bronze/bz_orders/_delta_log/") for k in s3.keys("bronze/"))
    latest = commit_history(DeltaTable(f"{s3.root}/bz_orders"), 1)[0]
    assert commit_engine(latest) == SPARK and BATCH_KEY in latest

    request = LoadRequest(orders, None)
    with pytest.raises(MixedEnginesError, match=r"^bz_orders: refusing a delta-rs load on s3://.*delta-spark"):
        Lifecycle(request, LocalEngine(storage), seeded, storage).run()
    Lifecycle(LoadRequest(CONTRACTS["warehouses"], None), LocalEngine(storage), seeded, storage).run()
    with pytest.raises(MixedEnginesError, match=r"^bz_warehouses: refusing a delta-spark load .*by delta-rs"):
        Lifecycle(LoadRequest(CONTRACTS["warehouses"], None), SparkEngine(loader, data_docs=False),
                  seeded, storage).run()
    assert commit_engine(commit_history(DeltaTable(f"{s3.root}/bz_warehouses"), 1)[0]) == DELTA_RS
