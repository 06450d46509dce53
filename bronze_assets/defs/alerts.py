"""KPI alert sensors (the seed's §10.1 thresholds), one per KPI, delivered through every channel.

Each sensor measures its KPI per subject (a table, a run, or the platform), compares it with
the threshold and keeps the set of firing subjects in its cursor: a breach is announced once
(FIRING) and its end once (RESOLVED). Channels: the Dagster log and ``bz_alerts`` always, email
and webhook when configured (lib/alerts). Sensors ship running only with
``BRONZE_SENSORS_RUNNING=1``, like the schedules.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow.compute as pc

from bronze_assets.contracts import CONTRACTS
from bronze_assets.defs.edge import edge_settings
from bronze_assets.defs.freshness import WINDOWS
from bronze_assets.defs.resources import BronzeStorage, PostgresSource
from bronze_assets.lib.alerts import Alert, AlertState, Severity, channels_for, deliver
from bronze_assets.lib.delta.control import AUDIT_LOG, FAILED, read_table
from bronze_assets.lib.delta.maintenance import storage_growth
from bronze_assets.settings import Settings

Clock = Callable[[], datetime]
Measure = Callable[[dg.SensorEvaluationContext, BronzeStorage, PostgresSource, datetime],
                   dict[str, float]]


@dataclass(frozen=True)
class Kpi:
    """A KPI: how to measure it per subject, and when a value breaches it."""

    name: str
    severity: Severity
    threshold: float
    unit: str
    measure: Measure
    above: bool = True  # breach when value > threshold (else when value < threshold)
    description: str = ""

    def breached(self, value: float) -> bool:
        return value > self.threshold if self.above else value < self.threshold


def _latest(context: dg.SensorEvaluationContext) -> dict[str, dg.EventLogEntry]:
    out = {}
    for c in CONTRACTS.values():
        event = context.instance.get_latest_materialization_event(dg.AssetKey(c.bronze_table))
        if event is not None:
            out[c.bronze_table] = event
    return out


def measure_freshness(context: dg.SensorEvaluationContext, _: BronzeStorage,
                      _source: PostgresSource, now: datetime) -> dict[str, float]:
    """Hours since each table's last materialization, for tables whose cadence allows 2 h."""
    hourly = {c.bronze_table for c in CONTRACTS.values() if WINDOWS[c.cadence][0] <= timedelta(hours=2)}
    return {t: (now.timestamp() - e.timestamp) / 3600 for t, e in _latest(context).items() if t in hourly}


def measure_quality(context: dg.SensorEvaluationContext, _: BronzeStorage,
                    _source: PostgresSource, now: datetime) -> dict[str, float]:
    """Average data_quality_score of each table's latest load."""
    out = {}
    for table, event in _latest(context).items():
        meta = event.asset_materialization.metadata if event.asset_materialization else {}
        if "avg_quality_score" in meta:
            out[table] = float(meta["avg_quality_score"].value)
    return out


def measure_run_hours(context: dg.SensorEvaluationContext, _: BronzeStorage,
                      _source: PostgresSource, now: datetime) -> dict[str, float]:
    """Hours each in-progress run has been running."""
    started = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    records = context.instance.get_run_records(filters=started)
    return {r.dagster_run.run_id: (now.timestamp() - r.start_time) / 3600 for r in records if r.start_time}


def measure_error_rate(_: dg.SensorEvaluationContext, bronze: BronzeStorage,
                       _source: PostgresSource, now: datetime) -> dict[str, float]:
    """Share (%) of loads in the last 24 h that failed, from ``bz_audit_log``."""
    audit = read_table(bronze.storage(), AUDIT_LOG)
    if not audit.num_rows:
        return {}
    recent = audit.filter(pc.and_(pc.equal(audit["operation_type"], "LOAD"),
                                  pc.greater_equal(audit["start_timestamp"], now - timedelta(hours=24))))
    recent = recent.filter(pc.less_equal(recent["start_timestamp"], now))
    if not recent.num_rows:
        return {}
    failed = pc.sum(pc.equal(recent["status"], FAILED)).as_py() or 0
    return {"platform": 100.0 * failed / recent.num_rows}


def measure_storage_growth(_: dg.SensorEvaluationContext, bronze: BronzeStorage,
                           _source: PostgresSource, now: datetime) -> dict[str, float]:
    """Growth (%) of each table's snapshot size over the last 24 h (Delta log)."""
    out = {}
    storage = bronze.storage()
    for c in CONTRACTS.values():
        if storage.open(c.bronze_table) is None:
            continue
        growth = storage_growth(storage, c.bronze_table, now=now).growth
        if growth is not None:
            out[c.bronze_table] = 100.0 * growth
    return out


