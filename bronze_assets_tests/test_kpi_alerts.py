"""Each KPI sensor fires once on a crafted breach and once on recovery, through real channels."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import dagster as dg
import pyarrow as pa
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.test_utils import create_run_for_test
from deltalake import DeltaTable, write_deltalake

from bronze_assets.defs.alerts import KPIS, Kpi, build_kpi_sensor
from bronze_assets.defs.resources import BronzeStorage, PostgresSource
from bronze_assets.lib.delta.control import ALERTS, AUDIT_LOG, append_rows, read_table
from bronze_assets_tests.conftest import SeedDb


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hook.received = []
    monkeypatch.setenv("BRONZE_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hooks/T0K3N")
    yield Hook.received
    server.shutdown()


class Harness:
    """One KPI sensor evaluated tick by tick against a test instance, with a movable clock."""

    def __init__(self, kpi: str | Kpi, instance: dg.DagsterInstance, root: Path,
                 dsn: str | None = None) -> None:
        self.clock, self.instance, self.root, self.dsn = Clock(), instance, root, dsn
        chosen = kpi if isinstance(kpi, Kpi) else next(k for k in KPIS if k.name == kpi)
        self.sensor = build_kpi_sensor(chosen, clock=self.clock)
        self.cursor: str | None = None

    def tick(self) -> None:
        ctx = dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                      resources={"bronze": BronzeStorage(root=str(self.root)),
                                                 "source": PostgresSource(dsn=self.dsn)})
        self.sensor(ctx)
        self.cursor = ctx.cursor

    def alerts(self) -> list[dict]:
        return sorted(read_table(str(self.root), ALERTS).to_pylist(), key=lambda a: a["created_at"])


def _states(alerts: list[dict]) -> list[tuple[str, str | None]]:
    return [(a["state"], a["table_name"]) for a in alerts]


def _materialize(instance: dg.DagsterInstance, table: str, **metadata: float) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(table, metadata=metadata))


def test_freshness_fires_once_and_resolves(tmp_path: Path, webhook: list[dict]) -> None:
    with contextlib.nullcontext(dg.DagsterInstance.ephemeral()) as instance:
        h = Harness("data_freshness", instance, tmp_path)
        _materialize(instance, "bz_inventory")
        _materialize(instance, "bz_products")  # daily: not judged by the 2 h KPI
        h.tick()
        assert h.alerts() == []
        h.clock.now += timedelta(hours=3)
        h.tick()
        h.tick()  # still stale: no second alert
        assert _states(h.alerts()) == [("FIRING", "bz_inventory")]
        _materialize(instance, "bz_inventory")
        h.clock.now = datetime.now(UTC) + timedelta(minutes=10)
        h.tick()
        h.tick()
        assert _states(h.alerts()) == [("FIRING", "bz_inventory"), ("RESOLVED", "bz_inventory")]
    assert [m["text"].splitlines()[0] for m in webhook] == [
        "[bronze] WARNING FIRING data_freshness on bz_inventory",
        "[bronze] WARNING RESOLVED data_freshness on bz_inventory",
    ]
    assert "T0K3N" not in json.dumps(h.alerts(), default=str), "the webhook token is a secret"
    assert json.loads(h.alerts()[0]["channels"])["webhook"] == "ok"


def test_quality_below_80_fires_once_and_resolves(tmp_path: Path, webhook: list[dict]) -> None:
    with contextlib.nullcontext(dg.DagsterInstance.ephemeral()) as instance:
        h = Harness("quality_score", instance, tmp_path)
        _materialize(instance, "bz_orders", avg_quality_score=93.0)
        h.tick()
        _materialize(instance, "bz_orders", avg_quality_score=71.5)
        h.tick()
        h.tick()
        _materialize(instance, "bz_orders", avg_quality_score=88.0)
        h.tick()
        h.tick()
    alerts = h.alerts()
    assert _states(alerts) == [("FIRING", "bz_orders"), ("RESOLVED", "bz_orders")]
    assert alerts[0]["value"] == 71.5 and alerts[0]["threshold"] == 80 and alerts[0]["severity"] == "WARNING"
    assert len(webhook) == 2


def test_run_over_one_hour_is_critical_once_and_resolves_when_it_ends(tmp_path: Path) -> None:
    with contextlib.nullcontext(dg.DagsterInstance.ephemeral()) as instance:
        h = Harness("run_duration", instance, tmp_path)
        run = create_run_for_test(instance, job_name="bronze_hourly_by_day",
                                  status=dg.DagsterRunStatus.NOT_STARTED)
        instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_START.value, job_name=run.job_name),
                                      run_id=run.run_id)
        h.tick()
        h.clock.now += timedelta(minutes=61)
        h.tick()
        h.tick()
        instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_SUCCESS.value, job_name=run.job_name),
                                      run_id=run.run_id)
        h.tick()
        h.tick()
    alerts = h.alerts()
    assert [(a["state"], a["severity"]) for a in alerts] == [("FIRING", "CRITICAL"), ("RESOLVED", "CRITICAL")]
    assert run.run_id in alerts[0]["message"]


def _load_rows(status: str, n: int, when: datetime) -> list[dict]:
    return [{"table_name": "bz_orders", "operation_type": "LOAD", "status": status,
             "start_timestamp": when, "end_timestamp": when} for _ in range(n)]


def test_error_rate_over_5_percent_fires_once_and_resolves(tmp_path: Path) -> None:
    root = str(tmp_path)
    with contextlib.nullcontext(dg.DagsterInstance.ephemeral()) as instance:
        h = Harness("error_rate", instance, tmp_path)
        now = h.clock.now
        append_rows(root, AUDIT_LOG, _load_rows("SUCCESS", 95, now - timedelta(hours=2)))
        append_rows(root, AUDIT_LOG, _load_rows("FAILED", 5, now - timedelta(hours=2)))
        h.tick()  # exactly 5 %: not above
        append_rows(root, AUDIT_LOG, _load_rows("FAILED", 1, now - timedelta(hours=1)))
        h.tick()
        h.tick()
        h.clock.now += timedelta(hours=23, minutes=30)  # the failures age out of the 24 h window
        append_rows(root, AUDIT_LOG, _load_rows("SUCCESS", 10, h.clock.now - timedelta(minutes=5)))
        h.tick()
        h.tick()
    alerts = h.alerts()
    assert _states(alerts) == [("FIRING", None), ("RESOLVED", None)]
    assert alerts[0]["value"] == pytest.approx(100 * 6 / 101, abs=0.01)


def test_storage_growth_over_20_percent_fires_once_and_resolves(tmp_path: Path) -> None:
    uri = str(tmp_path / "bz_returns")
    write_deltalake(uri, pa.table({"x": list(range(10_000))}))
    time.sleep(0.05)
    write_deltalake(uri, pa.table({"x": list(range(5_000))}), mode="append")  # +~50 %
    first, second = (datetime.fromtimestamp(h["timestamp"] / 1000, UTC)
                     for h in reversed(DeltaTable(uri).history()))
    between = first + (second - first) / 2
    with contextlib.nullcontext(dg.DagsterInstance.ephemeral()) as instance:
        h = Harness("storage_growth", instance, tmp_path)
        h.clock.now = second + timedelta(minutes=1)
        h.tick()  # the table is younger than a day: nothing to compare with yet
        assert h.alerts() == []
        h.clock.now = between + timedelta(hours=24)  # a day after the first commit, before the second
        h.tick()
        h.tick()
        h.clock.now = second + timedelta(hours=48)  # a day without growth
        h.tick()
        h.tick()
    assert _states(h.alerts()) == [("FIRING", "bz_returns"), ("RESOLVED", "bz_returns")]
    assert h.alerts()[0]["value"] > 20


def test_a_cdc_slot_holding_wal_fires_once_and_resolves_once(
        seed_db: SeedDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.demo.generator import SeedOptions
    from bronze_assets.lib.cdc import cdc_load
    from bronze_assets_tests.conftest import AS_OF, query

    # slots are named per deployment; the sensor watches those of $BRONZE_ROOT's (the resource's root)
    monkeypatch.setenv("BRONZE_ROOT", str(tmp_path))
    fresh_dsn = seed_db(SeedOptions(scale=0.01, as_of=AS_OF))
    orders = CONTRACTS["orders"]
    cdc_load(orders, fresh_dsn, tmp_path)
    kpi = replace(next(k for k in KPIS if k.name == "cdc_slot_wal"), threshold=1.0)  # 1 MB for the test
    with dg.instance_for_test() as instance:
        h = Harness(kpi, instance, tmp_path, fresh_dsn)
        h.tick()
        assert h.alerts() == []
        query(fresh_dsn, "CREATE TABLE tests.filler AS SELECT g, repeat('x', 200) AS pad "
                         "FROM generate_series(1, 40000) g")  # ≈ 10 MB of WAL the slot holds
        h.tick()
        h.tick()  # still breaching: no second alert
        cdc_load(orders, fresh_dsn, tmp_path)  # bronze reads on: the slot lets go of its WAL
        query(fresh_dsn, "CHECKPOINT")
        cdc_load(orders, fresh_dsn, tmp_path)
        h.tick()
        states = _states(h.alerts())
    assert states == [("FIRING", "bz_orders"), ("RESOLVED", "bz_orders")]
