"""A ranged run's per-partition materializations written to an ephemeral instance as one batch
(``bronze demo``'s runs): what the instance holds afterwards is what Dagster's own per-event
writes leave — every partition materialized with its metadata, the run's events in order, the
asset's latest materialization the last partition's — and every watcher hears every event."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from bronze_assets.demo import event_writes
from bronze_assets.demo.event_writes import batched_event_writes
from bronze_assets.demo.run import DAGSTER_SETTINGS, dagster_settings

MONTHS = dg.MonthlyPartitionsDefinition("2024-01-01", end_offset=1)
METADATA = {"rows_read": 12, "table_uri": dg.MetadataValue.path("/tmp/bz_a"), "window": "every row"}


@dg.asset(partitions_def=MONTHS)
def monthly() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=METADATA)


@dg.asset
def plain() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=METADATA)


def _run(batched: bool) -> tuple[dg.DagsterInstance, dg.ExecuteInProcessResult, list[str]]:
    instance = dg.DagsterInstance.ephemeral()
    keys = MONTHS.get_partition_keys()[:7]
    tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    with dagster_settings():
        assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == DAGSTER_SETTINGS["DAGSTER_EVENT_BATCH_SIZE"]
        with batched_event_writes(instance) if batched else nullcontext():
            result = dg.materialize([monthly, plain], instance=instance, tags=tags, selection=[monthly])
            dg.materialize([plain], instance=instance)
    assert result.success
    return instance, result, keys


def _stored(instance: dg.DagsterInstance, run_id: str) -> dict[str, object]:
    records = instance.fetch_materializations(monthly.key, limit=100).records
    latest = instance.get_latest_materialization_event(monthly.key)
    entry = instance.get_asset_records([monthly.key])[0].asset_entry
    logs = instance.all_logs(run_id)
    return {
        "partitions": sorted(r.partition_key for r in records),
        "metadata": {r.partition_key: {k: v.value for k, v in r.asset_materialization.metadata.items()}
                     for r in records},
        "ids ascending": [r.storage_id for r in reversed(records)] == sorted(r.storage_id for r in records),
        "materialized": sorted(instance.get_materialized_partitions(monthly.key)),
        "latest": (latest.dagster_event.partition if latest else None),
        "latest is newest": latest is not None and entry.last_materialization_record is not None
        and entry.last_materialization_record.storage_id == records[0].storage_id,
        "entry partition": (entry.last_materialization.dagster_event.partition
                            if entry.last_materialization else None),
        "entry run": entry.last_run_id == run_id,
        "run's events": [(e.dagster_event_type, e.dagster_event.partition if e.dagster_event else None)
                         for e in logs],
        "plain": instance.get_latest_materialization_event(plain.key) is not None,
    }


def test_a_batch_leaves_what_per_event_writes_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    store = event_writes._store_in_memory
    monkeypatch.setattr(event_writes, "_store_in_memory",
                        lambda storage, events: (batches.append(len(events)), store(storage, events)))
    stock_instance, stock, keys = _run(batched=False)
    assert batches == []
    batched_instance, batched, _ = _run(batched=True)
    assert batches == [len(keys)], "the range's materializations in one write"
    expected = _stored(stock_instance, stock.run_id)
    assert expected["partitions"] == keys and expected["latest"] == keys[-1]
    plain_metadata = {k: getattr(v, "value", v) for k, v in METADATA.items()}
    assert expected["metadata"] == dict.fromkeys(keys, plain_metadata)
    assert _stored(batched_instance, batched.run_id) == expected


def test_every_watcher_hears_every_event_of_a_batch() -> None:
    instance = dg.DagsterInstance.ephemeral()
    keys = MONTHS.get_partition_keys()[:5]
    heard: list[tuple[str, str]] = []
    stored = instance.event_log_storage
    original = stored.store_event

    def watch_every_run(event: object) -> None:  # watch each run as soon as it writes its first event
        original(event)  # type: ignore[arg-type]
        run_id = event.run_id  # type: ignore[attr-defined]
        if not stored._handlers[run_id]:  # type: ignore[attr-defined]
            instance.watch_event_logs(run_id, None, lambda e, cursor: heard.append(
                (e.dagster_event_type, cursor)))

    stored.store_event = watch_every_run  # type: ignore[method-assign]
    with dagster_settings(), batched_event_writes(instance):
        result = dg.materialize([monthly, plain], instance=instance, selection=[monthly], tags={
            ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]})
    assert result.success
    materialized = [cursor for kind, cursor in heard if kind == dg.DagsterEventType.ASSET_MATERIALIZATION]
    assert len(materialized) == len(keys)
    cursors = [cursor for _kind, cursor in heard]
    assert len(set(cursors)) == len(cursors), "each event its own cursor"


def test_only_an_ephemeral_instance_is_changed_and_only_while_it_lasts(tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    with batched_event_writes(instance):
        assert "store_event_batch" in vars(instance.event_log_storage)
    assert "store_event_batch" not in vars(instance.event_log_storage)
    with dg.DagsterInstance.local_temp(str(tmp_path)) as on_disk, batched_event_writes(on_disk):
        assert "store_event_batch" not in vars(on_disk.event_log_storage)
