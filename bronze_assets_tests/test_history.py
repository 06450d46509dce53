"""ARCHITECTURE §2.7 History (SCD type 2) on the local engine: ``bz_<name>_history`` gets one version
per insert, content change, soft delete and return of a key, in the same run and from the same
MERGE plan; unchanged keys never touch it; re-runs and killed-and-repeated runs add nothing twice;
a FORGOTTEN customer's personal columns are unreadable in every version and every file."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from bronze_assets.contracts import CONTRACTS, Contract
from bronze_assets.lib.delta import history as history_module
from bronze_assets.lib.delta import staging
from bronze_assets.lib.delta.change_feed import change_feed_on
from bronze_assets.lib.delta.commit_log import BATCH_KEY, commit_history
from bronze_assets.lib.delta.history import IS_DELETED, VALID_FROM, VALID_TO, HistoryWriter
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.governance import decrypt_table, forget_subject
from bronze_assets.lib.monitoring.status import bronze_status, render
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import query

pytestmark = pytest.mark.integration

PK = "customer_id"
T1 = datetime(2026, 11, 27, 10, tzinfo=UTC)
T2, T3, T4 = T1 + timedelta(hours=1), T1 + timedelta(hours=2), T1 + timedelta(hours=3)


def _history(b: Bronze, version: int | None = None) -> pl.DataFrame:
    """The customers history, decrypted, sorted by key and version start."""
    dt = DeltaTable(str(b.root / "bz_customers_history"), version=version)
    frame = pl.from_arrow(decrypt_table(dt.to_pyarrow_table(), CONTRACTS["customers"], b.storage()))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort(PK, VALID_FROM)


def _versions(frame: pl.DataFrame, key: int) -> list[tuple]:
    rows = frame.filter(pl.col(PK) == key)
    return list(zip(rows[VALID_FROM].to_list(), rows[VALID_TO].to_list(), rows[IS_DELETED].to_list(),
                    rows["email"].to_list(), strict=True))


def _feed_values(b: Bronze, uri: str, key: int) -> list[str | None]:
    """The personal columns of ``key`` in every row of the table's whole change feed, decrypted."""
    dt = DeltaTable(uri)
    raw = pa.table(dt.load_cdf(starting_version=0, ending_version=dt.version()))
    raw = raw.cast(pa.schema([f.with_type(pa.string()) if f.type == pa.string_view() else f
                              for f in raw.schema]))  # the feed's strings are views
    feed = pl.from_arrow(decrypt_table(raw, CONTRACTS["customers"], b.storage()))
    assert isinstance(feed, pl.DataFrame)
    rows = feed.filter(pl.col(PK) == key)
    assert rows.height >= 1
    return [*rows["customer_name"], *rows["email"]]


def _customer(dsn: str, key: int) -> tuple[str, str]:
    ((name, email),) = query(dsn, f"SELECT customer_name, email FROM tests.customers "
                                  f"WHERE customer_id = {key}")
    return name, email


