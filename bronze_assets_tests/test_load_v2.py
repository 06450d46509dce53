"""Load design v2 (ARCHITECTURE §2.2 v2, §2.4 v2): the initial snapshot, every change by the next run
of the open partition, hostile session defaults, and values bronze cannot store."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.schedules import CHANGES_ONLY_TAG, build_schedule, load_groups, reads_changes_only
from bronze_assets.lib.delta.commit_log import REHASHED_KEY, CommitLog
from bronze_assets.lib.delta.merger import BronzeMerger, CommitInfo
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE
from bronze_assets.lib.delta.timetravel import restore
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.lib.source import extract
from bronze_assets_tests.bronze_helpers import Bronze, active_hashes, rewrite_as_v1, source_hashes
from bronze_assets_tests.conftest import AS_OF, query

pytestmark = pytest.mark.integration

TODAY = datetime.now(UTC).date()


def _events(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {e.partition: {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def test_initial_snapshot_lands_in_the_start_partition(seeded: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", "2026-11-01")
    b = Bronze(seeded, tmp_path / "bronze")
    meta = b.materialize("order_details", "2026-11-01")
    frame = b.read("order_details")
    assert set(frame["load_date"]) == {date(2026, 11, 1)}
    (count,) = query(seeded, "SELECT count(*) FROM tests.order_details")[0]
    assert meta["rows_read"] == frame.height == count
    assert active_hashes(frame, "order_detail_id") == source_hashes(seeded, "order_details")
    assert len(b.table("order_details").file_uris()) <= 2, "the snapshot is a few large files"


def test_update_to_an_order_dated_two_years_ago_arrives_with_the_current_month(
        seeded: str, tmp_path: Path) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    parts = b.assets["bz_orders"].partitions_def
    keys = parts.get_partition_keys()
    assert keys[0] == "2020-01-01" and keys[-1] == TODAY.replace(day=1).isoformat()
    first = dg.materialize([b.assets["bz_orders"]], resources=b.resources, tags={
        "dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
    assert first.success
    assert active_hashes(b.read("orders"), "order_id") == source_hashes(seeded, "orders")

    old = (AS_OF - timedelta(days=730)).date().replace(day=1)
    (order_id,) = query(seeded, f"SELECT min(order_id) FROM tests.orders WHERE order_date >= DATE '{old}' "
                                f"AND order_date < DATE '{old}' + interval '1 month'")[0]
    query(seeded, "UPDATE tests.orders SET status = 'CANCELLED', updated_at = now() "
                  f"WHERE order_id = {order_id}")
    query(seeded, "INSERT INTO tests.orders VALUES (990001, 1, DATE '2021-06-15', 'PENDING', 10.00, now())")
    result = dg.materialize([b.assets["bz_orders"]], resources=b.resources, partition_key=keys[-1])
    events = _events(result)
    assert old.isoformat() in events, "Dagster records the old month the update landed in"
    assert "2021-06-01" in events, "a backdated new order lands in its own month"
    rows = b.read("orders").filter(pl.col("order_id").is_in([order_id, 990001])).sort("order_id").to_dicts()
    assert rows[0]["status"] == "CANCELLED" and rows[0]["order_month"] == old
    assert rows[1]["order_month"] == date(2021, 6, 1)
    assert active_hashes(b.read("orders"), "order_id") == source_hashes(seeded, "orders")


def test_update_to_an_old_key_of_a_daily_table_arrives_with_the_open_day(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start = TODAY - timedelta(days=1)
    monkeypatch.setenv("BRONZE_START_DATE", start.isoformat())
    b = Bronze(seeded, tmp_path / "bronze")
    b.materialize("inventory", start.isoformat())
    query(seeded, "UPDATE tests.inventory SET quantity_available = 77, updated_at = now() "
                  "WHERE inventory_id = 3")
    query(seeded, "DELETE FROM tests.inventory WHERE inventory_id = 4")
    late = datetime.combine(TODAY, datetime.min.time(), UTC) - timedelta(minutes=5)  # within the overlap
    query(seeded, f"INSERT INTO tests.inventory VALUES (990001, 1, 1, 5, TIMESTAMPTZ '{late.isoformat()}'), "
                  "(990002, 1, 1, 5, 'infinity'), (990003, 1, 1, 5, now() + interval '3 days')")
    result = dg.materialize([b.assets["bz_inventory"]], resources=b.resources,
                            partition_key=TODAY.isoformat())
    events = _events(result)
    assert set(events) == {start.isoformat(), TODAY.isoformat()}
    frame = b.read("inventory")
    picked = frame.filter(pl.col("inventory_id").is_in([3, 4, 990001])).to_dicts()
    rows = {r["inventory_id"]: r for r in picked}
    assert rows[3]["quantity_available"] == 77 and rows[3]["load_date"] == start
    assert rows[4]["record_status"] == "DELETED"
    assert rows[990001]["load_date"] == TODAY, "a late new key lands in the partition of the run"
    future = frame.filter(pl.col("inventory_id").is_in([990002, 990003]))
    assert future["load_date"].to_list() == [TODAY, TODAY], "the open day takes rows dated in the future"
    assert active_hashes(frame, "inventory_id") == source_hashes(seeded, "inventory")


def test_hostile_session_defaults_do_not_change_the_hash(seeded: str, tmp_path: Path) -> None:
    (db,) = query(seeded, "SELECT current_database()")[0]
    query(seeded, f"ALTER DATABASE \"{db}\" SET DateStyle = 'SQL, DMY'")
    query(seeded, f"ALTER DATABASE \"{db}\" SET TimeZone = 'America/New_York'")
    b = Bronze(seeded, tmp_path / "bronze")
    for table in ("orders", "customers", "products"):
        b.load_direct(table)
        assert active_hashes(b.read(table), b.read(table).columns[0]) == source_hashes(seeded, table), table


HOSTILE_ORDERS = [
    (990001, "DATE '1999-12-31'"), (990002, "DATE '0044-03-15 BC'"), (990003, "'-infinity'::date"),
    (990004, "'infinity'::date"), (990005, "DATE '9999-12-31'"), (990006, "NULL"),
    (990007, "DATE '4713-01-01 BC'"), (990008, "DATE '10000-01-01'"),
]


def test_hostile_values_land_in_bronze_with_the_spec_hash(seeded: str, tmp_path: Path) -> None:
    values = ", ".join(f"({k}, 1, {d}, 'PENDING', 1.50, now())" for k, d in HOSTILE_ORDERS)
    query(seeded, f"INSERT INTO tests.orders VALUES {values}")
    query(seeded, "INSERT INTO tests.orders VALUES (990010, 1, DATE '2024-01-01', E'\\\\N', NULL, "
                  "'infinity'), (990011, 1, DATE '2024-01-01', NULL, 'NaN', '-infinity'), "
                  "(990012, 1, DATE '2024-01-01', E'a\\x1fb', 0.10, '2024-02-29 23:59:59.999999+00'), "
                  "(990013, 1, DATE '2024-01-01', E'a\\x1f', 0.10, '0044-03-15 12:00:00.5+00 BC')")
    query(seeded, "INSERT INTO tests.products VALUES (990001, 'NaN price', 'x', 'NaN', 'ABC-123', now()), "
                  "(990002, 'Ünïcödé ✓ 𝄞', E'\\\\N', -1.00, E'\\x1f', now())")
    b = Bronze(seeded, tmp_path / "bronze")
    keys = b.assets["bz_orders"].partitions_def.get_partition_keys()
    result = dg.materialize([b.assets["bz_orders"]], resources=b.resources, tags={
        "dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
    assert result.success
    b.materialize("products")
    for table, pk in (("orders", "order_id"), ("products", "product_id")):
        arrow = DeltaTable(b.uri(table)).to_pyarrow_table()  # readable, statistics included
        frame = pl.from_arrow(arrow)
        assert isinstance(frame, pl.DataFrame)
        assert frame[pk].n_unique() == frame.height
        assert active_hashes(frame, pk) == source_hashes(seeded, table), table
    orders = {r["order_id"]: r for r in b.read("orders").filter(pl.col("order_id") >= 990001).to_dicts()}
    assert set(orders) == {k for k, _ in HOSTILE_ORDERS} | {990010, 990011, 990012, 990013}
    first, newest = date(2020, 1, 1), TODAY.replace(day=1)
    assert orders[990001]["order_month"] == first and orders[990002]["order_month"] == first
    assert orders[990003]["order_month"] == first and orders[990007]["order_month"] == first
    assert orders[990004]["order_month"] == newest and orders[990005]["order_month"] == newest
    assert orders[990008]["order_month"] == newest
    assert orders[990006]["order_month"] == newest.replace(day=1) or orders[990006]["order_month"] <= newest
    assert orders[990005]["order_date"] == date(9999, 12, 31), "9999-12-31 is stored as it is"
    for key in (990002, 990003, 990004, 990007, 990008):  # not storable: NULL + schema_fail
        assert orders[key]["order_date"] is None and orders[key]["data_quality_score"] <= 60, key
    assert orders[990010]["updated_at"] is None and orders[990011]["total_amount"] is None
    assert orders[990012]["status"] == "a\x1fb"
    products = b.read("products").filter(pl.col("product_id") >= 990001).sort("product_id").to_dicts()
    assert products[0]["unit_price"] is None and products[0]["data_quality_score"] == 60
    assert products[1]["product_name"] == "Ünïcödé ✓ 𝄞" and products[1]["category"] == "\\N"
    quarantine = pl.from_arrow(DeltaTable(str(b.root / QUARANTINE_TABLE)).to_pyarrow_table())
    assert isinstance(quarantine, pl.DataFrame)
    records = [json.loads(r) | {"table": t, "reason": why} for t, r, why in
               quarantine.select("table_name", "record", "reason").iter_rows()]
    nan = [r for r in records if r["table"] == "products"]
    assert nan == [{"product_id": 990001, "unit_price": "NaN", "table": "products",
                    "reason": nan[0]["reason"]}]
    assert "unit_price" in nan[0]["reason"]
    raw = {r["order_id"]: r for r in records if r["table"] == "orders"}
    assert raw[990004]["order_date"] == "infinity" and raw[990002]["order_date"] == "0044-03-15 BC"
    assert raw[990011]["total_amount"] == "NaN" and raw[990010]["updated_at"] == "infinity"


def test_a_v1_table_is_rehashed_once_without_touching_anything_else(seeded: str, tmp_path: Path) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    b.load_direct("products")
    v2 = rewrite_as_v1(b, "products", "product_id")
    query(seeded, "UPDATE tests.products SET product_name = 'changed' WHERE product_id = 3")
    result = b.load_direct("products")
    assert result.rehashed_v1 == v2.height - 1 and result.updated == 1
    after = b.read("products").sort("product_id")
    assert active_hashes(after, "product_id") == source_hashes(seeded, "products")
    same = after.filter(pl.col("product_id") != 3).drop("record_hash")
    assert same.equals(v2.sort("product_id").filter(pl.col("product_id") != 3).drop("record_hash"))
    (entry,) = [h for h in b.table("products").history(1)]
    assert entry[REHASHED_KEY] == str(v2.height - 1)
    assert not b.load_direct("products").committed, "once: the next load changes nothing"


def test_a_scheduled_tick_reads_only_the_changes_and_a_manual_run_re_reads(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", TODAY.isoformat())  # go-live day: the open day is the snapshot
    monkeypatch.setenv("BRONZE_CDC", "off")  # the watermark pattern (test_cdc covers the log-based one)
    b = Bronze(seeded, tmp_path / "bronze")
    repo = dg.Definitions(assets=list(b.assets.values()), resources=b.resources, schedules=[
        build_schedule(g) for g in load_groups() if g.name == "bronze_hourly_by_day"]).get_repository_def()
    (schedule,) = repo.schedule_defs
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime.now(UTC), repository_def=repo)
    (request,) = schedule.evaluate_tick(ctx).run_requests
    assert request.partition_key == TODAY.isoformat() and reads_changes_only(request.tags)

    (count,) = query(seeded, "SELECT count(*) FROM tests.inventory")[0]
    first = b.materialize("inventory", TODAY.isoformat(), tags=request.tags)
    assert first["rows_read"] == count, "no watermark yet: the scheduled run loads the snapshot"
    query(seeded, "UPDATE tests.inventory SET quantity_available = 5, updated_at = now() "
                  "WHERE inventory_id IN (3, 5)")
    query(seeded, "DELETE FROM tests.inventory WHERE inventory_id = 4")
    tick = b.materialize("inventory", TODAY.isoformat(), tags=request.tags)
    assert (tick["rows_read"], tick["rows_updated"], tick["rows_soft_deleted"]) == (2, 2, 1)
    assert "changes only" in tick["window"]
    assert active_hashes(b.read("inventory"), "inventory_id") == source_hashes(seeded, "inventory")

    query(seeded, "DELETE FROM tests.inventory WHERE inventory_id = 6")
    manual = b.materialize("inventory", TODAY.isoformat())  # a manual run re-reads its partition,
    assert (manual["rows_read"], manual["rows_updated"]) == (count - 2, 0)  # its rows are the key set
    assert manual["rows_soft_deleted"] == 1
    backfill = b.materialize("inventory", TODAY.isoformat(), tags={**request.tags, "dagster/backfill": "b1"})
    assert backfill["rows_read"] == count - 2
    assert active_hashes(b.read("inventory"), "inventory_id") == source_hashes(seeded, "inventory")


@pytest.mark.parametrize("shuffled", [False, True])
def test_a_snapshot_is_written_in_key_order_whatever_the_heap_order(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shuffled: bool) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", TODAY.isoformat())
    monkeypatch.setenv("BRONZE_COMMIT_CHUNK_ROWS", "700")  # several commits
    monkeypatch.setenv("BRONZE_EXTRACT_PARALLELISM", "2")
    monkeypatch.setattr(extract, "MIN_BLOCKS_PER_PART", 1)  # two block ranges even for a small heap
    if shuffled:  # updated rows move to the end of the heap: the read is no longer in key order,
        # and every commit of rows in staged order would span the whole key range
        query(seeded, "UPDATE tests.order_details SET updated_at = updated_at WHERE order_detail_id % 2 = 0")
    b = Bronze(seeded, tmp_path / "bronze")
    b.materialize("order_details", TODAY.isoformat())
    files = b.table("order_details").file_uris()
    keys = [pq.read_table(uri, columns=["order_detail_id"]).column(0) for uri in files]
    spans = sorted((int(pc.min(k).as_py()), int(pc.max(k).as_py())) for k in keys)
    assert len(spans) > 1
    # delta-rs interleaves a few input batches while it writes, so neighbouring files may share
    # a little of their range; a file never spans the table (as an unsorted heap tail would)
    for i, (lo, hi) in enumerate(spans):
        overlapping = [j for j, (a, z) in enumerate(spans) if j != i and a <= hi and lo <= z]
        assert all(abs(j - i) == 1 for j in overlapping), (spans[i], [spans[j] for j in overlapping])
    assert active_hashes(b.read("order_details"), "order_detail_id") == source_hashes(seeded, "order_details")


def test_a_shuffled_new_table_with_pii_lands_whole_in_key_ranged_commits(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A heap out of key order is written in commits of disjoint key ranges, each chunk's data
    subjects keyed before its rows are encrypted: every row lands once, decryptable."""
    from bronze_assets.lib.governance import decrypt_table

    monkeypatch.setenv("BRONZE_COMMIT_CHUNK_ROWS", "90")
    query(seeded, "UPDATE tests.customers SET updated_at = updated_at WHERE customer_id % 3 <> 0")
    b = Bronze(seeded, tmp_path / "bronze")
    staged = extract_and_stage(CONTRACTS["customers"], seeded, b.storage())
    commits: list[CommitInfo] = []
    try:
        result = BronzeMerger(CONTRACTS["customers"], b.storage()).merge(staged, on_commit=commits.append)
    finally:
        staged.cleanup()
    (rows,) = query(seeded, "SELECT count(*) FROM tests.customers")[0]
    assert result.commits == -(-rows // 90) > 2
    uri = b.table("customers").table_uri
    landed = [DeltaTable(uri, version=c.delta_version).to_pyarrow_dataset().count_rows()
              for c in commits]  # bz_checkpoints' rows_committed: the rows committed so far
    assert [c.rows_committed for c in commits] == landed and landed[-1] == rows
    spans = sorted((int(pc.min(k).as_py()), int(pc.max(k).as_py())) for k in (
        pq.read_table(uri, columns=["customer_id"]).column(0) for uri in b.table("customers").file_uris()))
    assert all(prev[1] < nxt[0] for prev, nxt in itertools.pairwise(spans)), spans
    assert active_hashes(b.read("customers"), "customer_id") == source_hashes(seeded, "customers")
    plain = pl.from_arrow(decrypt_table(b.table("customers").to_pyarrow_table(), CONTRACTS["customers"],
                                        b.storage()))
    assert isinstance(plain, pl.DataFrame)
    source = dict(((k, (n, e)) for k, n, e in query(
        seeded, "SELECT customer_id, customer_name, email FROM tests.customers")))
    assert dict(zip(plain["customer_id"], zip(plain["customer_name"], plain["email"], strict=True),
                    strict=True)) == source


def test_after_a_restore_the_next_scheduled_run_re_reads_every_change_since_the_restored_version(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", TODAY.isoformat())
    b = Bronze(seeded, tmp_path / "bronze")
    scheduled = {CHANGES_ONLY_TAG: "true"}
    b.materialize("inventory", TODAY.isoformat(), tags=scheduled)
    restored_to, first = b.table("inventory").version(), CommitLog.read(b.table("inventory")).watermark()
    query(seeded, "UPDATE tests.inventory SET quantity_available = 11, updated_at = now() "
                  "WHERE inventory_id = 3")
    b.materialize("inventory", TODAY.isoformat(), tags=scheduled)  # records a newer watermark
    restore(b.root, CONTRACTS["inventory"], version=restored_to)
    assert CommitLog.read(b.table("inventory")).watermark() == first, "the watermark of the restored version"
    tick = b.materialize("inventory", TODAY.isoformat(), tags=scheduled)
    assert tick["rows_updated"] == 1, "the change the restore undid is read again"
    assert active_hashes(b.read("inventory"), "inventory_id") == source_hashes(seeded, "inventory")
