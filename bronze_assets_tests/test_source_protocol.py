"""The source seam of the load lifecycle (README, "One load lifecycle"): a source the product does
not ship plugs into :class:`Lifecycle` as it is. Here: a tiny table frozen as it stood when the
read opened (an exported snapshot the read holds while the engine stages), read by the local
engine, its metadata on the report, acknowledged only after the commit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import psycopg2
import pytest
from deltalake import DeltaTable

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.control import AUDIT_LOG, FAILED, SUCCESS, read_table
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load.engine import LocalEngine
from bronze_assets.lib.load.lifecycle import Lifecycle, LoadRequest
from bronze_assets.lib.load.source import SourceRead
from bronze_assets.lib.quality.checks import KEY_UNIQUENESS
from bronze_assets.lib.source.introspect import discover_contract
from bronze_assets.lib.source.window import TableSelection
from bronze_assets_tests.conftest import query

pytestmark = pytest.mark.integration


@dataclass
class FrozenRead:
    """The table as it stood when the read opened; records the bronze table's version each time
    it is told its rows are committed."""

    selection: TableSelection
    bronze_uri: str
    acknowledged: list[int] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        return {"load_pattern": "frozen", "frozen_snapshot": self.selection.snapshot_id}

    def acknowledge(self) -> None:
        self.acknowledged.append(DeltaTable(self.bronze_uri).version())


@dataclass
class FrozenSource:
    """Every row of the table as it stood when the read opened: the read holds a transaction
    whose exported snapshot the engine reads in. ``meanwhile`` runs once the snapshot is taken (a
    writer committing while the load runs); ``hold=False`` ends the transaction before the
    engine stages (a source that breaks the protocol)."""

    dsn: str
    storage: Storage
    table: str
    meanwhile: Callable[[], None] = lambda: None
    hold: bool = True
    reads: list[FrozenRead] = field(default_factory=list)

    @contextmanager
    def open(self) -> Iterator[SourceRead]:
        with closing(psycopg2.connect(self.dsn)) as conn:
            conn.set_session(isolation_level="REPEATABLE READ")
            with conn.cursor() as cur:
                cur.execute("SELECT pg_export_snapshot()")
                (snapshot,) = cur.fetchone()
            self.meanwhile()
            if not self.hold:
                conn.rollback()
            selection = TableSelection(self.dsn, None, snapshot_id=snapshot)  # the whole table, frozen
            read = FrozenRead(selection, self.storage.uri(self.table))
            self.reads.append(read)
            yield read


@pytest.fixture
def parcels(fresh_dsn: str) -> Contract:
    query(fresh_dsn, "CREATE SCHEMA shop")
    query(fresh_dsn, "CREATE TABLE shop.parcels (id bigint PRIMARY KEY, status text NOT NULL, "
                     "updated_at timestamptz NOT NULL DEFAULT now())")
    query(fresh_dsn, "INSERT INTO shop.parcels (id, status) SELECT g, 'NEW' FROM generate_series(1, 5) g")
    return discover_contract(fresh_dsn, "parcels", "shop")


def _rows(storage: Storage, contract: Contract) -> dict[int, str]:
    frame = pl.from_arrow(DeltaTable(storage.uri(contract.bronze_table)).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return {r["id"]: r["status"] for r in frame.to_dicts()}


def _audit(storage: Storage, contract: Contract) -> list[tuple[str, str]]:
    rows = read_table(storage, AUDIT_LOG).to_pylist()
    return [(r["operation_type"], r["status"]) for r in rows if r["table_name"] == contract.bronze_table]


def test_a_source_of_its_own_plugs_into_the_lifecycle(fresh_dsn: str, parcels: Contract, tmp_path) -> None:
    storage = Storage(str(tmp_path / "bronze"))

    def writer() -> None:  # commits after the read opened: not part of this load
        query(fresh_dsn, "UPDATE shop.parcels SET status = 'LATE' WHERE id = 2")
        query(fresh_dsn, "INSERT INTO shop.parcels (id, status) VALUES (6, 'NEW')")

    source = FrozenSource(fresh_dsn, storage, parcels.bronze_table, meanwhile=writer)
    request = LoadRequest(parcels, None, checks=frozenset({KEY_UNIQUENESS}))
    report = Lifecycle(request, LocalEngine(storage), fresh_dsn, storage, source=source).run()

    (read,) = source.reads
    assert report.metadata["load_pattern"] == "frozen"  # the read's metadata, beside the load's own
    assert report.metadata["frozen_snapshot"] == read.selection.snapshot_id
    assert report.metadata["rows_read"] == report.metadata["rows_inserted"] == 5
    assert _rows(storage, parcels) == {i: "NEW" for i in range(1, 6)}  # staged in the read's snapshot
    version = DeltaTable(storage.uri(parcels.bronze_table)).version()
    assert read.acknowledged == [version]  # once, after the commit
    assert [c.name for c in report.checks] == [KEY_UNIQUENESS] and report.checks[0].passed
    assert _audit(storage, parcels) == [("LOAD", SUCCESS)]

    # the same lifecycle with the product's choice of source: the table's window, read live
    report = Lifecycle(request, LocalEngine(storage), fresh_dsn, storage).run()
    assert "load_pattern" not in report.metadata and report.metadata["rows_inserted"] == 1
    assert _rows(storage, parcels) == {1: "NEW", 2: "LATE", 3: "NEW", 4: "NEW", 5: "NEW", 6: "NEW"}


def test_a_read_closed_before_the_engine_stages_fails_audited_and_is_never_acknowledged(
        fresh_dsn: str, parcels: Contract, tmp_path) -> None:
    storage = Storage(str(tmp_path / "bronze"))
    source = FrozenSource(fresh_dsn, storage, parcels.bronze_table, hold=False)
    lifecycle = Lifecycle(LoadRequest(parcels, None), LocalEngine(storage), fresh_dsn, storage, source=source)
    with pytest.raises(Exception, match="snapshot"):
        lifecycle.run()
    (read,) = source.reads
    assert read.acknowledged == [] and storage.open(parcels.bronze_table) is None
    assert _audit(storage, parcels) == [("LOAD", FAILED)]
