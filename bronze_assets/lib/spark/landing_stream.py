"""An Auto Loader micro-batch (Databricks) as the Spark engine's batch body reads landing records
(ARCHITECTURE §2.6): the same shape as :mod:`~bronze_assets.lib.spark.landing_read`'s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bronze_assets.lib.load.landing_records import RESCUED, SOURCE_FILE, plan_columns
from bronze_assets.lib.load.landing_schema import StoredColumn, new_column
from bronze_assets.lib.load.landing_source import FileSelection
from bronze_assets.lib.spark.landing_columns import json_type, quote, spark_type, spark_types
from bronze_assets.lib.spark.landing_read import CORRUPT, FILE_PATH, FILE_SIZE, FILE_TIME, METADATA

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass
class StreamedFiles(FileSelection):
    """A micro-batch of Auto Loader: its files (from ``_metadata``) and the batch itself."""

    frame: Any = None


def streamed_records(selection: StreamedFiles, evolved: list[StoredColumn], batch_id: str
                     ) -> tuple[DataFrame, list[StoredColumn]]:
    """Auto Loader's micro-batch as the batch body reads it — the contract's columns and the
    added ones in their types, ``_rescued_data``, ``_corrupt_record`` and ``_metadata`` — and the
    columns it adds (typed by hint, else by what Auto Loader inferred, as the local engine would)."""
    from pyspark.sql import functions as F

    contract, frame = selection.contract, selection.frame
    known = {*contract.column_names, *(c.name for c in evolved), RESCUED, SOURCE_FILE, CORRUPT, METADATA}
    new = {c for c in frame.columns if c not in known}
    columns = plan_columns(contract, [(f"{len(selection.files)} file(s) of an Auto Loader batch", new)],
                           [c.name for c in evolved], batch_id)
    kinds = {f.name: f.dataType.simpleString() for f in frame.schema.fields}  # bigint, not long
    added = [new_column(contract, c, {json_type(kinds[c])}, None)
             for c in columns.added]
    present = set(frame.columns)

    def column(name: str, spark_type: str) -> Any:
        value = F.col(quote(name)) if name in present else F.lit(None)
        return value.cast(spark_type).alias(name)

    types = spark_types(contract) | {c.name: spark_type(c.pg_type) for c in [*evolved, *added]}
    return frame.select(*[column(c, t) for c, t in types.items()],
                        column(RESCUED, "string"), column(CORRUPT, "string"),
                        F.struct(F.col(f"{METADATA}.{FILE_PATH}"), F.col(f"{METADATA}.{FILE_SIZE}"),
                                 F.col(f"{METADATA}.{FILE_TIME}")).alias(METADATA)), added
