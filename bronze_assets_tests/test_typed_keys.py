"""Primary keys of any PostgreSQL type (uuid, text, numeric, timestamptz, composite text + integer):
an incremental (watermark) load of a user's table sweeps its keys in their own types, so a second
run updates changed rows, soft-deletes vanished keys and never duplicates a row."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from bronze_assets.contracts import Cadence, Contract, LoadPattern, Partitioning
from bronze_assets.lib.delta.merge_result import MergeResult
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.delta.query import read_snapshot
from bronze_assets.lib.load import extract_and_stage
from bronze_assets.lib.source.introspect import discover_contract
from bronze_assets_tests.bronze_helpers import env_storage
from bronze_assets_tests.conftest import query

T1, T2 = datetime(2026, 11, 26, 10, tzinfo=UTC), datetime(2026, 11, 27, 11, tzinfo=UTC)

# key columns (DDL), the five initial keys (SQL literals), the key updated, the key deleted, a new key
KEYS = {
    "uuid": ("k uuid", [f"'00000000-0000-0000-0000-00000000000{i}'" for i in range(1, 6)]),
    "text": ("k text", ["'a'", "'b'", "'C d'", "'é'", "'10'"]),
    "numeric": ("k numeric(12,3)", ["1.5", "2.25", "-3", "100000.001", "7"]),
    "date": ("k date", [f"'2026-01-0{i}'" for i in range(1, 6)]),
    "timestamptz": ("k timestamptz", [f"'2026-01-0{i} 12:00+02'" for i in range(1, 6)]),
    "text_integer": ("k text, n integer", ["'x', 1", "'x', 2", "'y', 1", "'y', 2", "'z', 1"]),
}
NEW = {"uuid": "'ffffffff-0000-0000-0000-000000000001'", "text": "'new'", "numeric": "0.001",
       "date": "'0044-03-15'", "timestamptz": "'2027-01-01 00:00+00'", "text_integer": "'x', 3"}


def create(dsn: str, kind: str) -> list[str]:
    """A table ``tests.keyed`` keyed by ``kind`` with an updated_at watermark; its key columns."""
    columns, keys = KEYS[kind]
    names = [c.split()[0] for c in columns.split(", ")]
    query(dsn, "CREATE SCHEMA IF NOT EXISTS tests")
    query(dsn, f"CREATE TABLE tests.keyed ({columns}, v text, updated_at timestamptz NOT NULL, "
               f"PRIMARY KEY ({', '.join(names)}))")
    for i, key in enumerate(keys):
        query(dsn, f"INSERT INTO tests.keyed VALUES ({key}, 'v{i}', '2026-11-26 09:00+00')")
    return names


def change(dsn: str, kind: str, names: list[str]) -> None:
    """Update the first key's row, delete the second's, insert a new key."""
    keys = KEYS[kind][1]

    def where(key: str) -> str:
        return " AND ".join(f"{n} = {v}" for n, v in zip(names, key.split(", ") if len(names) > 1
                                                           else [key], strict=True))
    query(dsn, f"UPDATE tests.keyed SET v = 'changed', updated_at = '2026-11-27 10:30+00' "
               f"WHERE {where(keys[0])}")
    query(dsn, f"DELETE FROM tests.keyed WHERE {where(keys[1])}")
    query(dsn, f"INSERT INTO tests.keyed VALUES ({NEW[kind]}, 'new', '2026-11-27 10:30+00')")


def load(contract: Contract, dsn: str, root: Path, at: datetime, swept: bool) -> MergeResult:
    """A scheduled run of ``at``'s daily partition (the first: the go-live day's initial snapshot)."""
    staged = extract_and_stage(contract, dsn, root, batch_time=at, partition=day_of(at), changes_only=swept)
    assert (staged.source_keys_path is not None) == swept  # the second run sweeps the keys
    try:
        return BronzeMerger(contract, root).merge(staged)
    finally:
        staged.cleanup()


def source_rows(dsn: str, names: list[str]) -> dict[str, str]:
    keys = " || '|' || ".join(f"{n}::text" for n in names)
    return dict(query(dsn, f"SELECT {keys}, v FROM tests.keyed"))


def bronze_rows(root: Path, names: list[str], contract: Contract) -> dict[str, dict[str, str]]:
    """Bronze's rows by status, keyed as PostgreSQL prints the key (one row per key asserted)."""
    table = read_snapshot(DeltaTable(str(root / contract.bronze_table)))  # Spark's: deletion vectors
    out: dict[str, dict[str, str]] = {"ACTIVE": {}, "DELETED": {}}
    printed = [pg_text(table.column(n)) for n in names]
    seen = set()
    for i, row in enumerate(table.select(["v", "record_status"]).to_pylist()):
        key = "|".join(p[i] for p in printed)
        assert key not in seen, f"duplicate key {key}"
        seen.add(key)
        out[row["record_status"]][key] = row["v"]
    return out


