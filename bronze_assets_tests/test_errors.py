"""Errors that say what to do: they name the table (and column) and the fix."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS, get_contract
from bronze_assets.demo.generator import SeedOptions
from bronze_assets.lib.delta.merger import BronzeMerger
from bronze_assets.lib.delta.timetravel import TimeTravelError, plan_restore
from bronze_assets.lib.load import SourceTableMissingError, extract_and_stage
from bronze_assets.lib.source.extract import SourceReader
from bronze_assets.lib.source.postgres import SourceConnectionError
from bronze_assets.lib.source.window import LoadWindow
from bronze_assets_tests.bronze_helpers import Bronze
from bronze_assets_tests.conftest import AS_OF, SeedDb, query

pytestmark = pytest.mark.integration


def test_unknown_table_names_suggest_the_closest(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="did you mean orders"):
        get_contract("order")
    with pytest.raises(KeyError, match="did you mean bz_shipments"):
        get_contract("bz_shipment")
    for command in (["history", "bz_custmers"], ["restore", "bz_custmers", "--version", "0"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and "did you mean bz_customers" in result.output, command


def test_missing_source_table_names_it_and_the_fix(seed_db: SeedDb, tmp_path: Path) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0, as_of=AS_OF))
    query(fresh_dsn, "DROP TABLE tests.returns")
    with pytest.raises(SourceTableMissingError, match=r"no table tests\.returns .*bronze ddl"):
        extract_and_stage(CONTRACTS["returns"], fresh_dsn, tmp_path)
    b = Bronze(fresh_dsn, tmp_path / "bronze")
    result = dg.materialize([b.assets["bz_returns"]], resources=b.resources, raise_on_error=False,
                            partition_key=b.assets["bz_returns"].partitions_def.get_last_partition_key())
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "bronze ddl" in str(failure.event_specific_data.error)
    assert not (tmp_path / "bronze" / "bz_returns").exists(), "no half-created table"


def test_connection_lost_mid_read_says_what_happened(seed_db: SeedDb) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    with SourceReader(fresh_dsn, CONTRACTS["orders"], parallelism=1) as reader:
        (pid,) = reader.query("SELECT pg_backend_pid()")[0]
        query(fresh_dsn, f"SELECT pg_terminate_backend({pid})")
        with pytest.raises(SourceConnectionError) as info:
            list(reader.batches(LoadWindow()))
    message = str(info.value)
    assert "bz_orders" in message and "tests.orders" in message and "re-run" in message


def test_restore_before_the_first_version_names_the_valid_range(seed_db: SeedDb, tmp_path: Path) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    b = Bronze(fresh_dsn, tmp_path / "bronze")
    b.load_direct("products")
    with pytest.raises(TimeTravelError, match=r"oldest version still in the log is from .*--version 0\.\.0"):
        plan_restore(b.root, CONTRACTS["products"], timestamp=datetime(2000, 1, 1, tzinfo=UTC))
    with pytest.raises(TimeTravelError, match=r"version 5 does not exist \(0\.\.0\)"):
        plan_restore(b.root, CONTRACTS["products"], version=5)


def test_a_table_never_loaded_says_how_to_load_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_ROOT", str(tmp_path / "bronze"))
    (tmp_path / "bronze" / "bz_products" / "_delta_log").mkdir(parents=True)  # a first load that died
    for command in (["history", "bz_products"], ["restore", "bz_products", "--version", "0", "--dry-run"],
                    ["read", "products", "--role", "admin"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1, command
        assert "bz_products" in result.output and "--select bz_products" in result.output, result.output


def test_a_failed_first_write_leaves_no_half_created_table(seed_db: SeedDb, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    monkeypatch.setenv("BRONZE_CDC_TARGET_FILE_MB", "1")
    b = Bronze(fresh_dsn, tmp_path / "bronze")
    original = BronzeMerger._staged_chunk

    def dies_after_the_first_batch(self, staged, chunk, *layout):  # fault injection: the writer's input fails
        for batch in original(self, staged, chunk, *layout):
            yield batch
            raise OSError("disk went away")

    monkeypatch.setattr(BronzeMerger, "_staged_chunk", dies_after_the_first_batch)
    with pytest.raises(Exception, match="disk went away"):
        b.load_direct("order_details")
    assert not Path(b.uri("order_details")).exists()
    monkeypatch.setattr(BronzeMerger, "_staged_chunk", original)
    assert b.load_direct("order_details").inserted > 0, "the next load creates the table"
