"""A data check answers from its kept outcome while the tables it reads stay at the same
Delta versions (no data read), and reads again once any of them has a new version: the child's or
a parent's (lib/quality/check_memo.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from bronze_assets.contracts import CONTRACTS
from bronze_assets.lib.quality.check_memo import MEMO_DIR
from bronze_assets.lib.quality.checks import key_uniqueness, referential_integrity
from bronze_assets_tests.bronze_helpers import Bronze

pytestmark = pytest.mark.integration


def _hide_data(uri: str) -> list[Path]:
    """Move the table's data files away: a check that reads them fails."""
    moved = []
    for path in Path(uri).rglob("*.parquet"):
        if "_delta_log" not in path.parts:
            path.rename(path.with_suffix(".hidden"))
            moved.append(path)
    assert moved
    return moved


def test_a_passing_check_is_not_read_again_at_the_same_versions(seeded: str, tmp_path: Path) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    b.load_direct("products")
    b.load_direct("suppliers")
    storage = b.storage()
    products, suppliers = CONTRACTS["products"], CONTRACTS["suppliers"]
    first = key_uniqueness(products, storage)
    assert first.passed and first.metadata["rows"] > 0
    assert referential_integrity(suppliers, storage).passed
    assert (tmp_path / "bronze" / MEMO_DIR / "bz_products.key_uniqueness.json").exists()

    hidden = _hide_data(b.uri("products")) + _hide_data(b.uri("suppliers"))
    assert key_uniqueness(products, storage) == first  # the kept outcome: no data file read
    assert referential_integrity(suppliers, storage).passed
    for path in hidden:
        path.with_suffix(".hidden").rename(path)

    # a new version of the table: read again (a duplicate key fails; kept too, samples and all)
    one = b.table("products").to_pyarrow_table().slice(0, 1)
    write_deltalake(b.uri("products"), one, mode="append")
    again = key_uniqueness(products, storage)
    assert not again.passed and again.metadata["duplicate_rows"] == 2
    hidden = _hide_data(b.uri("products"))
    assert key_uniqueness(products, storage) == again
    for path in hidden:
        path.with_suffix(".hidden").rename(path)

    # a new version of the parent only: the child's check reads again (an orphan now)
    orphaned = pa.table(DeltaTable(b.uri("suppliers")).to_pyarrow_table()).column("product_id")[0].as_py()
    DeltaTable(b.uri("products")).update(predicate=f"product_id = {orphaned}",
                                         updates={"record_status": "'DELETED'"})
    outcome = referential_integrity(suppliers, storage)
    assert not outcome.passed and outcome.metadata["orphans product_id -> products.product_id"] >= 1
