"""Maintenance on real Delta tables: Z-ORDER/compaction, VACUUM retention, storage growth."""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from bronze_assets.contracts import CONTRACTS, Contract
from bronze_assets.contracts.arrow import source_schema
from bronze_assets.lib.delta import control
from bronze_assets.lib.delta.maintenance import maintain_table, storage_growth
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.settings import Settings
from bronze_assets_tests.conftest import SeedDb

LOAD_DATES = [date(2026, 10, 29), date(2026, 10, 30), date(2026, 10, 31)]


def _rows(contract: Contract, ids: list[int], rng: random.Random) -> pa.Table:
    """Source-typed rows of ``contract`` for primary keys ``ids`` (+ load_date if partitioned)."""
    schema = source_schema(contract)
    cols: dict[str, list] = {}
    for f in schema:
        if f.name == contract.primary_key[0]:
            cols[f.name] = ids
        elif pa.types.is_integer(f.type):
            cols[f.name] = [rng.randint(1, 500) for _ in ids]
        elif pa.types.is_decimal(f.type):
            cols[f.name] = [Decimal(rng.randint(100, 99_999)) / 100 for _ in ids]
        elif pa.types.is_date(f.type):
            cols[f.name] = [date(2026, 10, rng.randint(1, 28)) for _ in ids]
        elif pa.types.is_timestamp(f.type):
            cols[f.name] = [datetime(2026, 10, 31, 12, tzinfo=UTC) for _ in ids]
        else:
            cols[f.name] = [f"{f.name}-{i}" for i in ids]
    table = pa.Table.from_pydict(cols, schema=schema)
    part = contract.partitioning.delta_column
    if part:
        table = table.append_column(part, pa.array([LOAD_DATES[i % 3] for i in ids], pa.date32()))
    return table


