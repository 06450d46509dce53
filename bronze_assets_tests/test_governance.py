"""PII end to end: loads encrypt customers' name/email, role reads, GDPR erasure across versions."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from bronze_assets.contracts import CONTRACTS
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.demo.seed import seed_source
from bronze_assets.lib.delta.control import AUDIT_LOG, read_table
from bronze_assets.lib.governance.erasure import forget_subject
from bronze_assets.lib.governance.pii import decrypt_table
from bronze_assets.lib.governance.reader import read_table as read_as
from bronze_assets_tests.bronze_helpers import Bronze, active_hashes, source_hashes
from bronze_assets_tests.conftest import AS_OF, query

pytestmark = pytest.mark.integration
CUSTOMERS = CONTRACTS["customers"]


@pytest.fixture
def bronze(fresh_dsn: str, tmp_path: Path) -> Bronze:
    seed_source(fresh_dsn, SeedOptions(scale=0.01, as_of=AS_OF))
    return Bronze(fresh_dsn, tmp_path / "bronze")


def _plaintext(dsn: str, limit: int = 50) -> list[str]:
    rows = query(dsn, "SELECT customer_name, email FROM tests.customers WHERE customer_name IS NOT NULL "
                      "AND email IS NOT NULL AND length(customer_name) > 6 "
                      f"ORDER BY customer_id LIMIT {limit}")
    return [v for row in rows for v in row]


def test_loads_store_no_plaintext_pii_and_admins_read_it_back(bronze: Bronze) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([bronze.assets["bz_customers"]], resources=bronze.resources, instance=instance)
    assert result.success
    logs = "\n".join(str(e.message or "") + str(e.dagster_event) for e in instance.all_logs(result.run_id))
    query(bronze.dsn, "UPDATE tests.customers SET email = 'moved.' || email, updated_at = now() "
                      "WHERE customer_id % 4 = 0")
    assert bronze.materialize("customers")["rows_updated"] > 0
    secrets = _plaintext(bronze.dsn)
    data = [p.read_bytes() for p in Path(bronze.root).rglob("*") if p.is_file()]
    assert data, "the load wrote files"
    for value in secrets:
        assert all(value.encode() not in blob for blob in data), f"plaintext {value!r} in a bronze file"
        assert value not in logs, f"plaintext {value!r} in the run's logs"

    frame = bronze.read("customers")
    assert frame["email"].str.starts_with("enc:v1:").all()
    assert active_hashes(frame, "customer_id") == source_hashes(bronze.dsn, "customers"), \
        "record_hash is computed on plaintext"
    admin = pl.from_arrow(read_as("customers", "admin", root=str(bronze.root)))
    source = dict(query(bronze.dsn, "SELECT customer_id, email FROM tests.customers"))
    assert isinstance(admin, pl.DataFrame)
    assert dict(zip(admin["customer_id"], admin["email"], strict=True)) == source
    analyst = pl.from_arrow(read_as("customers", "analyst", root=str(bronze.root)))
    assert isinstance(analyst, pl.DataFrame)
    masked = analyst.join(admin.select("customer_id", pl.col("email").alias("clear")), on="customer_id")
    assert masked["email"].drop_nulls().str.contains("***", literal=True).all()
    assert masked.filter(pl.col("email") == pl.col("clear")).height == 0
    audit = read_table(str(bronze.root), AUDIT_LOG).to_pylist()
    reads = [a for a in audit if a["operation_type"] == "PII_READ"]
    assert len(reads) == 2


def test_forget_makes_the_customer_unrecoverable_in_every_version_and_reloads_keep_it(bronze: Bronze) -> None:
    bronze.materialize("customers")
    query(bronze.dsn, "UPDATE tests.customers SET customer_name = customer_name || ' Jr', updated_at = now() "
                      "WHERE customer_id IN (7, 8)")
    bronze.materialize("customers")
    uri, root = bronze.uri("customers"), str(bronze.root)
    versions = range(bronze.version("customers") + 1)
    result = forget_subject("customers", 7, root=root)
    assert result.rows_forgotten == 1

    for version in versions:  # time travel to every retained version
        old = DeltaTable(uri, version=version).to_pyarrow_table()
        clear = pl.from_arrow(decrypt_table(old, CUSTOMERS, root))
        assert isinstance(clear, pl.DataFrame)
        row7 = clear.filter(pl.col("customer_id") == 7)
        assert row7["customer_name"].to_list() == [None] and row7["email"].to_list() == [None]
        row8 = clear.filter(pl.col("customer_id") == 8)
        assert row8["customer_name"][0] is not None, "other customers still decrypt"

    query(bronze.dsn, "UPDATE tests.customers SET email = 'new@example.com', updated_at = now() "
                      "WHERE customer_id = 7")
    meta = bronze.materialize("customers")
    assert meta["rows_forgotten_skipped"] == 1
    row = bronze.read("customers").filter(pl.col("customer_id") == 7).to_dicts()[0]
    assert row["record_status"] == "FORGOTTEN" and row["email"] is None and row["customer_name"] is None
    audit = [a for a in read_table(root, AUDIT_LOG).to_pylist() if a["operation_type"] == "ERASURE"]
    assert len(audit) == 1 and audit[0]["records_affected"] == 1
