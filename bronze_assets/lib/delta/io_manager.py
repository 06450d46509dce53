"""``BronzeDeltaIOManager``: the Dagster IO manager that MERGEs staged loads into ``bz_*`` tables."""

from __future__ import annotations

import json
from functools import partial

import dagster as dg
import pyarrow as pa
from pydantic import Field

from bronze_assets.lib.delta.control import FAILED, load_record, record_checkpoint, record_load
from bronze_assets.lib.delta.merge import BronzeMerger, DuplicateKeyError, open_table, read_columns
from bronze_assets.lib.delta.staging import StagedBatch
from bronze_assets.settings import ENV_BRONZE_ROOT, bronze_root


class BronzeStorage(dg.ConfigurableResource):
    """Where the bronze Delta tables live (local path or s3://, abfss://, gs:// URI)."""

    root: str | None = Field(default=None, description=f"unset means ${ENV_BRONZE_ROOT}.")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="delta-rs object-store options (credentials, region)."
    )

    def resolved_root(self) -> str:
        return (self.root or bronze_root()).rstrip("/")

    def table_uri(self, table: str) -> str:
        return f"{self.resolved_root()}/{table}"


class BronzeDeltaIOManager(dg.ConfigurableIOManager):
    """Writes a :class:`StagedBatch` with the §2.3 MERGE; reads a bronze table as Arrow."""

    storage: BronzeStorage = Field(default_factory=BronzeStorage, description="the bronze root")

    @property
    def storage_options(self) -> dict[str, str]:
        return self.storage.storage_options

    def table_uri(self, table: str) -> str:
        return self.storage.table_uri(table)

    def handle_output(self, context: dg.OutputContext, obj: StagedBatch) -> None:
        if not isinstance(obj, StagedBatch):
            raise TypeError(
                f"BronzeDeltaIOManager stores StagedBatch outputs only; asset "
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}"
            )
        uri = self.table_uri(obj.contract.bronze_table)
        root = self.storage.resolved_root()
        contract = obj.contract
        load = load_record(contract, context.run_id, obj.ctx.batch_time, rows_read=obj.rows)
        try:
            checkpoint = partial(record_checkpoint, root, job_id=context.run_id,
                                 storage_options=self.storage_options)
            result = BronzeMerger(contract, uri, self.storage_options).merge(obj, on_commit=checkpoint)
        except Exception as exc:
            load.status, load.error = FAILED, f"MERGE failed: {type(exc).__name__}: {exc}"
            load.seconds = obj.extract_seconds
            record_load(root, load, self.storage_options)
            if isinstance(exc, DuplicateKeyError):  # retrying cannot fix the data
                raise dg.Failure(str(exc), allow_retries=False) from None
            raise
        finally:
            if not obj.keep_after_merge:
                obj.cleanup()
        load.seconds = obj.extract_seconds + result.merge_seconds
        load.records_affected = result.inserted + result.updated + result.soft_deleted
        load.storage_bytes = result.size_bytes
        load.details = json.dumps({
            "batch_id": obj.ctx.batch_id, "window": obj.window, "inserted": result.inserted,
            "updated": result.updated, "unchanged": result.unchanged, "soft_deleted": result.soft_deleted,
            "delta_version": result.version, "avg_quality_score": result.avg_quality_score,
        })
        record_load(root, load, self.storage_options)
        meta: dict[str, object] = {
            "table_uri": dg.MetadataValue.path(uri),
            "batch_id": obj.ctx.batch_id,
            "window": obj.window,
            "rows_read": result.rows_read,
            "rows_inserted": result.inserted,
            "rows_updated": result.updated,
            "rows_unchanged": result.unchanged,
            "rows_soft_deleted": result.soft_deleted,
            "rows_forgotten_skipped": result.forgotten_skipped,
            "committed": result.committed,
            "commits": result.commits,
            "rows_skipped_by_checkpoint": result.rows_skipped_by_checkpoint,
            "delta_version": result.version if result.version is not None else -1,
            "size_bytes": result.size_bytes,
            "num_files": result.num_files,
            "extract_seconds": obj.extract_seconds,
            "merge_seconds": result.merge_seconds,
            "duration_seconds": round(obj.extract_seconds + result.merge_seconds, 3),
        }
        if result.avg_quality_score is not None:
            meta["avg_quality_score"] = result.avg_quality_score
        if result.resumed_batch_id is not None:
            meta["resumed_batch_id"] = result.resumed_batch_id
        if obj.watermark is not None:
            meta["watermark"] = obj.watermark.isoformat()
        if result.rehashed_v1:
            meta["rows_rehashed_v1"] = result.rehashed_v1
        own = set(context.asset_partition_keys) if context.has_asset_partitions else set()
        others = [p for p in result.partitions if p not in own]
        if result.partitions:
            meta["partitions_changed"] = ", ".join(result.partitions)
        context.add_output_metadata(meta)
        for key in others:  # rows changed where they live: Dagster's partition status stays true
            context.log_event(dg.AssetMaterialization(
                asset_key=context.asset_key, partition=key,
                description=f"changed by the load of {', '.join(sorted(own)) or 'the table'}",
                metadata={"batch_id": obj.ctx.batch_id, "table_uri": dg.MetadataValue.path(uri),
                          "delta_version": meta["delta_version"]},
            ))

    def load_input(self, context: dg.InputContext) -> pa.Table:
        table = context.upstream_output.asset_key.path[-1] if context.upstream_output else None
        if table is None:
            raise TypeError("BronzeDeltaIOManager loads bronze assets only")
        dt = open_table(self.table_uri(table), self.storage_options)
        if dt is None:
            raise FileNotFoundError(f"{table} has not been materialized yet ({self.table_uri(table)})")
        return read_columns(dt, [f.name for f in dt.schema().to_arrow()])
