"""``bronze_assets.LandingFiles``: the Dagster component of the landing-zone tables (ARCHITECTURE
§2.6; the shipped one is ``defs/landing/``, table ``shipment_events``).

Its file declares tables as a ``BronzeTables`` file does, each with ``landing`` set
(:mod:`bronze_assets.contracts.tablefile` parses both). Per table it builds the asset ``bz_<name>``
(the same factory, checks, daily ``load_date`` partitions and freshness as the database tables; its
source is the table's new files, chosen by the load lifecycle) and the sensor ``bz_<name>_files``,
which requests one run of today's partition when files wait that the ledger does not hold (shipped
stopped unless ``BRONZE_SENSORS_RUNNING=1``).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import dagster as dg

from bronze_assets.contracts import Contract
from bronze_assets.contracts.tablefile import TablesFile, TableSpec, contracts_of
from bronze_assets.defs.assets import build_bronze_asset
from bronze_assets.defs.edge import edge_settings
from bronze_assets.defs.resources import BronzeStorage
from bronze_assets.lib.load.landing_source import list_new_files
from bronze_assets.settings import Settings


def build_landing_sensor(contract: Contract, settings: Settings | None = None) -> dg.SensorDefinition:
    """``bz_<name>_files``: one run per tick for all the table's new files (the run lands every
    file not in the ledger, whichever partition it runs). ``settings``: the definitions' (default:
    :func:`edge_settings`)."""
    running = (settings or edge_settings()).sensors_running

    @dg.sensor(
        name=f"{contract.bronze_table}_files",
        asset_selection=[contract.bronze_table],
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        description=f"Land new files of {contract.bronze_table} from $BRONZE_LANDING_ROOT/{contract.name}/.",
    )
    def _sensor(context: dg.SensorEvaluationContext, bronze: BronzeStorage) -> dg.SensorResult:
        found = list_new_files(contract, bronze.storage())
        if not found.files:
            return dg.SensorResult(skip_reason=dg.SkipReason(
                f"no new files ({len(found.skipped_recent)} still being written)"))
        key = hashlib.sha256("\n".join(f.uri for f in found.files).encode()).hexdigest()[:16]
        today = datetime.now(UTC).date().isoformat()
        context.log.info(f"{contract.bronze_table}: {len(found.files)} new file(s)")
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"{contract.bronze_table}-{key}",
                                                           partition_key=today)])

    return _sensor


class LandingFiles(dg.Component, dg.Resolvable, dg.Model):
    """Landing-zone tables declared in YAML: per table the columns, key, quality rules, foreign
    keys and ``landing`` (format, schema hints, evolution …). Builds the asset ``bz_<name>`` and
    the sensor ``bz_<name>_files`` of each."""

    tables: dict[str, TableSpec] = {}  # noqa: RUF012 (pydantic copies field defaults)

    def contracts(self) -> list[Contract]:
        return contracts_of(TablesFile(tables=self.tables))

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        contracts = self.contracts()
        for c in contracts:
            if c.landing is None:
                raise ValueError(f"table {c.name}: a LandingFiles entry needs 'landing' (its format …)")
        settings = edge_settings()  # read once for these tables' assets and sensors
        return dg.Definitions(assets=[build_bronze_asset(c, settings=settings) for c in contracts],
                              sensors=[build_landing_sensor(c, settings) for c in contracts])
