"""Bronze metadata columns (ARCHITECTURE §2.2) and the enrichment of one extracted batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import polars as pl
import pyarrow as pa

from bronze_assets.contracts import ROW_KEY, Contract
from bronze_assets.contracts.arrow import source_schema
from bronze_assets.contracts.model import ROW_KEY_SEPARATOR
from bronze_assets.lib.enrich.score import score_columns, score_expr
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
ROW_KEY_FIELD = pa.field(ROW_KEY, pa.string())  # a keyless table's row identity (contracts.ROW_KEY)


def bronze_schema(contract: Contract, extra_columns: Sequence[str | pa.Field] = ()) -> pa.Schema:
    """Arrow schema of ``bz_<table>``: source columns, metadata columns, partition column, and
    any source columns the contract does not know yet (policy ``addNewColumns``: a name is a text
    column, a field has its own type, e.g. a landing file's inferred one)."""
    fields = list(source_schema(contract)) + list(METADATA_FIELDS)
    if contract.keyless:
        fields.append(ROW_KEY_FIELD)
    if contract.partitioning.delta_column:
        fields.append(pa.field(contract.partitioning.delta_column, pa.date32()))
    fields += [c if isinstance(c, pa.Field) else pa.field(c, pa.string()) for c in extra_columns]
    return pa.schema(fields)


@dataclass(frozen=True)
class BatchContext:
    """Identity of one load: its UUID and time (which also fixes the 'load date' of §3), and the
    ``source_system`` its rows record (§2.2: the database, or ``landing`` for landing files)."""

    batch_id: str
    batch_time: datetime
    source_system: str = SOURCE_SYSTEM

    @property
    def load_date(self) -> date:
        return self.batch_time.astimezone(UTC).date()


LOAD_CONSTANTS = ("load_timestamp", "update_timestamp", "source_system", "record_status", "batch_id")


def staged_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` (a bronze table's) without the columns that hold one value per load: they are
    not staged (they were half of the staged bytes); :func:`complete` adds them back."""
    return pa.schema([f for f in schema if f.name not in LOAD_CONSTANTS])


def complete(batch: pa.RecordBatch, schema: pa.Schema, ctx: BatchContext) -> pa.RecordBatch:
    """A staged ``batch`` with every column of the bronze ``schema``: the per-load constants of
    ``ctx`` (load/update timestamp, source system, ACTIVE, batch id) built directly in Arrow."""
    n, present = batch.num_rows, set(batch.schema.names)
    at = ctx.batch_time.astimezone(UTC)
    constants = {"load_timestamp": at, "update_timestamp": at, "source_system": ctx.source_system,
                 "record_status": ACTIVE, "batch_id": ctx.batch_id}
    return pa.RecordBatch.from_arrays(
        [batch.column(f.name) if f.name in present else pa.repeat(pa.scalar(constants[f.name], f.type), n)
         for f in schema], schema=schema)


def enrich(
    batch: pa.RecordBatch, contract: Contract, ctx: BatchContext, extra_columns: Sequence[str | pa.Field] = ()
) -> pa.RecordBatch:
    """Add the per-record score to an extracted batch (which carries ``record_hash``): the staged
    columns of the bronze table (:func:`staged_schema`; :func:`complete` adds the rest).

    Only the columns the score reads go through Polars; every other column is passed on as it is
    (already in its bronze type). A keyless table's ``record_key`` is not here: :class:`RowKeys`
    numbers the rows of the whole snapshot.
    """
    flags = [c for c in batch.schema.names if c.startswith(INVALID_PREFIX)]
    used = score_columns(contract) + flags
    frame = pl.from_arrow(batch.select(used or [0]))  # at least one column: it gives the height
    assert isinstance(frame, pl.DataFrame)
    unreadable = {c.removeprefix(INVALID_PREFIX): pl.col(c) for c in flags}
    score = frame.with_columns(score_expr(contract, ctx.load_date, unreadable).alias("data_quality_score")) \
        .get_column("data_quality_score").to_arrow()  # with_columns: a constant score gets every row too
    schema = staged_schema(bronze_schema(contract, extra_columns))
    schema = pa.schema([f for f in schema if f.name != ROW_KEY])
    columns = []
    for field in schema:
        column = score if field.name == "data_quality_score" else batch.column(field.name)
        columns.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class RowKeys:
    """The ``record_key`` of a keyless table's rows (:data:`~bronze_assets.contracts.ROW_KEY`):
    ``<record_hash>#<n>``, the n-th row of the snapshot with that hash. Batches of one snapshot go
    through one instance, in any order: identical rows are indistinguishable, so which copy gets
    which number does not matter, only that n copies get 1..n. Holds one count per distinct row."""

    def __init__(self) -> None:
        self.seen = pl.DataFrame(schema={"record_hash": pl.String, "_seen": pl.UInt32})

    def __call__(self, batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
        """``batch`` (enriched, without ``record_key``) as ``schema``'s columns, ``record_key`` added."""
        hashes = pl.from_arrow(batch.select(["record_hash"]))
        assert isinstance(hashes, pl.DataFrame)
        before = hashes.join(self.seen, on="record_hash", how="left", maintain_order="left")
        n = pl.int_range(pl.len(), dtype=pl.UInt32).over("record_hash") + pl.col("_seen").fill_null(0) + 1
        keys = before.select(pl.concat_str(pl.col("record_hash"), pl.lit(ROW_KEY_SEPARATOR),
                                           n.cast(pl.String)))
        counts = hashes.group_by("record_hash").agg(pl.len().cast(pl.UInt32).alias("_seen"))
        self.seen = pl.concat([self.seen, counts]).group_by("record_hash").agg(pl.col("_seen").sum())
        key = keys.to_series().to_arrow().cast(pa.string())
        columns = [key if f.name == ROW_KEY else batch.column(f.name) for f in schema]
        return pa.RecordBatch.from_arrays(columns, schema=schema)
