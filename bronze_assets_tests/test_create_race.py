"""The create race of delta-rs (lib/delta/create_race.py): two writers that create one table at
once, each having chosen its rows against the table's absence, leave the rows of one of them,
whichever writer it is (an exclusive append, the key store)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from bronze_assets.lib.delta.exclusive_append import append_exclusive
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.governance.keystore import KEY_STORE, KeyStore
from bronze_assets.settings import Settings
from bronze_assets_tests.bronze_helpers import at_once

TRIALS = 10


def test_two_exclusive_appends_creating_one_table_append_once(tmp_path: Path) -> None:
    doubled = 0
    for trial in range(TRIALS):
        storage = Storage(str(tmp_path / str(trial)))

        def once(dt: DeltaTable | None) -> pa.Table | None:
            """The row, unless the table holds it (as the landing ledger chooses)."""
            return pa.table({"k": [1]}) if dt is None or not dt.to_pyarrow_table().num_rows else None

        def append() -> None:
            append_exclusive(storage, "bz_ledger", "bronze_assets/bz_ledger/t", once)  # noqa: B023

        at_once(append, append)
        doubled += DeltaTable(storage.uri("bz_ledger")).to_pyarrow_table().num_rows > 1
    assert doubled == 0, f"{doubled} of {TRIALS} racing creates appended the row twice"


def test_two_loads_creating_the_key_store_keep_one_key_per_subject(tmp_path: Path) -> None:
    doubled = 0
    for trial in range(TRIALS):
        storage = Storage(str(tmp_path / str(trial)), settings=Settings(data_dir=tmp_path / "data"))

        def create_keys() -> None:
            KeyStore(storage).keys_for("customer", ["1", "2"])  # noqa: B023

        at_once(create_keys, create_keys)
        keys = DeltaTable(storage.uri(KEY_STORE)).to_pyarrow_table()
        doubled += keys.num_rows > 2
    assert doubled == 0, f"{doubled} of {TRIALS} racing creates kept two keys for one subject"


pytestmark = pytest.mark.integration


def test_two_loads_adding_keys_to_the_key_store_keep_one_key_per_subject(tmp_path: Path) -> None:
    doubled = 0
    for trial in range(TRIALS):
        storage = Storage(str(tmp_path / str(trial)), settings=Settings(data_dir=tmp_path / "data"))
        KeyStore(storage).keys_for("customer", ["0"])
        found: list[dict[str, bytes]] = []

        def add_keys() -> None:
            found.append(KeyStore(storage).keys_for("customer", ["1", "2"]).keys)  # noqa: B023

        at_once(add_keys, add_keys)
        keys = DeltaTable(storage.uri(KEY_STORE)).to_pyarrow_table()
        doubled += keys.num_rows > 3 or found[0] != found[1]
    assert doubled == 0, f"{doubled} of {TRIALS} racing loads kept two keys for one subject"