def test_versions_of_inserts_changes_deletes_and_returns(seeded: str, tmp_path: Path) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    first = b.load_direct("customers", batch_time=T1)
    current = b.read("customers")
    history = _history(b)
    assert history.height == current.height == first.inserted > 0
    assert history[PK].n_unique() == history.height, "one version per key"
    assert set(history[VALID_FROM].to_list()) == {T1} and history[VALID_TO].null_count() == history.height
    assert not any(history[IS_DELETED].to_list())
    hist_dt = DeltaTable(b.uri("customers_history"))
    assert change_feed_on(hist_dt)
    # PII is stored as in the current table: ciphertext, decrypting to the source's plaintext
    raw = pl.from_arrow(hist_dt.to_pyarrow_table())
    assert isinstance(raw, pl.DataFrame)
    assert all(str(v).startswith("enc:v1:") for v in raw["email"].drop_nulls().to_list())
    _, email1 = _customer(seeded, 1)
    assert _versions(history, 1) == [(T1, None, False, email1)]

    # change 1, delete 2: two new versions, their predecessors closed; everyone else untouched
    query(seeded, "UPDATE tests.customers SET email = 'moved@example.com', updated_at = now() "
                  "WHERE customer_id = 1")
    query(seeded, "DELETE FROM tests.customers WHERE customer_id = 2")
    before = DeltaTable(b.uri("customers_history")).version()
    second = b.load_direct("customers", batch_time=T2)
    assert (second.updated, second.soft_deleted, second.history_versions) == (1, 1, 2)
    history = _history(b)
    _, email2 = _customer_from(history, 2)
    assert _versions(history, 1) == [(T1, T2, False, email1), (T2, None, False, "moved@example.com")]
    assert _versions(history, 2) == [(T1, T2, False, email2), (T2, None, True, email2)]
    deleted = history.filter((pl.col(PK) == 2) & pl.col(IS_DELETED))
    assert deleted["record_status"].to_list() == ["DELETED"]
    others = history.filter(~pl.col(PK).is_in([1, 2]))
    assert others.height == current.height - 2 and set(others[VALID_FROM].to_list()) == {T1}
    log = [e for e in commit_history(DeltaTable(b.uri("customers_history"))) if e["version"] > before]
    assert [e[BATCH_KEY] for e in log] == [second_batch(b)], "one MERGE for the run's one chunk"
    assert log[0]["operation"] == "MERGE"

    # re-insert 2 (a return) → a live version again; a re-run of the same source adds nothing
    query(seeded, f"INSERT INTO tests.customers VALUES (2, 'Back Again', '{email2}', now())")
    third = b.load_direct("customers", batch_time=T3)
    assert third.updated == 1 and third.history_versions == 1
    history = _history(b)
    assert _versions(history, 2) == [(T1, T2, False, email2), (T2, T3, True, email2),
                                     (T3, None, False, email2)]
    settled = DeltaTable(b.uri("customers_history")).version()
    again = b.load_direct("customers", batch_time=T4)
    assert (again.inserted, again.updated, again.soft_deleted, again.history_versions) == (0, 0, 0, 0)
    assert DeltaTable(b.uri("customers_history")).version() == settled, "an unchanged run writes no history"
    final = _history(b)
    assert final.height == current.height + 3
    assert final.filter(pl.col(VALID_TO).is_null()).height == current.height, "one current version per key"


def _customer_from(history: pl.DataFrame, key: int) -> tuple[str, str]:
    row = history.filter(pl.col(PK) == key).row(0, named=True)
    return row["customer_name"], row["email"]


def second_batch(b: Bronze) -> str:
    return str(commit_history(b.table("customers"), 1)[0][BATCH_KEY])