def pg_text(column: pa.ChunkedArray) -> list[str]:
    """A bronze key column as PostgreSQL's text of the value (the test session's time zone is UTC)."""
    values = column.to_pylist()
    if pa.types.is_timestamp(column.type):
        return [v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00") for v in values]
    return [str(v) for v in values]


Load = Callable[[Contract, str, Path, datetime, bool], MergeResult]  # (…, at, swept): a scheduled run


def day_of(at: datetime) -> tuple[datetime, datetime]:
    """The daily partition of ``at``."""
    day = at.replace(hour=0)
    return day, day + timedelta(days=1)


def keyed_contract(dsn: str) -> Contract:
    """``tests.keyed`` as `bronze init` declares a table with updated_at and more rows than
    --incremental-rows."""
    return dataclasses.replace(
        discover_contract(dsn, "keyed", "tests", load_pattern=LoadPattern.INCREMENTAL,
                          cadence=Cadence.HOURLY),
        partitioning=Partitioning.daily_load_date())


def check_incremental(kind: str, dsn: str, root: Path, load: Load) -> None:
    """Initial load, then update/delete/insert in the source, then the next day's run: bronze holds
    exactly the source (one row per key), the deleted key soft-deleted."""
    names = create(dsn, kind)
    contract = keyed_contract(dsn)
    assert contract.primary_key == tuple(names)
    assert load(contract, dsn, root, T1, False).inserted == 5
    change(dsn, kind, names)
    second = load(contract, dsn, root, T2, True)
    assert (second.inserted, second.updated, second.soft_deleted) == (1, 1, 1)
    rows = bronze_rows(root, names, contract)
    assert rows["ACTIVE"] == source_rows(dsn, names)
    assert len(rows["DELETED"]) == 1 and rows["DELETED"].keys().isdisjoint(rows["ACTIVE"])


@pytest.mark.parametrize("kind", list(KEYS))
def test_an_incremental_load_of_a_table_keyed_by(kind: str, fresh_dsn: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", T1.date().isoformat())
    check_incremental(kind, fresh_dsn, tmp_path / "bronze", load)


@pytest.mark.integration
@pytest.mark.xdist_group("spark")
@pytest.mark.parametrize("kind", ["uuid", "text_integer"])
def test_spark_loads_a_table_keyed_by(kind: str, fresh_dsn: str, tmp_path: Path, spark,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from bronze_assets.lib.spark.load import SparkLoader

    monkeypatch.setenv("BRONZE_START_DATE", T1.date().isoformat())

    def on_spark(contract: Contract, dsn: str, root: Path, at: datetime, swept: bool) -> MergeResult:
        return SparkLoader(spark, env_storage(root)).load(contract, dsn, partition=day_of(at), batch_time=at,
                                                          changes_only=swept).merge

    check_incremental(kind, fresh_dsn, tmp_path / "bronze", on_spark)

@pytest.mark.integration
@pytest.mark.xdist_group("spark")
@pytest.mark.parametrize("kind", ["uuid", "text_integer"])
def test_spark_reads_a_table_keyed_by_it_over_several_connections(
        kind: str, fresh_dsn: str, tmp_path: Path, spark, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Spark engine splits the source read whatever the key (the heap's block ranges, as the
    local engine does): each JDBC read of the load has a partition per connection, and bronze
    holds every row once."""
    from bronze_assets.lib.source import extract
    from bronze_assets.lib.spark import jdbc
    from bronze_assets.lib.spark.load import SparkLoader

    monkeypatch.setenv("BRONZE_START_DATE", T1.date().isoformat())
    monkeypatch.setattr(extract, "MIN_BLOCKS_PER_PART", 1)  # a small table split too
    names = create(fresh_dsn, kind)
    key = "gen_random_uuid()" if kind == "uuid" else "'w' || (g % 7), g + 10"
    query(fresh_dsn, f"INSERT INTO tests.keyed SELECT {key}, repeat('x', 200), '2026-11-26 09:00+00' "
                     f"FROM generate_series(1, 2000) g")  # tens of heap blocks
    partitions: list[int] = []
    read = jdbc._read

    def counted(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        frame = read(*args, **kwargs)  # type: ignore[arg-type]
        partitions.append(frame.rdd.getNumPartitions())
        return frame

    monkeypatch.setattr(jdbc, "_read", counted)
    root = tmp_path / "bronze"
    contract = keyed_contract(fresh_dsn)
    result = SparkLoader(spark, env_storage(root), parallelism=2).load(
        contract, fresh_dsn, partition=day_of(T1), batch_time=T1).merge
    assert partitions and set(partitions) == {2}, partitions
    assert result.inserted == 2005
    rows = bronze_rows(root, names, contract)
    assert rows["ACTIVE"] == source_rows(fresh_dsn, names) and not rows["DELETED"]


def test_log_based_cdc_on_a_uuid_key_is_refused_naming_the_key_and_the_fix(fresh_dsn: str) -> None:
    """CDC re-reads changed rows by one integer key column: a uuid-keyed table is told to load by
    watermark instead (which the tests above show is exact)."""
    create(fresh_dsn, "uuid")
    contract = discover_contract(fresh_dsn, "keyed", "tests", load_pattern=LoadPattern.INCREMENTAL)
    with pytest.raises(ValueError, match=r"contract keyed: log-based CDC needs a single integer primary key "
                                         r"\(.*\); this table's is \(k uuid\): set cdc: false, it loads by "
                                         r"watermark on updated_at"):
        dataclasses.replace(contract, cdc=True)


@pytest.mark.parametrize("kind", ["uuid", "text_integer"])
def test_a_repair_names_non_integer_keys_and_soft_deletes_the_vanished_one(kind: str, fresh_dsn: str,
                                                                           tmp_path: Path) -> None:
    """Reconcile names the keys as text; the repair reads them back in the key columns' types and
    stages the key the source no longer has (read in those types too) as deleted."""
    from bronze_assets.lib.reconcile.model import TableReconciliation
    from bronze_assets.lib.reconcile.repair import repair_table
    from bronze_assets.lib.reconcile.run import reconcile_table
    from bronze_assets.lib.reconcile.source_side import SourceSnapshot

    names = create(fresh_dsn, kind)
    contract = discover_contract(fresh_dsn, "keyed", "tests")
    root = tmp_path / "bronze"
    staged = extract_and_stage(contract, fresh_dsn, root, batch_time=T1)
    try:
        BronzeMerger(contract, root).merge(staged)
    finally:
        staged.cleanup()
    keys = KEYS[kind][1]
    where = " AND ".join(f"{n} = {v}" for n, v in zip(names, keys[1].split(", "), strict=True))
    query(fresh_dsn, f"DELETE FROM tests.keyed WHERE {where}")  # behind bronze's back

    def reconcile() -> TableReconciliation:
        with SourceSnapshot(fresh_dsn) as snapshot:
            return reconcile_table(contract, snapshot, root)

    found = reconcile()
    assert len(found.mismatches) == 1
    done = repair_table(contract, found, fresh_dsn, root)
    assert (done["soft_deleted"], done["inserted"], done["updated"]) == (1, 0, 0)
    assert reconcile().healthy
    rows = bronze_rows(root, names, contract)
    assert rows["ACTIVE"] == source_rows(fresh_dsn, names) and len(rows["DELETED"]) == 1
