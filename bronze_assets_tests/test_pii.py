"""PII protection on real Delta tables: encryption, role reads, audit, crypto-shredding erasure, UC SQL.

No mocks: real deltalake tables in tmp dirs, real AES-GCM, the real key store and audit log.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import stat
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from deltalake import DeltaTable, write_deltalake

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS
from bronze_assets.lib.delta.control import AUDIT_LOG
from bronze_assets.lib.delta.control import SCHEMAS as CONTROL_TABLES
from bronze_assets.lib.delta.control import read_table as read_control
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.enrich.metadata import bronze_schema
from bronze_assets.lib.governance import (
    KEY_STORE,
    PiiCipher,
    PiiDecryptionError,
    PiiKeyError,
    Role,
    decrypt_table,
    encrypt_table,
    forget_subject,
    read_table,
    uc_sql,
)
from bronze_assets.lib.governance.crypto import aad, decrypt_value, encrypt_value, master_key, master_key_path
from bronze_assets.lib.secrets import K_PII_MASTER_KEY
from bronze_assets.settings import Settings, bronze_root

CUSTOMERS, SUPPLIERS, PRODUCTS = CONTRACTS["customers"], CONTRACTS["suppliers"], CONTRACTS["products"]
NOW = datetime(2026, 11, 1, tzinfo=UTC)
PEOPLE = {
    1: ("Alice Smith", "alice.smith@example.com"),
    2: ("Bob Jones", "bob.jones@corp.example.org"),
    3: ("Carol White", None),
    4: ("Sam Lee", "sam.lee@example.net"),
    5: ("Sam Lee", "sam.lee@example.net"),  # same plaintext as 4: ciphertexts must still differ
}
PHONES = {10: "+1 (555) 010-4477", 11: "020 7946 0958"}

# The matrix, written out by hand (not derived from the code under test).
EXPECTED: dict[Role, dict[str, Any]] = {
    Role.ADMIN: {"name": "Alice Smith", "email": "alice.smith@example.com", "phone": "+1 (555) 010-4477"},
    Role.ENGINEER: {"name": "A***", "email": "a***@example.com", "phone": "+1 (555) 010-4477"},
    Role.OPERATIONS: {"name": "A***", "email": "a***@example.com", "phone": "+1 (555) 010-4477"},
    Role.ANALYST: {"name": "A***", "email": "a***@example.com", "phone": "***4477"},
    Role.SCIENTIST: {"name": "A***", "email": "a***@example.com", "phone": "***4477"},
}


@pytest.fixture(autouse=True)
def _no_configured_master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from the laptop default: no KPiiMasterKey in any provider."""
    for name in (K_PII_MASTER_KEY, f"BRONZE_SECRET_{K_PII_MASTER_KEY}", "BRONZE_KEY_VAULT_URL",
                 "DATABRICKS_RUNTIME_VERSION"):
        monkeypatch.delenv(name, raising=False)


def _meta(status: str = "ACTIVE") -> dict[str, Any]:
    return {"load_timestamp": NOW, "update_timestamp": NOW, "source_system": "PostgreSQL_DE",
            "record_status": status, "data_quality_score": 100, "batch_id": "b0", "record_hash": "h"}


def customers_table(people: dict[int, tuple[str, str | None]] = PEOPLE, status: dict[int, str] | None = None,
                    ) -> pa.Table:
    rows = [{"customer_id": cid, "customer_name": name, "email": email, "updated_at": NOW,
             **_meta((status or {}).get(cid, "ACTIVE"))} for cid, (name, email) in people.items()]
    return pa.Table.from_pylist(rows, schema=bronze_schema(CUSTOMERS))


def suppliers_table(status: dict[int, str] | None = None) -> pa.Table:
    rows = [{"supplier_id": sid, "supplier_name": f"Supplier {sid}", "contact_number": phone,
             "email": f"s{sid}@supply.example", "product_id": 1, "updated_at": NOW,
             **_meta((status or {}).get(sid, "ACTIVE"))} for sid, phone in PHONES.items()]
    return pa.Table.from_pylist(rows, schema=bronze_schema(SUPPLIERS))


