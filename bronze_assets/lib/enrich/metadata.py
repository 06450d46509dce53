"""Bronze metadata columns (ARCHITECTURE §2.2) and the enrichment of one extracted batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import polars as pl
import pyarrow as pa

from bronze_assets.contracts import Contract
from bronze_assets.contracts.arrow import source_schema
from bronze_assets.lib.enrich.score import score_expr
from bronze_assets.lib.source.extract import INVALID_PREFIX
from bronze_assets.settings import SOURCE_SYSTEM

ACTIVE, DELETED, FORGOTTEN = "ACTIVE", "DELETED", "FORGOTTEN"
TS = pa.timestamp("us", tz="UTC")
METADATA_FIELDS: tuple[pa.Field, ...] = (
    pa.field("load_timestamp", TS),
    pa.field("update_timestamp", TS),
    pa.field("source_system", pa.string()),
    pa.field("record_status", pa.string()),
    pa.field("data_quality_score", pa.int32()),
    pa.field("batch_id", pa.string()),
    pa.field("record_hash", pa.string()),
)
METADATA_COLUMNS = tuple(f.name for f in METADATA_FIELDS)


def bronze_schema(contract: Contract, extra_columns: Sequence[str] = ()) -> pa.Schema:
    """Arrow schema of ``bz_<table>``: source columns, metadata columns, partition column, and
    any source columns the contract does not know yet (as text, policy ``addNewColumns``)."""
    fields = list(source_schema(contract)) + list(METADATA_FIELDS)
    if contract.partitioning.delta_column:
        fields.append(pa.field(contract.partitioning.delta_column, pa.date32()))
    fields += [pa.field(c, pa.string()) for c in extra_columns]
    return pa.schema(fields)


@dataclass(frozen=True)
class BatchContext:
    """Identity of one load: its UUID and time (which also fixes the 'load date' of §3)."""

    batch_id: str
    batch_time: datetime

    @property
    def load_date(self) -> date:
        return self.batch_time.astimezone(UTC).date()


def enrich(
    batch: pa.RecordBatch, contract: Contract, ctx: BatchContext, extra_columns: Sequence[str] = ()
) -> pa.RecordBatch:
    """Add score and metadata columns to an extracted batch (which carries ``record_hash``)."""
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    unreadable = {c.removeprefix(INVALID_PREFIX): pl.col(c)
                  for c in frame.columns if c.startswith(INVALID_PREFIX)}
    ts = pl.lit(ctx.batch_time.astimezone(UTC)).cast(pl.Datetime("us", "UTC"))
    frame = frame.with_columns(
        load_timestamp=ts,
        update_timestamp=ts,
        source_system=pl.lit(SOURCE_SYSTEM),
        record_status=pl.lit(ACTIVE),
        data_quality_score=score_expr(contract, ctx.load_date, unreadable),
        batch_id=pl.lit(ctx.batch_id),
    )
    schema = bronze_schema(contract, extra_columns)
    table = frame.select(schema.names).to_arrow()
    return pa.RecordBatch.from_arrays(
        [table.column(f.name).combine_chunks().cast(f.type) for f in schema], schema=schema
    )