def test_a_killed_run_repeated_and_a_rerun_never_duplicate_a_version(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    b.load_direct("customers", batch_time=T1)
    rows = _history(b).height
    query(seeded, "UPDATE tests.customers SET email = 'k@example.com', updated_at = now() "
                  "WHERE customer_id = 3")

    # killed after the history commit, before the current table's MERGE
    def killed(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed")

    written: list = []  # what the history MERGE got: (batches, current table, batch id)
    write = HistoryWriter.write

    def recorded(self: HistoryWriter, batches: list, current: DeltaTable, batch_id: str, *args: object
                 ) -> int:
        written.append((batches, current, batch_id))
        return write(self, batches, current, batch_id, *args)  # type: ignore[arg-type]

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="killed"):
        patch.setattr(BronzeMerger, "_merge_piece", killed)
        patch.setattr(HistoryWriter, "write", recorded)
        b.load_direct("customers", batch_time=T2)
    assert _history(b).height == rows + 1
    settled = b.version("customers_history")
    repeated = b.load_direct("customers", batch_time=T3)  # a new run (new batch id) of the same change
    assert repeated.updated == 1 and repeated.history_versions == 0
    history = _history(b)
    assert history.height == rows + 1
    assert [v[3] for v in _versions(history, 3)][-1] == "k@example.com"
    assert b.version("customers_history") == settled, "a MERGE that adds nothing commits nothing"
    # the same chunk applied again (a retried batch) adds nothing either
    (batches, current, batch), = written
    writer = HistoryWriter(CONTRACTS["customers"], b.storage())
    assert writer.write(batches, current, batch, T2, 0, 1) == 0
    assert _history(b).height == rows + 1 and b.version("customers_history") == settled


def _assert_seeded_from_current(b: Bronze) -> None:
    """The history holds exactly one open version per row of bz_customers (key, hash, status),
    valid from the row's ``update_timestamp``."""
    current = b.read("customers").select(PK, "record_hash", "record_status", "update_timestamp").sort(PK)
    history = _history(b)
    assert history.height == current.height
    assert history.select(PK, "record_hash", "record_status").equals(
        current.select(PK, "record_hash", "record_status"))
    assert history[VALID_FROM].to_list() == current["update_timestamp"].to_list()
    assert history[VALID_TO].null_count() == history.height and not history[IS_DELETED].any()


def test_the_seed_streams_the_rows_as_written_in_bounded_pieces(seeded: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    monkeypatch.setattr(history_module, "SEED_BATCH_ROWS", 30)
    monkeypatch.setattr(staging, "SPILL_BATCH_ROWS", 70)
    spilled: list[int] = []  # rows of each batch of the spill file the seed reads
    reader = staging.SpillFile.reader

    def spill_reader(self: staging.SpillFile) -> pa.RecordBatchReader:
        rows = reader(self)
        spilled.extend(pa.ipc.open_file(str(self.path)).get_batch(i).num_rows
                       for i in range(pa.ipc.open_file(str(self.path)).num_record_batches))
        return rows

    handed: list[int] = []  # rows of each batch delta-rs got for the seed's write
    write = history_module.write_deltalake

    def counted(uri: str, data: pa.RecordBatchReader, **kwargs: object) -> None:
        def passing():
            for batch in data:
                handed.append(batch.num_rows)
                yield batch
        write(uri, pa.RecordBatchReader.from_batches(data.schema, passing()), **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(staging.SpillFile, "reader", spill_reader)
    monkeypatch.setattr(history_module, "write_deltalake", counted)
    result = b.load_direct("customers", batch_time=T1)
    rows = b.read("customers").height
    assert result.inserted == rows == sum(handed) == sum(spilled) > 2 * 70
    assert max(handed) <= 30 and max(spilled) <= 70
    assert b.version("customers_history") == 0  # one commit
    _assert_seeded_from_current(b)


def test_a_seed_that_fails_half_way_leaves_no_history_and_the_next_load_seeds_it(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    monkeypatch.setattr(history_module, "SEED_BATCH_ROWS", 30)
    seed_rows = history_module._seed_rows
    pieces: list[int] = []

    def failing(batch: pa.RecordBatch, *args: pa.Schema) -> pa.RecordBatch:
        pieces.append(batch.num_rows)
        if len(pieces) == 4:  # 90 rows already handed to delta-rs
            raise OSError("No space left on device")
        return seed_rows(batch, *args)

    with monkeypatch.context() as patch, pytest.raises(Exception, match="No space left on device"):
        patch.setattr(history_module, "_seed_rows", failing)
        b.load_direct("customers", batch_time=T1)
    rows = b.read("customers").height
    assert len(pieces) == 4 and rows > 90
    assert not DeltaTable.is_deltatable(b.uri("customers_history"))  # no half-seeded table to read
    statuses = {s.table: s for s in bronze_status(b.storage())}
    assert statuses["bz_customers"].history == {"table": "bz_customers_history", "versions": 0,
                                                "current": 0, "delta_version": None}

    result = b.load_direct("customers", batch_time=T2)  # unchanged: seeds the history, writes nothing
    assert (result.inserted, result.updated, result.history_versions) == (0, 0, 0)
    assert b.version("customers_history") == 0
    _assert_seeded_from_current(b)


def _load_before_history(b: Bronze, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first load of bz_customers at T1 by a contract without history."""
    with monkeypatch.context() as patch:
        patch.setitem(CONTRACTS, "customers", _without_history())
        b.load_direct("customers", batch_time=T1)


def test_history_turned_on_for_an_existing_table_is_seeded(seeded: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    _load_before_history(b, monkeypatch)
    assert DeltaTable.is_deltatable(b.uri("customers"))
    assert not DeltaTable.is_deltatable(b.uri("customers_history"))
    query(seeded, "DELETE FROM tests.customers WHERE customer_id = 5")
    b.load_direct("customers", batch_time=T2)
    history = _history(b)
    assert history.height == b.read("customers").height + 1
    assert [(v[0], v[1], v[2]) for v in _versions(history, 5)] == [(T1, T2, False), (T2, None, True)]


def _without_history() -> Contract:
    return replace(CONTRACTS["customers"], history=False)


def test_forget_makes_personal_columns_unreadable_in_every_version(seeded: str, tmp_path: Path) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    name, email = _customer(seeded, 7)
    b.load_direct("customers", batch_time=T1)
    query(seeded, "UPDATE tests.customers SET customer_name = 'Renamed Person', "
                  "email = 'renamed@example.com', updated_at = now() WHERE customer_id = 7")
    b.load_direct("customers", batch_time=T2)
    assert [v[3] for v in _versions(_history(b), 7)] == [email, "renamed@example.com"]
    hist_uri = b.uri("customers_history")
    for uri in (hist_uri, b.uri("customers")):  # the change feeds hold the key's ciphertext too
        assert {"renamed@example.com", "Renamed Person"} <= set(_feed_values(b, uri, 7)), uri

    forget_subject("customers", 7, b.storage())
    for uri in (hist_uri, b.uri("customers")):  # … which reads NULL once the key is shredded
        assert set(_feed_values(b, uri, 7)) == {None}, uri
    assert set(_feed_values(b, hist_uri, 8)) == set(_customer(seeded, 8))
    for version in range(DeltaTable(hist_uri).version() + 1):
        rows = _history(b, version).filter(pl.col(PK) == 7)
        assert rows.height >= 1
        assert set(rows["customer_name"]) == {None} and set(rows["email"]) == {None}, version
    others = _history(b).filter(pl.col(PK) == 8)
    assert others["email"].to_list() == [_customer(seeded, 8)[1]]
    secrets = [name, email, "Renamed Person", "renamed@example.com"]
    files = [p for p in Path(hist_uri).rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any("_change_data" in p.parts for p in files)
    leaks = [(p.name, s) for p in files for s in secrets if s.encode() in p.read_bytes()]
    assert not leaks


def test_the_history_asset_is_materialized_by_the_same_step(seeded: str, tmp_path: Path) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    asset = b.assets["bz_customers"]
    assert dg.AssetKey("bz_customers_history") in asset.keys
    assert asset.asset_deps[dg.AssetKey("bz_customers_history")] == {dg.AssetKey("bz_customers")}
    assert dg.AssetKey("bz_orders_history") not in b.assets["bz_orders"].keys  # history: false
    result = dg.materialize([asset], resources=b.resources)
    assert result.success
    events = {e.asset_key.to_user_string(): e.materialization.metadata
              for e in result.get_asset_materialization_events()}
    assert set(events) == {"bz_customers", "bz_customers_history"}
    assert events["bz_customers_history"]["delta_version"].value == b.version("customers_history")
    assert events["bz_customers_history"]["batch_id"].value == events["bz_customers"]["batch_id"].value
    assert _history(b).height == b.read("customers").height


def test_bronze_status_shows_the_history_tables(seeded: str, tmp_path: Path) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    b.load_direct("customers", batch_time=T1)
    query(seeded, "DELETE FROM tests.customers WHERE customer_id = 9")
    b.load_direct("customers", batch_time=T2)
    statuses = {s.table: s for s in bronze_status(b.storage())}
    rows = b.read("customers").height
    assert statuses["bz_customers"].history == {
        "table": "bz_customers_history", "versions": rows + 1, "current": rows,
        "delta_version": b.version("customers_history")}
    assert statuses["bz_products"].history == {"table": "bz_products_history", "versions": 0, "current": 0,
                                               "delta_version": None}
    assert statuses["bz_orders"].history is None
    text = render(list(statuses.values()))
    assert f"bz_customers_history: {rows + 1:,} versions, {rows:,} current, Delta version" in text
    assert "bz_products_history: 0 versions, 0 current (written by the next load of bz_products)" in text


def test_one_history_merge_per_commit_chunk(seeded: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    b = Bronze(seeded, tmp_path / "bronze")
    b.load_direct("customers", batch_time=T1)
    query(seeded, "UPDATE tests.customers SET email = 'c' || customer_id || '@example.com', "
                  "updated_at = now() WHERE customer_id IN (10, 20, 30, 40, 50)")
    monkeypatch.setenv("BRONZE_COMMIT_CHUNK_ROWS", "2")
    before = b.version("customers_history")
    result = b.load_direct("customers", batch_time=T2)
    assert (result.updated, result.commits, result.history_versions) == (5, 3, 5)
    log = [e for e in commit_history(DeltaTable(b.uri("customers_history"))) if e["version"] > before]
    batch = str(commit_history(b.table("customers"), 1)[0][BATCH_KEY])
    assert sorted((e[BATCH_KEY], e["bronze.chunk"], e["operation"]) for e in log) == [
        (batch, f"{i}/3", "MERGE") for i in range(3)]
    history = _history(b)
    for key in (10, 20, 30, 40, 50):
        assert [(v[0], v[1], v[3]) for v in _versions(history, key)][-1] == (T2, None, f"c{key}@example.com")


def test_a_partitioned_table_with_history_builds_one_step_of_both_assets() -> None:
    """A partitioned table may keep history too: both specs of the step share its partitions
    (Dagster refuses a step whose specs differ; the history table itself is not partitioned)."""
    from bronze_assets.defs.assets import build_bronze_asset

    orders = replace(CONTRACTS["orders"], history=True)
    asset = build_bronze_asset(orders)
    parts = {k.to_user_string(): asset.specs_by_key[k].partitions_def for k in asset.keys}
    assert set(parts) == {"bz_orders", "bz_orders_history"}
    assert parts["bz_orders_history"] == parts["bz_orders"] is not None


def test_restore_takes_the_history_back_with_its_table_and_repair_replays_both(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`bronze restore` restores bz_<name>_history to the version holding exactly the loads the
    restored version holds (later versions stay readable by time travel); `bronze reconcile
    --repair` then replays the source's present into both, as new versions."""
    from bronze_assets.lib.delta.timetravel import restore
    from bronze_assets.lib.governance.pii import pii_protection
    from bronze_assets.lib.reconcile.command import reconcile_and_repair

    b = Bronze(seeded, tmp_path / "bronze")
    contract = CONTRACTS["customers"]
    b.load_direct("customers", batch_time=T1)
    query(seeded, "UPDATE tests.customers SET email = 'moved@example.com', updated_at = now() "
                  "WHERE customer_id = 1")
    b.load_direct("customers", batch_time=T2)
    target, kept = b.version("customers"), _history(b)
    query(seeded, "UPDATE tests.customers SET email = 'again@example.com', updated_at = now() "
                  "WHERE customer_id = 1")
    query(seeded, "DELETE FROM tests.customers WHERE customer_id = 2")
    monkeypatch.setenv("BRONZE_COMMIT_CHUNK_ROWS", "1")  # two chunks: history and data commits interleave
    b.load_direct("customers", batch_time=T3)
    forget_subject("customers", 7, b.storage())
    monkeypatch.delenv("BRONZE_COMMIT_CHUNK_ROWS")

    plan = restore(b.storage(), contract, version=target, pii=pii_protection(contract, b.storage()))
    assert plan.history_table == "bz_customers_history" and plan.history_version is not None
    restored = _history(b)
    erased = pl.col(PK) == 7  # a restore never revives an erased person, in the history either
    assert set(restored.filter(erased)["email"]) == {None}
    assert restored.filter(~erased).equals(kept.filter(~erased))
    _assert_history_follows_its_table(b)

    run = reconcile_and_repair([contract], seeded, b.storage(), repair=True)
    assert run.tables[0].repair is not None
    history = _history(b)
    assert _versions(history, 1)[-1][3] == "again@example.com"
    assert [v[2] for v in _versions(history, 2)] == [False, True]
    assert [v[1] is None for v in _versions(history, 1)] == [False, False, True]
    _assert_history_follows_its_table(b)


def _assert_history_follows_its_table(b: Bronze) -> None:
    """One current version per key of bz_customers, with its hash and deletion state."""
    current = _history(b).filter(pl.col(VALID_TO).is_null()).select(PK, "record_hash", IS_DELETED)
    table = b.read("customers").select(PK, "record_hash", (pl.col("record_status") == "DELETED")
                                       .alias(IS_DELETED))
    assert current.sort(PK).equals(table.sort(PK))


def test_restore_to_before_the_history_began_seeds_it_again(seeded: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from bronze_assets.lib.delta.timetravel import restore
    from bronze_assets.lib.governance.pii import pii_protection

    b = Bronze(seeded, tmp_path / "bronze")
    _load_before_history(b, monkeypatch)
    query(seeded, "DELETE FROM tests.customers WHERE customer_id = 5")
    b.load_direct("customers", batch_time=T2)  # seeds the history, then its first versions
    assert _history(b).height == b.read("customers").height + 1
    contract = CONTRACTS["customers"]
    plan = restore(b.storage(), contract, version=0, pii=pii_protection(contract, b.storage()))
    assert plan.history_version is None and "re-seeded" in plan.describe()
    assert _history(b).height == b.read("customers").height
    _assert_history_follows_its_table(b)


def test_the_configured_parquet_codec_writes_every_file_of_a_table_and_its_history(
        seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``BRONZE_PARQUET_COMPRESSION`` is the codec of every file the local engine writes: the new
    table, its history seed, the MERGEs into both; the tables read back equal to the source."""
    import pyarrow.parquet as pq

    from bronze_assets_tests.bronze_helpers import assert_table_exact

    monkeypatch.setenv("BRONZE_PARQUET_COMPRESSION", "zstd:3")
    b = Bronze(seeded, tmp_path / "bronze")
    b.load_direct("customers", batch_time=T1)
    query(seeded, "UPDATE tests.customers SET email = 'moved@example.com', updated_at = now() "
                  "WHERE customer_id = 1")
    query(seeded, "DELETE FROM tests.customers WHERE customer_id = 2")
    assert b.load_direct("customers", batch_time=T2).history_versions == 2
    for table in ("customers", "customers_history"):
        files = DeltaTable(b.uri(table)).file_uris()  # the MERGE's (it rewrote the create's)
        assert files and all("-c000" in f for f in files)
        codecs = {pq.ParquetFile(f).metadata.row_group(0).column(i).compression
                  for f in files for i in range(pq.ParquetFile(f).metadata.num_columns)}
        assert codecs == {"ZSTD"}, (table, codecs)
    assert_table_exact(seeded, b.root, "customers")
    assert _versions(_history(b), 1)[-1][3] == "moved@example.com"