def uri(table: str) -> str:
    return f"{bronze_root()}/{table}"


def store() -> Storage:
    """The bronze root with the environment's settings, as the ``bronze`` resource builds it."""
    return Storage(bronze_root(), settings=Settings.from_env())


def write_customers(mode: str = "error", people: dict[int, tuple[str, str | None]] = PEOPLE,
                    status: dict[int, str] | None = None) -> None:
    encrypted = encrypt_table(customers_table(people, status), CUSTOMERS, store())
    write_deltalake(uri("bz_customers"), encrypted, mode=mode)


def files_bytes(path: str) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in Path(path).rglob("*") if p.is_file()]


def audit_rows(operation: str) -> list[dict[str, Any]]:
    rows = read_control(bronze_root(), AUDIT_LOG).to_pylist()
    return [r for r in rows if r["operation_type"] == operation]


# --------------------------------------------------------------------------- encryption
def test_round_trip_keeps_nulls() -> None:
    plain = customers_table()
    enc = encrypt_table(plain, CUSTOMERS, store())
    assert enc.schema == plain.schema
    assert enc.column("email")[2].as_py() is None  # NULL stays NULL
    assert all(v.startswith("enc:v1:") for v in enc.column("customer_name").to_pylist())
    assert decrypt_table(enc, CUSTOMERS, store()).equals(plain)
    batch = encrypt_table(plain.to_batches()[0], CUSTOMERS, store())  # record batches (the load path) too
    assert isinstance(batch, pa.RecordBatch)
    assert decrypt_table(pa.Table.from_batches([batch]), CUSTOMERS, store()).equals(plain)


def test_ciphertext_hides_plaintext_and_differs_per_row() -> None:
    enc = encrypt_table(customers_table(), CUSTOMERS, store()).to_pylist()
    again = encrypt_table(customers_table(), CUSTOMERS, store()).to_pylist()
    four, five = enc[3], enc[4]
    assert four["customer_name"] != five["customer_name"] and four["email"] != five["email"]
    assert enc[0]["email"] != again[0]["email"]  # fresh nonce per encryption
    for row in enc:
        name, email = PEOPLE[row["customer_id"]]
        raw = base64.b64decode(row["customer_name"].removeprefix("enc:v1:"))
        assert name not in row["customer_name"] and name.encode() not in raw
        if email:
            assert email not in row["email"] and email.split("@")[1] not in row["email"]


def test_wrong_aad_fails() -> None:
    key = AESGCM(AESGCM.generate_key(bit_length=256))
    token = encrypt_value(key, "alice.smith@example.com", aad("bz_customers", "email", "1"))
    assert decrypt_value(key, token, aad("bz_customers", "email", "1")) == "alice.smith@example.com"
    for wrong in (aad("bz_customers", "email", "2"), aad("bz_customers", "customer_name", "1"),
                  aad("bz_suppliers", "email", "1")):
        with pytest.raises(InvalidTag):
            decrypt_value(key, token, wrong)
    # a ciphertext moved to another row (another subject) is refused, not silently decrypted
    enc = encrypt_table(customers_table(), CUSTOMERS, store())
    emails = enc.column("email").to_pylist()
    emails[0], emails[1] = emails[1], emails[0]
    swapped = enc.set_column(enc.schema.get_field_index("email"), "email", pa.array(emails, pa.string()))
    with pytest.raises(PiiDecryptionError, match=r"bz_customers\.email.*customer_id"):
        decrypt_table(swapped, CUSTOMERS, store())


