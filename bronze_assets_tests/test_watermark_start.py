"""ARCHITECTURE §2.4: a table's watermark starts with its first run that reaches the open partition,
whatever else that run covers or has covered. A table loaded month by month in separate runs, or only
partly backfilled, stays exactly as fresh as one loaded in one ranged run, and a partition never
loaded is not shown as loaded because one of its rows changed."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from bronze_assets.defs.schedules import CHANGES_ONLY_TAG
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets_tests.bronze_helpers import Bronze, active_hashes, source_hashes
from bronze_assets_tests.conftest import AS_OF, query

pytestmark = pytest.mark.integration

TODAY = datetime.now(UTC).date()
OPEN_MONTH = TODAY.replace(day=1)
OLD_MONTH = (AS_OF - timedelta(days=400)).date().replace(day=1)
NEVER_MONTH = (AS_OF - timedelta(days=200)).date().replace(day=1)
SCHEDULED = {CHANGES_ONLY_TAG: "true"}


def watermark_of(dt: DeltaTable | None) -> datetime | None:
    return CommitLog.read(dt).watermark()


def _run(b: Bronze, instance: dg.DagsterInstance, table: str, partition: date,
         tags: dict[str, str] | None = None) -> dict[str, dict]:
    """One Dagster run of ``partition`` on a persistent instance; its materializations by partition."""
    result = dg.materialize([b.assets[f"bz_{table}"]], resources=b.resources, instance=instance,
                            partition_key=partition.isoformat(), tags=tags)
    assert result.success
    return {e.partition: {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def _key_in_month(dsn: str, table: str, key: str, date_column: str, month: date, offset: int = 0) -> int:
    (value,) = query(dsn, f"SELECT {key} FROM tests.{table} WHERE {date_column} >= DATE '{month}' "
                          f"AND {date_column} < DATE '{month}' + interval '1 month' "
                          f"ORDER BY {key} OFFSET {offset} LIMIT 1")[0]
    return int(value)


def _loaded_rows_exact(b: Bronze, dsn: str, table: str, key: str, months: set[date]) -> None:
    """Bronze equals the source for every row of the loaded months."""
    month_col = {"orders": "order_month", "shipments": "shipment_month"}[table]
    frame = b.read(table).filter(pl.col(month_col).is_in(sorted(months)))
    date_col = {"orders": "order_date", "shipments": "shipment_date"}[table]
    listed = ", ".join(f"DATE '{m}'" for m in sorted(months))
    expected = source_hashes(dsn, table, f"date_trunc('month', {date_col})::date IN ({listed})")
    assert active_hashes(frame, key) == expected


@pytest.mark.parametrize(("table", "key", "date_column"), [
    ("shipments", "shipment_id", "shipment_date"),
    ("orders", "order_id", "order_date"),
])
def test_a_table_loaded_month_by_month_gets_every_later_change_by_the_next_open_month_run(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, key: str,
        date_column: str) -> None:
    monkeypatch.setenv("BRONZE_CDC", "off")  # the watermark pattern (CDC has its own stream)
    b, instance = Bronze(seeded, tmp_path / "bronze"), dg.DagsterInstance.ephemeral()
    first = _key_in_month(seeded, table, key, date_column, OLD_MONTH)
    second = _key_in_month(seeded, table, key, date_column, OLD_MONTH, offset=1)
    never = _key_in_month(seeded, table, key, date_column, NEVER_MONTH)

    _run(b, instance, table, OLD_MONTH)
    # changed between the old month's own run and the first run of the open month
    query(seeded, f"UPDATE tests.{table} SET status = 'CANCELLED', updated_at = now() WHERE {key} = {first}")
    query(seeded, f"UPDATE tests.{table} SET status = 'PENDING', updated_at = now() WHERE {key} = {never}")
    events = _run(b, instance, table, OPEN_MONTH)
    assert watermark_of(b.table(table)) is not None, "the open month's first run starts the watermark"
    assert set(events) == {OLD_MONTH.isoformat(), OPEN_MONTH.isoformat()}, \
        "the never-loaded month is not reported, the old month is"
    assert NEVER_MONTH.isoformat() not in instance.get_materialized_partitions(dg.AssetKey(f"bz_{table}"))

    # changed after: a manual run of the open month, then a scheduled tick (changes only)
    query(seeded, f"UPDATE tests.{table} SET status = 'DELIVERED', updated_at = now() WHERE {key} = {first}")
    _run(b, instance, table, OPEN_MONTH)
    query(seeded, f"UPDATE tests.{table} SET status = 'PENDING', updated_at = now() WHERE {key} = {second}")
    tick = _run(b, instance, table, OPEN_MONTH, SCHEDULED)
    assert tick[OPEN_MONTH.isoformat()]["rows_read"] <= 3, "a scheduled tick reads only the changes"

    rows = {r[key]: r["status"] for r in b.read(table).filter(pl.col(key).is_in([first, second])).to_dicts()}
    assert rows == {first: "DELIVERED", second: "PENDING"}
    _loaded_rows_exact(b, seeded, table, key, {OLD_MONTH, OPEN_MONTH})
    assert NEVER_MONTH.isoformat() not in instance.get_materialized_partitions(dg.AssetKey(f"bz_{table}"))


def test_the_open_month_loaded_first_then_an_old_month_backfilled_stays_fresh(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_CDC", "off")
    b, instance = Bronze(seeded, tmp_path / "bronze"), dg.DagsterInstance.ephemeral()
    _run(b, instance, "shipments", OPEN_MONTH)
    watermark = watermark_of(b.table("shipments"))
    assert watermark is not None
    _run(b, instance, "shipments", OLD_MONTH)
    assert watermark_of(b.table("shipments")) == watermark, "a backfill leaves the watermark alone"
    shipment = _key_in_month(seeded, "shipments", "shipment_id", "shipment_date", OLD_MONTH)
    query(seeded, f"UPDATE tests.shipments SET carrier = 'Late Carrier', updated_at = now() "
                  f"WHERE shipment_id = {shipment}")
    events = _run(b, instance, "shipments", OPEN_MONTH, SCHEDULED)
    assert set(events) == {OLD_MONTH.isoformat(), OPEN_MONTH.isoformat()}
    (row,) = b.read("shipments").filter(pl.col("shipment_id") == shipment).to_dicts()
    assert row["carrier"] == "Late Carrier" and row["shipment_month"] == OLD_MONTH
    _loaded_rows_exact(b, seeded, "shipments", "shipment_id", {OLD_MONTH, OPEN_MONTH})


def test_a_partly_backfilled_daily_table_gets_a_watermark_and_every_later_change(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start, backfilled = TODAY - timedelta(days=5), TODAY - timedelta(days=3)
    monkeypatch.setenv("BRONZE_START_DATE", start.isoformat())
    b, instance = Bronze(seeded, tmp_path / "bronze"), dg.DagsterInstance.ephemeral()
    noon = datetime.combine(backfilled, datetime.min.time(), UTC) + timedelta(hours=12)
    query(seeded, f"UPDATE tests.returns SET updated_at = TIMESTAMPTZ '{noon.isoformat()}' "
                  "WHERE return_id IN (1, 2, 3)")
    _run(b, instance, "returns", backfilled)  # a partial backfill: one day, not the snapshot
    assert watermark_of(b.table("returns")) is None, "a backfill of an old day starts no watermark"
    query(seeded, "UPDATE tests.returns SET return_reason = 'changed before', updated_at = now() "
                  "WHERE return_id = 1")
    events = _run(b, instance, "returns", TODAY)
    assert set(events) == {backfilled.isoformat(), TODAY.isoformat()}
    assert watermark_of(b.table("returns")) is not None, "the first run of the open day starts it"

    query(seeded, "UPDATE tests.returns SET return_reason = 'changed after', updated_at = now() "
                  "WHERE return_id IN (2, 3)")
    query(seeded, "DELETE FROM tests.returns WHERE return_id = 1")
    tick = _run(b, instance, "returns", TODAY, SCHEDULED)
    assert tick[TODAY.isoformat()]["rows_read"] == 2, "a scheduled tick reads only the changes"
    rows = {r["return_id"]: r for r in b.read("returns").filter(pl.col("return_id") <= 3).to_dicts()}
    assert rows[1]["record_status"] == "DELETED"
    assert {rows[k]["return_reason"] for k in (2, 3)} == {"changed after"}
    assert {rows[k]["load_date"] for k in (1, 2, 3)} == {backfilled}, "changes merge where the key lives"
    materialized = instance.get_materialized_partitions(dg.AssetKey("bz_returns"))
    assert start.isoformat() not in materialized, "the snapshot partition was never loaded"
    assert materialized == {backfilled.isoformat(), TODAY.isoformat()}
