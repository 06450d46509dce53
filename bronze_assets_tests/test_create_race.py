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


def test_an_erasure_leaves_no_file_holding_the_forgotten_key(tmp_path: Path) -> None:
    """An erasure whose MERGE lost a race (a load added keys right after it opened the key store)
    and was retried left its first attempt's file behind: a copy of every key of the file it
    rewrote, which no vacuum of removed files deletes. A later erasure of one of those subjects
    deletes every file that holds its key, written by a commit or by an attempt that failed."""
    import pyarrow.parquet as pq

    storage = Storage(str(tmp_path / "root"), settings=Settings(data_dir=tmp_path / "data"))
    KeyStore(storage).keys_for("customer", [str(i) for i in range(20)])
    wrapped = KeyStore(storage).rows("customer", ["7"])["wrapped_key"][0]
    opened: list[int] = []

    class RacedByALoad(KeyStore):
        def _open(self) -> DeltaTable | None:
            dt = super()._open()
            opened.append(1)
            if len(opened) == 2:  # the MERGE's first attempt: a load commits its keys meanwhile
                KeyStore(storage).keys_for("customer", ["100", "101"])
            return dt

    RacedByALoad(storage).forget("customer", ["3"])
    assert len(opened) > 3  # the first attempt lost and was retried
    KeyStore(storage).forget("customer", ["7"])
    folder = Path(storage.uri(KEY_STORE))
    holding = [f.name for f in folder.glob("*.parquet")
               if wrapped in pq.read_table(f)["wrapped_key"].to_pylist()]
    assert holding == []
    keys = DeltaTable(storage.uri(KEY_STORE)).to_pyarrow_table()  # every committed file still there
    assert keys.num_rows == 22 and set(keys.filter(pa.compute.is_null(keys["wrapped_key"]))["subject_id"]
                                       .to_pylist()) == {"3", "7"}
