"""Auto Loader on Databricks (ARCHITECTURE §2.6): a landing contract mapped 1:1 onto the
``cloudFiles`` options, and the stream (``Trigger.AvailableNow``, ``foreachBatch``) whose batch
body is the Spark engine's landing load through the one lifecycle.

Open-source Spark has no ``cloudFiles`` source: :func:`autoloader_options` is unit-tested against
§2.6, :func:`micro_batch_body` runs for real on local Spark over a batch read with the same
format options (:func:`format_options`), and only :func:`land_with_autoloader` (the stream
itself) needs a Databricks runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bronze_assets.contracts import Contract
from bronze_assets.contracts.arrow import arrow_type
from bronze_assets.contracts.model import Evolution, LandingFormat
from bronze_assets.contracts.types import PgType
from bronze_assets.lib.delta.landing_ledger import ingested
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load.landing_records import RESCUED
from bronze_assets.lib.load.landing_schema import schema_location
from bronze_assets.lib.load.landing_source import LandingFile, LandingRead, landing_folder
from bronze_assets.lib.load.lifecycle import Lifecycle, LoadReport, LoadRequest
from bronze_assets.lib.spark.landing_columns import spark_types
from bronze_assets.lib.spark.landing_read import (
    CORRUPT,
    FILE_PATH,
    FILE_SIZE,
    FILE_TIME,
    METADATA,
    STRICT_JSON,
)
from bronze_assets.lib.spark.landing_stream import StreamedFiles

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from bronze_assets.lib.spark.engine import SparkEngine

log = logging.getLogger(__name__)

RESTARTS = 3  # Auto Loader stops its stream on a new column under addNewColumns: restarted in the run


def format_options(contract: Contract) -> dict[str, str]:
    """The reader options of the contract's format, the same for Auto Loader and Spark's plain
    readers: strict JSON, bad lines kept in ``_corrupt_record``; CSV with a header row."""
    landing = contract.landing
    assert landing is not None
    if landing.format is LandingFormat.CSV:
        return {"header": "true", "mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    if landing.format is LandingFormat.PARQUET:
        return {}
    return {**STRICT_JSON, "columnNameOfCorruptRecord": CORRUPT}


def schema_hints(contract: Contract) -> str:
    """``cloudFiles.schemaHints``: the contract's columns in their Spark types (so a value that
    does not parse is rescued, never a column whose type changes), then the contract's hints."""
    landing = contract.landing
    assert landing is not None
    hints = dict(spark_types(contract))
    for column, pg in landing.schema_hints:
        from pyspark.sql.pandas.types import from_arrow_type

        hints.setdefault(column, from_arrow_type(arrow_type(PgType.parse(pg))).simpleString())
    return ", ".join(f"`{c}` {t.upper()}" for c, t in hints.items())


def autoloader_options(contract: Contract, storage: Storage) -> dict[str, str]:
    """The ``cloudFiles`` options of a landing contract (§2.6, one to one), then its format's."""
    landing = contract.landing
    if landing is None:
        raise ValueError(f"{contract.bronze_table} is not a landing table (its contract has no 'landing')")
    return {
        "cloudFiles.format": landing.format.value,
        "cloudFiles.schemaLocation": schema_location(storage, contract),
        "cloudFiles.inferColumnTypes": str(landing.infer_column_types).lower(),
        "cloudFiles.schemaEvolutionMode": landing.evolution.value,
        "cloudFiles.schemaHints": schema_hints(contract),
        "cloudFiles.allowOverwrites": str(landing.allow_overwrites).lower(),
        "cloudFiles.includeExistingFiles": "true",
        "rescuedDataColumn": RESCUED,
        **format_options(contract),
    }


def checkpoint_location(storage: Storage, contract: Contract) -> str:
    """Where the stream keeps its checkpoint (the files Auto Loader has seen)."""
    return f"{storage.root.rstrip('/')}/_checkpoints/{contract.bronze_table}/autoloader"