def test_master_key_generated_once_with_mode_0600(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        key = master_key(Settings.from_env())
    path = master_key_path(Settings.from_env().data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) == 32
    assert "generated a local PII master key" in caplog.text
    assert path.read_text().strip() not in caplog.text and base64.b64encode(key).decode() not in caplog.text
    assert master_key(Settings.from_env()) == key  # reused, not regenerated
    with pytest.MonkeyPatch.context() as mp, pytest.raises(PiiKeyError, match=K_PII_MASTER_KEY):
        mp.setenv(K_PII_MASTER_KEY, "not-a-key")
        master_key(Settings.from_env())


def test_configured_master_key_wins_and_a_wrong_one_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(K_PII_MASTER_KEY, base64.b64encode(b"k" * 32).decode())
    enc = encrypt_table(customers_table(), CUSTOMERS, store())
    assert not master_key_path(Settings.from_env().data_dir).exists()
    monkeypatch.setenv(K_PII_MASTER_KEY, base64.b64encode(b"x" * 32).decode())
    with pytest.raises(PiiKeyError, match="master key"):
        decrypt_table(enc, CUSTOMERS, store())


def test_25k_customers_get_their_keys_in_one_commit() -> None:
    """The encryption's cost is measured in benchmarks/ (no test asserts a wall-clock time)."""
    n = 25_000
    people = {i: (f"Customer {i}", f"c{i}@example.com") for i in range(1, n + 1)}
    plain = customers_table(people)
    enc = encrypt_table(plain, CUSTOMERS, store())  # creates 25k keys in one commit, then encrypts
    assert DeltaTable(uri(KEY_STORE)).version() == 0  # one commit
    assert decrypt_table(enc.slice(n - 3), CUSTOMERS, store()).equals(plain.slice(n - 3))


def test_rows_across_slices_with_repeated_subjects_and_nulls_round_trip() -> None:
    """Several 1,024-row slices, a subject on many rows (one cipher per subject and slice), NULL
    values in either column and rows without a subject; the garbage collector's state is as the
    caller left it (encryption pauses it)."""
    n = 3_000
    plain = pa.Table.from_pylist([
        {"customer_id": None if i % 97 == 0 else i % 700, "customer_name": None if i % 7 == 0 else f"N{i}",
         "email": None if i % 5 == 0 else f"e{i}@example.com", "updated_at": NOW, **_meta("ACTIVE")}
        for i in range(n)], schema=bronze_schema(CUSTOMERS))
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            enc = encrypt_table(plain, CUSTOMERS, store())
            assert gc.isenabled() is enabled
        finally:
            gc.enable()
        names = enc.column("customer_name").to_pylist()
        assert [v is None for v in names] == [i % 7 == 0 or i % 97 == 0 for i in range(n)]
        assert all(v.startswith("enc:v1:") for v in names if v is not None)
        without_subject = plain.column("customer_id").is_null()
        expected = plain.set_column(1, "customer_name", pa.array(
            [None if s else v for s, v in zip(without_subject.to_pylist(),
                                              plain.column("customer_name").to_pylist(), strict=True)],
            pa.string()))
        expected = expected.set_column(2, "email", pa.array(
            [None if s else v for s, v in zip(without_subject.to_pylist(), plain.column("email").to_pylist(),
                                              strict=True)], pa.string()))
        assert decrypt_table(enc, CUSTOMERS, store()).equals(expected)


# --------------------------------------------------------------------------- role reads
@pytest.mark.parametrize("role", list(Role))
def test_role_reads_match_the_matrix(role: Role) -> None:
    write_customers(status={2: "FORGOTTEN"})
    write_deltalake(uri("bz_suppliers"), suppliers_table(status={11: "FORGOTTEN"}))
    customers = {r["customer_id"]: r for r in read_table("customers", role, store()).to_pylist()}
    suppliers = {r["supplier_id"]: r for r in read_table("suppliers", role.value, store()).to_pylist()}
    want = EXPECTED[role]
    assert (customers[1]["customer_name"], customers[1]["email"]) == (want["name"], want["email"])
    assert customers[3]["email"] is None  # NULL stays NULL for every role
    assert suppliers[10]["contact_number"] == want["phone"]
    assert suppliers[10]["email"] == "s10@supply.example"  # not a PII column in the contract
    # FORGOTTEN rows: PII NULL for everyone (even though bz_customers row 2 still holds ciphertext)
    assert customers[2]["customer_name"] is None and customers[2]["email"] is None
    assert suppliers[11]["contact_number"] is None and suppliers[11]["supplier_name"] == "Supplier 11"


def test_read_columns_filters_and_limit() -> None:
    write_customers()
    got = read_table("customers", "engineer", store(), columns=["email"], filters=[("customer_id", "=", 2)])
    assert got.column_names == ["email"] and got.to_pylist() == [{"email": "b***@corp.example.org"}]
    assert read_table("customers", "admin", store(), limit=2).num_rows == 2
    with pytest.raises(ValueError, match="bz_customers has no columns"):
        read_table("customers", "admin", store(), columns=["phone"])
    with pytest.raises(ValueError, match="unknown role 'intern'"):
        read_table("customers", "intern", store())


def test_every_pii_read_writes_an_audit_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_USER", "dana")
    write_customers()
    write_deltalake(uri("bz_suppliers"), suppliers_table())
    products = pa.Table.from_pylist(
        [{"product_id": 1, "product_name": "P", "category": "C", "unit_price": None, "sku": "AAA-123",
          "updated_at": NOW, **_meta()}], schema=bronze_schema(PRODUCTS))
    write_deltalake(uri("bz_products"), products)
    read_table("customers", "analyst", store())
    read_table("customers", "admin", store(), limit=1)
    read_table("suppliers", "operations", store())
    read_table("products", "analyst", store())  # no PII: not audited
    rows = audit_rows("PII_READ")
    assert len(rows) == 3
    by_role = {json.loads(r["details"])["role"]: r for r in rows}
    assert set(by_role) == {"analyst", "admin", "operations"}
    assert by_role["analyst"]["table_name"] == "bz_customers" and by_role["analyst"]["records_affected"] == 5
    assert by_role["admin"]["records_affected"] == 1
    assert json.loads(by_role["analyst"]["details"])["masked"] == ["customer_name", "email"]
    assert json.loads(by_role["operations"]["details"])["plaintext"] == ["contact_number"]
    assert all(r["user_id"] == "dana" and r["status"] == "SUCCESS" for r in rows)


# --------------------------------------------------------------------------- erasure
def test_forget_shreds_the_subject_in_every_version() -> None:
    write_customers()  # v0
    changed = dict(PEOPLE) | {2: ("Bob Jones", "bob@new.example.org"), 1: ("Alice Smith-Ng", PEOPLE[1][1])}
    write_customers("overwrite", changed)  # v1: 2 changed email, re-encrypted
    write_customers("append", {6: ("Dan Brown", "dan@example.com")})  # v2
    expected = {0: PEOPLE, 1: changed, 2: changed | {6: ("Dan Brown", "dan@example.com")}}
    wrapped_before = DeltaTable(uri(KEY_STORE)).to_pyarrow_table().to_pylist()
    key_of_2 = next(r["wrapped_key"] for r in wrapped_before if r["subject_id"] == "2")

    result = forget_subject("customers", 2, store())
    assert (result.rows_forgotten, result.keys_shredded) == (1, 1) and result.version == 3

    for version in range(result.version + 1):
        table = DeltaTable(uri("bz_customers"), version=version).to_pyarrow_table()
        plain = {r["customer_id"]: (r["customer_name"], r["email"])
                 for r in decrypt_table(table, CUSTOMERS, store()).to_pylist()}
        assert plain[2] == (None, None), f"version {version} still reveals customer 2"
        others = {k: v for k, v in expected[min(version, 2)].items() if k != 2}
        assert {k: v for k, v in plain.items() if k != 2} == others, f"version {version}"

    current = {r["customer_id"]: r for r in DeltaTable(uri("bz_customers")).to_pyarrow_table().to_pylist()}
    assert current[2]["record_status"] == "FORGOTTEN" and current[2]["email"] is None
    assert current[1]["record_status"] == "ACTIVE"
    # the old wrapped key is gone from every file of the key store (data files and log)
    assert not [p for p, data in files_bytes(uri(KEY_STORE)) if key_of_2 in data]
    # the tombstone: a later load of customer 2 encrypts its personal data to NULL
    reloaded = encrypt_table(customers_table({2: ("Bob Jones", "bob@new.example.org"), 7: ("Eve", "e@x.io")}),
                             CUSTOMERS, store()).to_pylist()
    assert (reloaded[0]["customer_name"], reloaded[0]["email"]) == (None, None)
    assert reloaded[1]["email"].startswith("enc:v1:")
    (erasure,) = audit_rows("ERASURE")
    assert erasure["table_name"] == "bz_customers" and erasure["records_affected"] == 1
    assert json.loads(erasure["details"])["subject_id"] == "2" and erasure["status"] == "SUCCESS"
    for role in Role:
        row = read_table("customers", role, store(), filters=[("customer_id", "=", 2)]).to_pylist()[0]
        assert (row["customer_name"], row["email"]) == (None, None)


def test_forget_is_idempotent_and_refuses_tables_without_subject() -> None:
    write_customers()
    forget_subject("customers", 4, store())
    again = forget_subject(CUSTOMERS, "4", store())
    assert again.keys_shredded == 0 and again.rows_forgotten == 1
    plain = decrypt_table(DeltaTable(uri("bz_customers")).to_pyarrow_table(), CUSTOMERS, store()).to_pylist()
    assert {r["customer_id"]: r["customer_name"] for r in plain}[5] == "Sam Lee"
    write_deltalake(uri("bz_suppliers"), suppliers_table())
    with pytest.raises(ValueError, match="bz_suppliers has no data subject"):
        forget_subject("suppliers", 10, store())


def test_no_plaintext_in_any_file_of_the_table() -> None:
    write_customers()
    write_customers("overwrite", dict(PEOPLE) | {1: ("Alice Smith", "alice@moved.example.com")})
    forget_subject("customers", 1, store())
    blobs = files_bytes(uri("bz_customers")) + files_bytes(uri(KEY_STORE))
    assert any(p.suffix == ".parquet" for p, _ in blobs)
    secrets = {v for pair in PEOPLE.values() for v in pair if v} | {"alice@moved.example.com"}
    leaks = [(p.name, s) for p, data in blobs for s in secrets if s.encode() in data]
    assert not leaks


# --------------------------------------------------------------------------- contract, UC SQL, CLI
def test_contract_validates_encryption_fields() -> None:
    assert CUSTOMERS.encrypted_columns == ("customer_name", "email")
    assert CUSTOMERS.data_subject == "customer_id"
    with pytest.raises(ValueError, match="must also be pii_columns"):
        replace(SUPPLIERS, encrypted_columns=("email",), data_subject="supplier_id")
    with pytest.raises(ValueError, match="need a data_subject"):
        replace(SUPPLIERS, encrypted_columns=("contact_number",))
    with pytest.raises(ValueError, match="unknown columns"):
        replace(CUSTOMERS, data_subject="person_id")
    with pytest.raises(ValueError, match="only text columns"):
        replace(SUPPLIERS, pii_columns=("product_id",), encrypted_columns=("product_id",),
                data_subject="supplier_id")
    with pytest.raises(ValueError, match="no encrypted columns"):
        PiiCipher(SUPPLIERS, store())


def test_uc_sql_is_generated_from_the_matrix_and_contracts() -> None:
    sql = uc_sql("prod", "bronze")
    for contract in CONTRACTS.values():
        for role in Role:
            table = f"`prod`.`bronze`.`{contract.bronze_table}`"
            assert f"GRANT SELECT ON TABLE {table} TO `bronze_{role}`;" in sql
    masks = [line for line in sql.splitlines() if "SET MASK" in line]
    # every PII column masked on its table and on the table's history (all three tables keep one)
    assert len(masks) == sum(len(c.pii_columns) * (1 + c.history) for c in CONTRACTS.values()) == 6
    assert ("ALTER TABLE `prod`.`bronze`.`bz_customers` ALTER COLUMN `email` SET MASK "
            "`prod`.`bronze`.`bz_mask_customers_email` USING COLUMNS (record_status);") in masks
    phone = sql.split("bz_mask_suppliers_contact_number`(value STRING")[1].split("END;")[0]
    assert "WHEN record_status = 'FORGOTTEN' THEN NULL" in phone
    groups = {g for g in ("analyst", "engineer", "scientist", "operations", "admin")
              if f"is_account_group_member('bronze_{g}')" in phone}
    assert groups == {"engineer", "operations", "admin"}
    email = sql.split("bz_mask_customers_email`(value STRING")[1].split("END;")[0]
    assert "is_account_group_member('bronze_admin') THEN value" in email
    assert "bronze_engineer" not in email
    assert "stays ciphertext" in sql
    assert "GRANT SELECT ON TABLE `prod`.`bronze`.`bz_pii_keys` TO `bronze_admin`;" in sql
    assert "`bz_pii_keys` TO `bronze_analyst`" not in sql
    assert "CREATE TABLE" not in sql


def test_uc_sql_creates_external_tables_over_the_root() -> None:
    sql = uc_sql("prod", "bronze", "abfss://lake@acct.dfs.core.windows.net/bronze/")
    creates = [line for line in sql.splitlines() if line.startswith("CREATE TABLE")]
    histories = [f"bz_{n}_history" for n in ("products", "suppliers", "warehouses", "customers")]
    # tables, their histories, control tables, quarantine, key store
    assert len(creates) == len(CONTRACTS) + len(histories) + len(CONTROL_TABLES) + 2
    for table in histories:  # the history of a table is governed as the table
        assert (f"CREATE TABLE IF NOT EXISTS `prod`.`bronze`.`{table}` USING DELTA LOCATION "
                f"'abfss://lake@acct.dfs.core.windows.net/bronze/{table}';") in creates
        grant = f"GRANT SELECT ON TABLE `prod`.`bronze`.`{table}` TO `{Role.ANALYST.group}`;"
        assert grant in sql.splitlines()
    assert ("ALTER TABLE `prod`.`bronze`.`bz_customers_history` ALTER COLUMN `email` SET MASK "
            "`prod`.`bronze`.`bz_mask_customers_email` USING COLUMNS (record_status);") in sql.splitlines()
    assert ("CREATE TABLE IF NOT EXISTS `prod`.`bronze`.`bz_orders` USING DELTA LOCATION "
            "'abfss://lake@acct.dfs.core.windows.net/bronze/bz_orders';") in creates
    assert sql.index("CREATE TABLE IF NOT EXISTS `prod`.`bronze`.`bz_orders`") < \
        sql.index("GRANT SELECT ON TABLE `prod`.`bronze`.`bz_orders`")
    assert "local path" not in sql
    assert "needs a cloud URI" in uc_sql("prod", "bronze", "/tmp/bronze")


def test_cli_read_forget_and_uc_sql() -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["read", "customers", "--role", "admin"])
    assert missing.exit_code == 1 and "bz_customers does not exist" in missing.output
    write_customers()
    out = runner.invoke(main, ["read", "customers", "--role", "analyst", "--format", "json", "--limit", "0"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 5 and rows[0]["customer_name"] == "A***" and "Alice" not in out.output
    csv = runner.invoke(main, ["read", "bz_customers", "--role", "admin", "--format", "csv",
                               "--columns", "customer_id,email"])
    assert csv.stdout.splitlines()[:2] == ["customer_id,email", "1,alice.smith@example.com"]
    text = runner.invoke(main, ["read", "customers", "--role", "engineer", "--limit", "2"])
    assert "a***@example.com" in text.stdout
    bad_role = runner.invoke(main, ["read", "customers", "--role", "intern"])
    assert bad_role.exit_code == 2 and "analyst" in bad_role.output
    bad_table = runner.invoke(main, ["read", "clients", "--role", "admin"])
    assert bad_table.exit_code == 1 and "unknown table 'clients'" in bad_table.output
    forgot = runner.invoke(main, ["forget", "--customer-id", "1"])
    assert forgot.exit_code == 0 and "1 row(s) of bz_customers FORGOTTEN" in forgot.output
    assert runner.invoke(main, ["read", "customers", "--role", "admin", "--format", "json"]).stdout.count(
        '"customer_name": null') == 1
    sql = runner.invoke(main, ["uc-sql", "--catalog", "c1", "--schema", "s1"])
    assert sql.exit_code == 0 and "`c1`.`s1`.`bz_customers`" in sql.stdout


def test_encrypting_with_keys_prepared_for_other_subjects_fails_loudly() -> None:
    cipher = PiiCipher(CUSTOMERS, store())
    keys = cipher.prepare([1, 2])
    with pytest.raises(PiiKeyError, match="no data key prepared for 3 customer_id values"):
        cipher.encrypt(customers_table(), keys)
    enc = cipher.encrypt(customers_table({1: PEOPLE[1], 2: PEOPLE[2]}), keys)
    assert decrypt_table(enc, CUSTOMERS, store()).equals(customers_table({1: PEOPLE[1], 2: PEOPLE[2]}))


def test_a_chunks_keys_are_read_and_created_without_the_other_subjects_key_files() -> None:
    """A load's commit chunk reads the key rows of its own subjects only (files whose statistics
    exclude them are never opened) and adds the missing keys without a pass over the key table:
    with the files of other subjects' keys gone from disk, the chunk's keys still load and create."""
    cipher = PiiCipher(CUSTOMERS, store())
    cipher.prepare(range(100, 200))  # one commit: ids "100".."199"
    other_files = {p.name for p in Path(uri(KEY_STORE)).glob("*.parquet")}
    first = cipher.prepare(range(500, 600))  # another: "500".."599"
    for name in other_files:
        (Path(uri(KEY_STORE)) / name).unlink()
    again = cipher.prepare([*range(500, 600), *range(600, 650)])  # reads the second commit's file
    assert {s: again.keys[s] for s in first.keys} == first.keys and len(again.keys) == 150
    assert cipher.prepare(range(600, 650), create=False).keys == {
        s: again.keys[s] for s in map(str, range(600, 650))}


def test_a_load_lets_go_of_its_data_keys_once_its_rows_are_written(seeded: str) -> None:
    """The staged batch outlives its write (Dagster keeps a run's outputs until the run ends): once
    the MERGE is over its PII hook holds no data keys, and the rows it wrote still decrypt (their
    keys are in the key store)."""
    from bronze_assets.lib.load.engine import LocalEngine
    from bronze_assets.lib.load.lifecycle import Lifecycle, LoadRequest, commit

    storage = store()
    lifecycle = Lifecycle(LoadRequest(CUSTOMERS, None), LocalEngine(storage), seeded, storage)
    staged = lifecycle.stage()
    outcome = commit(lifecycle.engine, staged, storage, None)
    lifecycle.finish(staged)
    assert outcome.result.commits and staged.rows
    assert staged.pii is not None
    assert staged.pii.keys is None, "the staged batch's PII hook still holds the chunk's data keys"
    plain = decrypt_table(DeltaTable(uri("bz_customers")).to_pyarrow_table(), CUSTOMERS, storage)
    assert plain.num_rows == staged.rows
    assert plain.column("email").null_count < plain.num_rows  # decrypted text, not NULLs
    assert not any(v.startswith("enc:") for v in plain.column("email").drop_null().to_pylist())