SLOT_WAL_ALERT_MB = 1024.0  # WAL a CDC slot may hold on the source before the alert


def measure_cdc_slots(_: dg.SensorEvaluationContext, bronze: BronzeStorage, source: PostgresSource,
                      now: datetime) -> dict[str, float]:
    """WAL (MB) each CDC table's slot (this deployment's, by the bronze root) holds on the source;
    a slot whose WAL is no longer safe (``wal_status`` unreserved or lost) measures infinite.
    Tables without a slot are not measured."""
    from bronze_assets.lib.cdc import table_slot
    from bronze_assets.lib.source import replication

    out = {}
    dsn = source.resolved_dsn()
    storage = bronze.storage()
    for c in CONTRACTS.values():
        slot = replication.slot_state(dsn, c, table_slot(c, dsn, storage)) if c.cdc else None
        if slot is None:
            continue
        at_risk = slot.wal_status in ("unreserved", "lost")
        out[c.bronze_table] = float("inf") if at_risk else (slot.retained_wal_bytes or 0) / 2**20
    return out


KPIS: tuple[Kpi, ...] = (
    Kpi("data_freshness", Severity.WARNING, 2.0, "h", measure_freshness,
        description="hours since the last load of an hourly table"),
    Kpi("quality_score", Severity.WARNING, 80.0, "", measure_quality, above=False,
        description="average data_quality_score of the latest load"),
    Kpi("run_duration", Severity.CRITICAL, 1.0, "h", measure_run_hours,
        description="hours an end-to-end run has been running"),
    Kpi("error_rate", Severity.CRITICAL, 5.0, "%", measure_error_rate,
        description="failed loads in the last 24 h, % of all loads"),
    Kpi("storage_growth", Severity.WARNING, 20.0, "%", measure_storage_growth,
        description="daily growth of a table's storage"),
    Kpi("cdc_slot_wal", Severity.CRITICAL, SLOT_WAL_ALERT_MB, " MB", measure_cdc_slots,
        description="WAL a CDC replication slot holds on the source (inf: the slot is at risk or lost)"),
)


def _alert(kpi: Kpi, subject: str, value: float, state: AlertState) -> Alert:
    table = subject if subject.startswith("bz_") else None
    scope = table or ("run " + subject if kpi.name == "run_duration" else subject)
    comparison = ">" if kpi.above else "<"
    if state is AlertState.FIRING:
        message = (f"{kpi.name} on {scope}: {value:.1f}{kpi.unit} {comparison} {kpi.threshold:g}{kpi.unit} "
                   f"({kpi.description})")
    else:
        message = f"{kpi.name} on {scope} is back within {kpi.threshold:g}{kpi.unit}: {value:.1f}{kpi.unit}"
    return Alert(kpi.name, kpi.severity, message, state, table_name=table, value=round(value, 3),
                 threshold=kpi.threshold)


def build_kpi_sensor(kpi: Kpi, clock: Clock = lambda: datetime.now(UTC), settings: Settings | None = None,
                     ) -> dg.SensorDefinition:
    """A sensor that announces each breach of ``kpi`` once, and its resolution once; ``settings``:
    the definitions' (default: :func:`edge_settings`)."""
    running = (settings or edge_settings()).sensors_running

    @dg.sensor(
        name=f"kpi_{kpi.name}",
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        description=f"Alert when {kpi.description} is {'above' if kpi.above else 'below'} "
                    f"{kpi.threshold:g}{kpi.unit} ({kpi.severity}).",
    )
    def _sensor(context: dg.SensorEvaluationContext, bronze: BronzeStorage, source: PostgresSource,
                ) -> dg.SkipReason:
        firing: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
        values = kpi.measure(context, bronze, source, clock())
        now_firing = {s: v for s, v in values.items() if kpi.breached(v)}
        alerts = [_alert(kpi, s, v, AlertState.FIRING) for s, v in now_firing.items() if s not in firing]
        alerts += [_alert(kpi, s, values.get(s, firing[s]), AlertState.RESOLVED)
                   for s in firing if s not in now_firing]
        channels = channels_for(bronze.storage(), context.log)
        for alert in alerts:
            outcome = deliver(alert, channels)
            context.log.info(f"{alert.subject}: delivered {outcome}")
        context.update_cursor(json.dumps(now_firing))
        return dg.SkipReason(f"{len(values)} measured, {len(now_firing)} breaching, "
                             f"{len(alerts)} alerts sent")

    return _sensor


@dg.definitions
def kpi_sensors() -> dg.Definitions:
    settings = edge_settings()
    return dg.Definitions(sensors=[build_kpi_sensor(k, settings=settings) for k in KPIS])