def _write_in_commits(uri: str, contract: Contract, commits: int, per_commit: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    ids = list(range(1, commits * per_commit + 1))
    rng.shuffle(ids)
    part = contract.partitioning.delta_column
    for i in range(commits):
        chunk = ids[i * per_commit : (i + 1) * per_commit]
        partition_by = [part] if part else None
        write_deltalake(uri, _rows(contract, chunk, rng), mode="append", partition_by=partition_by)


def _sorted_rows(uri: str, key: str) -> list[dict]:
    return DeltaTable(uri).to_pyarrow_table().sort_by(key).to_pylist()


def test_zorder_compacts_partitioned_table_and_keeps_rows(tmp_path: Path) -> None:
    contract = CONTRACTS["inventory"]
    uri = str(tmp_path / contract.bronze_table)
    _write_in_commits(uri, contract, commits=12, per_commit=30)
    before_rows = _sorted_rows(uri, "inventory_id")
    before_files = DeltaTable(uri).file_uris()
    assert len(before_files) == 36  # 12 commits x 3 load_date partitions

    report = maintain_table(tmp_path, contract.bronze_table, contract)

    assert report.zorder_columns == ["product_id", "warehouse_id"] == list(contract.zorder_columns)
    assert report.partition_column == "load_date"
    assert (report.files_before, report.files_after_optimize) == (36, 3)
    assert report.partitions_optimized == 3
    assert report.bytes_before > 0 and report.bytes_after_optimize > 0
    assert report.version_after == report.version_before + 1  # one OPTIMIZE commit, vacuum removed nothing
    assert _sorted_rows(uri, "inventory_id") == before_rows
    # every file OPTIMIZE replaced is younger than 168 h: VACUUM must leave it on disk
    assert report.files_removed_by_vacuum == 0
    assert all(Path(f).exists() for f in before_files)
    assert report.storage_files_before == 36
    assert report.storage_files_after_vacuum == 39
    assert report.storage_bytes_after_vacuum > report.storage_bytes_before
    meta = report.as_metadata()
    assert meta["files_after_optimize"] == 3 and "vacuumed_files" not in meta


def test_zorder_uses_contract_columns(tmp_path: Path) -> None:
    # a z-order on a single column is a sort on it: the file must come out ordered by product_id
    contract = CONTRACTS["products"]
    uri = str(tmp_path / contract.bronze_table)
    _write_in_commits(uri, contract, commits=8, per_commit=50)
    dt = DeltaTable(uri)
    first = pq.read_table(dt.file_uris()[0])["product_id"].to_pylist()
    assert first != sorted(first)

    report = maintain_table(tmp_path, contract.bronze_table, contract)

    assert report.zorder_columns == ["product_id"]
    assert report.files_after_optimize == 1
    (path,) = DeltaTable(uri).file_uris()
    ids = pq.read_table(path)["product_id"].to_pylist()
    assert ids == sorted(ids) == list(range(1, 401))
    metadata = pq.ParquetFile(path).metadata  # written with the table's own settings: its codec
    codecs = {metadata.row_group(0).column(i).compression for i in range(metadata.num_columns)}
    assert codecs == {"UNCOMPRESSED"}, codecs


def test_second_run_commits_nothing(tmp_path: Path) -> None:
    contract = CONTRACTS["inventory"]
    uri = str(tmp_path / contract.bronze_table)
    _write_in_commits(uri, contract, commits=4, per_commit=30)
    first = maintain_table(tmp_path, contract.bronze_table, contract)
    second = maintain_table(tmp_path, contract.bronze_table, contract)
    assert second.version_after == second.version_before == first.version_after
    assert second.partitions_optimized == 0
    assert second.files_after_optimize == second.files_before == 3

    # new data in one partition makes only that partition dirty
    write_deltalake(uri, _rows(contract, [1000, 1003, 1006], random.Random(1)), mode="append",
                    partition_by=["load_date"])
    third = maintain_table(tmp_path, contract.bronze_table, contract)
    assert third.files_before == 4 and third.files_after_optimize == 3
    assert third.partitions_optimized == 1


def test_vacuum_removes_only_files_older_than_retention(tmp_path: Path) -> None:
    contract = CONTRACTS["products"]
    uri = str(tmp_path / contract.bronze_table)
    _write_in_commits(uri, contract, commits=3, per_commit=20)
    template = Path(DeltaTable(uri).file_uris()[0])
    stale = Path(uri) / "part-orphan-stale.parquet"  # e.g. left behind by a killed write
    fresh = Path(uri) / "part-orphan-fresh.parquet"  # could be a write in flight right now
    for orphan in (stale, fresh):
        orphan.write_bytes(template.read_bytes())
    eight_days_ago = time.time() - 8 * 24 * 3600
    os.utime(stale, (eight_days_ago, eight_days_ago))
    replaced = DeltaTable(uri).file_uris()

    report = maintain_table(tmp_path, contract.bronze_table, contract)

    assert report.vacuumed_files == [stale.name]
    assert not stale.exists()
    assert fresh.exists()
    assert all(Path(f).exists() for f in replaced)


def test_retention_below_table_minimum_is_refused_before_optimizing(tmp_path: Path) -> None:
    contract = CONTRACTS["products"]
    uri = str(tmp_path / contract.bronze_table)
    _write_in_commits(uri, contract, commits=3, per_commit=10)
    version = DeltaTable(uri).version()
    with pytest.raises(Exception, match="retention"):
        maintain_table(tmp_path, contract.bronze_table, contract, retention_hours=1)
    assert DeltaTable(uri).version() == version


def test_control_table_compaction_without_contract(tmp_path: Path) -> None:
    root = str(tmp_path)
    for i in range(5):
        control.append_rows(root, control.AUDIT_LOG, [{"table_name": "bz_products", "operation_type": "LOAD",
                                                       "records_affected": i, "status": "SUCCESS"}])
    report = maintain_table(root, control.AUDIT_LOG, zorder_columns=[])
    assert report.table == control.AUDIT_LOG and report.zorder_columns == []
    assert (report.files_before, report.files_after_optimize) == (5, 1)
    affected = control.read_table(root, control.AUDIT_LOG)["records_affected"].to_pylist()
    assert sorted(affected) == [0, 1, 2, 3, 4]


def test_storage_growth_against_snapshot_a_window_ago(tmp_path: Path) -> None:
    contract = CONTRACTS["products"]
    root = str(tmp_path)
    uri = f"{root}/{contract.bronze_table}"
    rng = random.Random(3)
    write_deltalake(uri, _rows(contract, list(range(1, 101)), rng))
    between = datetime.now(UTC)
    time.sleep(0.05)
    write_deltalake(uri, _rows(contract, list(range(101, 301)), rng), mode="append")
    v0_bytes = DeltaTable(uri, version=0).get_add_actions(flatten=True).column("size_bytes").to_pylist()[0]

    growth = storage_growth(root, contract.bronze_table, now=between + timedelta(hours=24))

    assert (growth.version_before, growth.version_now) == (0, 1)
    assert growth.bytes_before == v0_bytes
    assert growth.bytes_now > growth.bytes_before
    assert growth.ratio == pytest.approx(growth.bytes_now / v0_bytes)
    assert growth.growth == pytest.approx(growth.ratio - 1)
    assert growth.files_now == 2 and growth.window_hours == 24

    young = storage_growth(root, contract.bronze_table)  # the table is minutes old: nothing to compare
    assert young.bytes_before is None and young.ratio is None and young.growth is None
    assert young.bytes_now == growth.bytes_now


@pytest.mark.integration
def test_maintenance_on_a_real_bronze_table_keeps_merge_semantics(seed_db: SeedDb, tmp_path: Path) -> None:
    from bronze_assets.demo.generator import SeedOptions
    from bronze_assets_tests.bronze_helpers import Bronze
    from bronze_assets_tests.conftest import AS_OF, query

    fresh_dsn = seed_db(SeedOptions(scale=0.01, defect_rate=0.0, as_of=AS_OF))
    bronze = Bronze(fresh_dsn, tmp_path / "bronze")
    bronze.load_direct("products")
    for i in range(3):  # new keys: each load adds files
        query(fresh_dsn, f"INSERT INTO tests.products VALUES ({200_000 + i}, 'Item {i}', 'Tools', 1.50, "
                         f"'TLS-{200_000 + i}', now())")
        bronze.load_direct("products")
    files_before = len(bronze.table("products").file_uris())
    before = bronze.read("products").sort("product_id")
    assert files_before > 1

    report = maintain_table(bronze.root, "bz_products", CONTRACTS["products"])

    assert report.files_before == files_before and report.files_after_optimize == 1
    assert bronze.read("products").sort("product_id").equals(before)
    version = bronze.version("products")
    unchanged = bronze.load_direct("products")  # hashes equal: a reload after OPTIMIZE commits nothing
    assert not unchanged.committed and bronze.version("products") == version
    query(fresh_dsn, "UPDATE tests.products SET unit_price = unit_price + 1, updated_at = now() "
                     "WHERE product_id = 5")
    assert bronze.load_direct("products").updated == 1


def test_optimize_of_a_cdc_table_keeps_its_small_files_whatever_the_table_says(
        seed_db: SeedDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CDC table is compacted to the contract's file size (each tick rewrites the files holding
    its changed keys), even when the table was created with another ``delta.targetFileSize``."""
    from bronze_assets.demo.generator import SeedOptions
    from bronze_assets_tests.bronze_helpers import Bronze
    from bronze_assets_tests.conftest import AS_OF

    fresh_dsn = seed_db(SeedOptions(scale=0.5, as_of=AS_OF))
    monkeypatch.setenv("BRONZE_COMMIT_CHUNK_ROWS", "2000")  # many small files to compact
    Bronze(fresh_dsn, tmp_path).load_direct("inventory")
    dt = DeltaTable(str(tmp_path / "bz_inventory"))
    dt.alter.set_table_properties({"delta.targetFileSize": str(32 * 2**20)})  # e.g. created elsewhere
    monkeypatch.setenv("BRONZE_CDC_TARGET_FILE_MB", "1")
    storage = Storage(str(tmp_path), settings=Settings.from_env())  # as the bronze resource reads it
    report = maintain_table(storage, "bz_inventory", CONTRACTS["inventory"], zorder_columns=[])
    sizes = pa.table(DeltaTable(str(tmp_path / "bz_inventory")).get_add_actions(flatten=True))["size_bytes"]
    assert report.files_before > report.files_after_optimize > 1
    assert sum(sizes.to_pylist()) > 1.5 * 2**20 and max(sizes.to_pylist()) <= 2**20  # 32 MiB: one file