def micro_batch_selection(contract: Contract, storage: Storage, frame: DataFrame) -> StreamedFiles:
    """The micro-batch ``frame`` as a selection of its files, without the files the ledger already
    holds (a batch Auto Loader delivers again after a kill lands nothing twice)."""
    from pyspark.sql import functions as F

    done = ingested(storage, contract.bronze_table)
    facts = frame.select(F.col(f"{METADATA}.{FILE_PATH}"), F.col(f"{METADATA}.{FILE_SIZE}"),
                         F.col(f"{METADATA}.{FILE_TIME}")).distinct().collect()
    files = sorted((LandingFile(path, path, int(size), mtime) for path, size, mtime in facts
                    if path not in done.files), key=lambda f: (f.modification_time, f.uri))
    fresh = frame.filter(F.col(f"{METADATA}.{FILE_PATH}").isin([f.uri for f in files]))
    return StreamedFiles(contract, None, files, table_version=done.table_version, frame=fresh)


def micro_batch_body(run: Callable[[StreamedFiles], LoadReport], contract: Contract, storage: Storage,
                     reports: list[LoadReport]) -> Callable[[DataFrame, int], None]:
    """The ``foreachBatch`` function: each micro-batch is one load through the lifecycle
    (``run`` lands a selection), its report kept in ``reports``."""

    def body(frame: DataFrame, batch: int) -> None:
        selection = micro_batch_selection(contract, storage, frame)
        if selection.files:
            reports.append(run(selection))
        else:
            log.info("%s: Auto Loader batch %d holds only files already landed", contract.bronze_table, batch)

    return body


def land_with_autoloader(spark: SparkSession, contract: Contract, storage: Storage,
                         body: Callable[[DataFrame, int], None]) -> None:
    """Run Auto Loader over the table's landing folder until every file available now is landed
    (``Trigger.AvailableNow``), each micro-batch through ``body``; a stream that stops on a new
    column (addNewColumns) is started again, up to :data:`RESTARTS` times, so the run does not fail."""
    assert contract.landing is not None
    for attempt in range(RESTARTS + 1):
        stream = spark.readStream.format("cloudFiles").options(**autoloader_options(contract, storage)) \
            .load(landing_folder(storage.settings.landing_root, contract)).select("*", METADATA)
        query = stream.writeStream.foreachBatch(body).trigger(availableNow=True) \
            .option("checkpointLocation", checkpoint_location(storage, contract)).start()
        try:
            query.awaitTermination()
            return
        except Exception as exc:  # Auto Loader's UnknownFieldException: it recorded the new schema
            evolving = contract.landing.evolution is Evolution.ADD_NEW_COLUMNS
            if not evolving or "UNKNOWN_FIELD" not in str(exc).upper() or attempt == RESTARTS:
                raise
            log.info("%s: Auto Loader found new columns; restarting its stream with them",
                     contract.bronze_table)


@dataclass(frozen=True)
class MicroBatchSource:
    """The lifecycle's source for one micro-batch: its files, acknowledged like a listing's
    (the ledger rows, already in the data commit, copied into ``bz_landing_files``)."""

    selection: StreamedFiles
    storage: Storage

    @contextmanager
    def open(self) -> Iterator[LandingRead]:
        yield LandingRead(self.selection, self.storage)


def run_autoloader(request: LoadRequest, engine: SparkEngine, storage: Storage, job_id: str | None = None,
                   logger: logging.Logger | None = None) -> LoadReport:
    """Land the table's new files with Auto Loader on Databricks, each micro-batch one load of the
    lifecycle on ``engine``; the report of the last one (a run with no new file: an ordinary
    listing's, which names the files waiting or changed)."""
    reports: list[LoadReport] = []

    def run(selection: StreamedFiles) -> LoadReport:
        return Lifecycle(request, engine, "", storage, job_id, logger,
                         source=MicroBatchSource(selection, storage)).run()

    land_with_autoloader(engine.loader.spark, request.contract, storage,
                         micro_batch_body(run, request.contract, storage, reports))
    if not reports:
        return Lifecycle(request, engine, "", storage, job_id, logger).run()
    return reports[-1]
