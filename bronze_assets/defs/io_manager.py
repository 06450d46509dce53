"""``BronzeDeltaIOManager``: the Dagster IO manager that MERGEs staged loads into ``bz_*`` tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

import dagster as dg
import pyarrow as pa
from pydantic import Field

from bronze_assets.defs.edge import edge_settings
from bronze_assets.lib.delta.commit_log import CommitLog
from bronze_assets.lib.delta.control import hold_appends, release_appends
from bronze_assets.lib.delta.query import read_columns
from bronze_assets.lib.delta.staging import StagedBatch
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.failures import failure_policy
from bronze_assets.lib.load.engine import LocalEngine
from bronze_assets.lib.load.lifecycle import commit
from bronze_assets.lib.secrets import protect_logs
from bronze_assets.settings import ENV_BRONZE_ROOT

PATH_KEYS = frozenset({"table_uri"})


def dagster_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Plain load metadata as Dagster metadata (``table_uri`` shown as a path)."""
    return {k: dg.MetadataValue.path(v) if k in PATH_KEYS else v for k, v in meta.items()}


def changed_partition_events(asset_key: dg.AssetKey, own: Iterable[str], meta: Mapping[str, Any],
                             instance: dg.DagsterInstance, storage: Storage) -> list[dg.AssetMaterialization]:
    """A materialization of every other partition a load changed rows in (late changes land
    where they live), so Dagster's partition status stays true; ``meta`` is the load's
    :meth:`LoadOutcome.metadata`. A partition never loaded (by a run of the instance, or by a
    load commit of the table) is not shown as loaded because one of its rows changed
    (ARCHITECTURE §2.4): its own run loads it."""
    own = set(own)
    changed = [p for p in str(meta.get("partitions_changed") or "").split(", ") if p and p not in own]
    if changed:
        materialized = instance.get_materialized_partitions(asset_key)
        ranges = CommitLog.read(storage.open(asset_key.path[-1]), None).loaded_ranges() \
            if any(p not in materialized for p in changed) else []
        changed = [p for p in changed if p in materialized
                   or any(first <= date.fromisoformat(p) < end for first, end in ranges)]
    return [dg.AssetMaterialization(
        asset_key=asset_key, partition=key,
        description=f"changed by the load of {', '.join(sorted(own)) or 'the table'}",
        metadata={"batch_id": meta["batch_id"], "table_uri": dg.MetadataValue.path(meta["table_uri"]),
                  "delta_version": meta["delta_version"]},
    ) for key in changed]


class BronzeStorage(dg.ConfigurableResource):
    """Where the bronze Delta tables live (local path or s3://, abfss://, gs:// URI)."""

    root: str | None = Field(default=None, description=f"unset means ${ENV_BRONZE_ROOT}.")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="delta-rs object-store options (credentials, region)."
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """A run or sensor that uses only the bronze root (maintenance, retention, the report, the
        alerts) masks the store's credentials and every configured secret in its logs too."""
        protect_logs(edge_settings(), self.storage_options)

    def storage(self) -> Storage:
        """The one storage value every load, check and operation of this resource uses, with
        the settings read from the environment (here, at the edge; ``lib`` reads none)."""
        settings = edge_settings()
        return Storage(self.root or settings.bronze_root, dict(self.storage_options), settings)


class BronzeDeltaIOManager(dg.ConfigurableIOManager):
    """Writes a :class:`StagedBatch` with the §2.3 MERGE; reads a bronze table as Arrow."""

    storage: BronzeStorage = Field(default_factory=BronzeStorage, description="the bronze root")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Masks the store's credentials in the run's logs; the run's control-table rows are
        committed at its end, one commit per table (:func:`hold_appends`). Only here: a resource
        with a teardown is a generator to Dagster, which a sensor's resources must not be."""
        protect_logs(edge_settings(), self.storage.storage_options)
        hold_appends()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        release_appends()


    def handle_output(self, context: dg.OutputContext, obj: StagedBatch) -> None:
        if not isinstance(obj, StagedBatch):
            raise TypeError(
                f"BronzeDeltaIOManager stores StagedBatch outputs only; asset "
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}"
            )
        # the one failure policy: one line, retried only when a retry can succeed (a duplicate
        # key cannot, a transient object-store error can); an interrupt stops the run
        with failure_policy(obj.contract.bronze_table):
            self._merge(context, obj)

    def _merge(self, context: dg.OutputContext, obj: StagedBatch) -> None:
        storage = self.storage.storage()
        outcome = commit(LocalEngine(storage), obj, storage, context.run_id)
        meta = outcome.metadata()
        context.add_output_metadata(dagster_metadata(meta))
        own = set(context.asset_partition_keys) if context.has_asset_partitions else set()
        for event in changed_partition_events(context.asset_key, own, meta, context.step_context.instance,
                                              storage):
            context.log_event(event)

    def load_input(self, context: dg.InputContext) -> pa.Table:
        table = context.upstream_output.asset_key.path[-1] if context.upstream_output else None
        if table is None:
            raise TypeError("BronzeDeltaIOManager loads bronze assets only")
        storage = self.storage.storage()
        dt = storage.open(table)
        if dt is None:
            raise FileNotFoundError(f"{table} has not been materialized yet ({storage.uri(table)})")
        return read_columns(dt, [f.name for f in dt.schema().to_arrow()])
