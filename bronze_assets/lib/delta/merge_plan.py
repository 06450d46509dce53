"""The MERGE plan (ARCHITECTURE §2.3), made before anything is written: the staged keys and
hashes joined with a narrow index of the target (keys, hash, status, partition value), key bucket
by key bucket for a large table. Each staged key is classified insert / update / re-hash /
unchanged (the rule both engines share, :mod:`bronze_assets.lib.delta.merge_rule`) and each
vanished key delete, routed to the partition it lives in; only those rows go into the MERGE."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.key_ranges import key_range_sql, key_ranges
from bronze_assets.lib.delta.merge_result import DuplicateKeyError, MergeResult
from bronze_assets.lib.delta.merge_rule import PlanTerms, decide
from bronze_assets.lib.delta.narrow_index import hash_words, narrow, narrowed, same_hash, spill, unspill
from bronze_assets.lib.delta.query import quoted, scan_columns, table_rows
from bronze_assets.lib.delta.staging import StagedBatch, stage_dir
from bronze_assets.lib.enrich.metadata import ACTIVE
from bronze_assets.lib.source.extract import LEGACY_HASH

OP = "_bronze_op"  # a plan row's operation: I(nsert), U(pdate), H (re-hash v1 to v2), D(elete)
TARGET_PART = "_bronze_target_part"
# Target rows planned at once: a larger table is planned key bucket by key bucket, so the plan's
# memory (narrow index ≈30 bytes a key, plus the join) stays flat as the table grows. Measured on
# order_details at scale 30 (6 M rows): peak 1.14-1.23 GB planned whole, 0.54-0.62 GB in 6 buckets.
PLAN_BUCKET_ROWS = 1_000_000


def _nothing_to_plan(staged: StagedBatch) -> bool:
    """No staged row and no key that could have vanished: the plan is empty whatever the target."""
    return not staged.rows and not staged.keys_are_rows and staged.source_keys_path is None \
        and (staged.deleted_keys is None or not staged.deleted_keys.num_rows)


class MergePlanner:
    """Plans the MERGE of staged batches of one contract into its ``bz_`` table at ``uri``; a large
    table's index is spilled under ``stage_base`` (``Settings.stage_dir``)."""

    def __init__(self, contract: Contract, uri: str, stage_base: Path):
        self.contract = contract
        self.uri = uri
        self.stage_base = stage_base
        self.pk = list(contract.merge_key)  # a keyless table: its record_key
        self.part = contract.partitioning.delta_column

    @property
    def _key(self) -> pl.Expr:
        """The primary key as one expression (a struct when it has several columns)."""
        return pl.col(self.pk[0]) if len(self.pk) == 1 else pl.struct(self.pk)

    def duplicates(self, rows: pl.DataFrame | pl.LazyFrame) -> int:
        """How many of ``rows`` repeat a primary key (one streamed pass)."""
        counts = rows.lazy().select(pl.len().alias("n"), self._key.n_unique().alias("u"))
        counts = counts.collect(engine="streaming")
        return int(counts["n"][0]) - int(counts["u"][0])

    def staged_duplicates(self, staged: StagedBatch) -> int:
        """:meth:`duplicates` of the staged rows, holding at most ≈ 2 x ``PLAN_BUCKET_ROWS`` keys
        whatever the rows: read batch by batch, the keys of a larger batch are spilled to the stage
        folder by key bucket and counted bucket by bucket (a key's rows share its bucket)."""
        reader = staged.reader()
        schema = pa.schema([reader.schema.field(k) for k in self.pk])
        keys = narrowed(pa.RecordBatchReader.from_batches(schema, (b.select(self.pk) for b in reader)),
                        self.pk, "", column=None)
        buckets = staged.rows // PLAN_BUCKET_ROWS
        if buckets <= 1:
            return self.duplicates(pl.concat(list(keys), rechunk=False))
        prefix = f"{self.contract.bronze_table}-keys-"
        with tempfile.TemporaryDirectory(prefix=prefix, dir=stage_dir(self.stage_base)) as spilled:
            folder = Path(spilled)
            key_schema = spill(keys, self._bucket(buckets), folder, "k")
            return sum(self.duplicates(unspill(folder, "k", b, key_schema)) for b in range(buckets))

    def refuse_duplicates(self, dupes: int) -> None:
        if dupes:
            raise DuplicateKeyError.repeated(self.contract.bronze_table, self.pk, dupes)

    def _bucket(self, buckets: int) -> pl.Expr:
        """Which of ``buckets`` key buckets a row's primary key falls in (same on both sides of the
        plan: their key columns are cast to the same types first)."""
        return (self._key.hash(seed=0) % buckets).cast(pl.UInt32)

    def buckets(self, dt: DeltaTable, staged: StagedBatch, resumed: str | None = None
                 ) -> Iterator[tuple[pl.DataFrame, pl.LazyFrame, pl.Expr | None]]:
        """The target's narrow index (key, record_hash as two 64-bit words, status, partition, and
        whether a row was written by the ``resumed`` batch) and the staged keys and hashes, with
        the filter that selects a bucket's keys (``None``: every key).

        A table of fewer than 2 x ``PLAN_BUCKET_ROWS`` rows is planned whole: the staged side is
        scanned lazily. A larger one is planned key bucket by key bucket: both sides are read once and
        spilled to the stage folder by key bucket (a Grace hash join), so the plan holds one
        bucket's index and join however large the table grows.
        """
        cols = [*self.pk, "record_hash", "record_status"] + ([self.part] if self.part else [])
        extra = [(pl.col("batch_id") == resumed).alias("_t_resumed")] if resumed is not None else []
        keep = [*self.pk, pl.col("record_status").cast(pl.Categorical)] + ([self.part] if self.part else [])
        renames = {"record_status": "_t_status"} | ({self.part: TARGET_PART} if self.part else {})
        named = self._named_keys(staged)
        where = None if named is None else key_range_sql(quoted([self.pk[0]]), key_ranges(named[self.pk[0]]))
        scan = scan_columns(dt, cols + (["batch_id"] if resumed is not None else []), where)
        only = None
        if named is not None:  # the named keys in the target's key types (staged ones may differ)
            target = pl.from_arrow(pa.schema(scan.schema).empty_table().select(self.pk))
            assert isinstance(target, pl.DataFrame)
            named = named.cast(dict(target.schema))
            if len(self.pk) == 1:  # only the named keys' rows are narrowed and held
                only = pl.col(self.pk[0]).is_in(named.get_column(self.pk[0]).implode())
        index_pieces = (piece.rename(renames) for piece in narrowed(scan, keep, "_t_h", extra, where=only))
        if named is not None:  # whatever the ranges span
            index_pieces = (piece.join(named, on=self.pk, how="semi") for piece in index_pieces)
        staged_keep = [*self.pk] + ([self.part] if self.part else [])
        # each bucket under 2 x PLAN_BUCKET_ROWS rows
        buckets = 1 if named is not None else table_rows(dt) // PLAN_BUCKET_ROWS
        if buckets <= 1:
            index = pl.concat(list(index_pieces), rechunk=False)
            key_types = {k: index.schema[k] for k in self.pk}
            src = pl.scan_ipc(staged.path).select(*staged_keep, *hash_words("record_hash", "_s_h"))
            yield index, src.cast(key_types), None
            return
        bucket = self._bucket(buckets)
        prefix = f"{self.contract.bronze_table}-plan-"
        with tempfile.TemporaryDirectory(prefix=prefix, dir=stage_dir(self.stage_base)) as spilled:
            folder = Path(spilled)
            index_schema = spill(index_pieces, bucket, folder, "t")
            key_types = {k: index_schema[k] for k in self.pk}
            columns = [*staged_keep, "record_hash"]
            reader = staged.reader()
            schema = pa.schema([reader.schema.field(c) for c in columns])
            rows = pa.RecordBatchReader.from_batches(schema, (b.select(columns) for b in reader))
            staged_schema = spill((piece.cast(key_types) for piece in narrowed(rows, staged_keep, "_s_h")),
                                  bucket, folder, "s")
            for b in range(buckets):
                index = unspill(folder, "t", b, index_schema)
                src = unspill(folder, "s", b, staged_schema)
                yield index, src.lazy(), bucket == b

    def _named_keys(self, staged: StagedBatch) -> pl.DataFrame | None:
        """The keys a plan needs the target's rows of, when a load names them all (its staged keys
        and the deleted keys it names, no key sweep) and they are few enough to hold (at most
        ``PLAN_BUCKET_ROWS``); ``None``: the plan reads the whole index."""
        if staged.keys_are_rows or staged.source_keys_path is not None:
            return None
        deleted = 0 if staged.deleted_keys is None else staged.deleted_keys.num_rows
        if staged.rows + deleted > PLAN_BUCKET_ROWS:
            return None
        keys = [pl.scan_ipc(staged.path).select(self.pk).collect()] if staged.rows else []
        if deleted:
            frame = pl.from_arrow(staged.deleted_keys.select(self.pk))  # type: ignore[union-attr]
            assert isinstance(frame, pl.DataFrame)
            keys.append(frame.cast(keys[0].schema) if keys else frame)
        return pl.concat(keys).unique() if keys else pl.DataFrame(schema=dict.fromkeys(self.pk, pl.Int64))

    def plan(
        self, dt: DeltaTable, staged: StagedBatch, backfill_unchanged: bool = False,
        resumed: str | None = None,
    ) -> tuple[pl.DataFrame, MergeResult]:
        """Classify every staged key (insert/update/unchanged) and every vanished key (delete).

        ``backfill_unchanged`` rewrites ACTIVE rows whose hash is unchanged too: the load that
        adds a new source column fills it in on existing rows (their hashes do not change).
        ``resumed`` names an interrupted batch: its committed rows count as skipped.
        """
        result = MergeResult(self.uri, staged.rows, resumed_batch_id=resumed)
        if _nothing_to_plan(staged):  # e.g. a CDC tick without changes: no need to read the target
            return pl.DataFrame(), result
        plans: list[pl.DataFrame] = []
        legacy = None
        if staged.legacy_hashes is not None:  # a v1 table: equal under v1 means unchanged
            legacy = narrow(staged.legacy_hashes, self.pk, "_v1_h", column=LEGACY_HASH)
        dupes = 0
        for index, src, bucket in self.buckets(dt, staged, resumed):
            # joined by Polars' streaming engine: the plan holds the target index (of one key
            # bucket), never the staged rows or the joined rows
            key_types = {k: index.schema[k] for k in self.pk}
            if staged.rows:
                dupes += self.duplicates(src)
                legacy_keys = None if legacy is None else legacy.cast(key_types).lazy()
                if legacy_keys is not None and bucket is not None:
                    legacy_keys = legacy_keys.filter(bucket)
                rows = self._classify(src, index, legacy_keys, backfill_unchanged, resumed)
                ops = rows.get_column(OP)
                result.inserted += int((ops == "I").sum())
                result.updated += int((ops == "U").sum())
                result.rehashed_v1 += int((ops == "H").sum())
                result.forgotten_skipped += int(rows.get_column("_forgotten").sum())
                result.rows_skipped_by_checkpoint += int(rows.get_column("_kept").sum())
                plans.append(rows.filter(pl.col(OP).is_not_null()).select([*self.pk, OP, "_route"]))
            keys = None
            if staged.keys_are_rows:
                keys = src.select(self.pk)
            elif staged.source_keys_path is not None:
                keys = pl.scan_ipc(staged.source_keys_path).cast(key_types)
                if bucket is not None:
                    keys = keys.filter(bucket)
            vanished = None
            if keys is not None:
                vanished = index.lazy().filter(pl.col("_t_status") == ACTIVE).join(
                    keys, on=self.pk, how="anti").collect(engine="streaming")
            elif staged.deleted_keys is not None:  # log-based CDC names the deleted keys itself
                gone = pl.from_arrow(staged.deleted_keys).lazy().cast(key_types)  # type: ignore[union-attr]
                if bucket is not None:
                    gone = gone.filter(bucket)
                vanished = index.lazy().filter(pl.col("_t_status") == ACTIVE).join(
                    gone, on=self.pk, how="semi").collect(engine="streaming")
            if vanished is not None:
                result.soft_deleted += vanished.height
                route = pl.col(TARGET_PART) if self.part else pl.lit(None)
                plans.append(vanished.select([*self.pk, pl.lit("D").alias(OP), route.alias("_route")]))
            del index
        self.refuse_duplicates(dupes)
        result.unchanged = staged.rows - result.inserted - result.updated - result.forgotten_skipped
        plans = [p.with_columns(pl.col("_route").cast(pl.Date)) for p in plans if p.height]
        plan = pl.concat(plans) if plans else pl.DataFrame()
        if self.part and plan.height:
            routes = plan.get_column("_route").drop_nulls().unique().sort()
            result.partitions = [d.isoformat() for d in routes.to_list()]
        return plan, result

    def _classify(self, src: pl.LazyFrame, index: pl.DataFrame, legacy: pl.LazyFrame | None,
                  backfill_unchanged: bool, resumed: str | None) -> pl.DataFrame:
        """Each staged key's operation (I/U/H or none) and route, keeping only the rows that matter:
        an operation, a FORGOTTEN key, or a row the ``resumed`` batch already committed."""
        joined = src.join(index.lazy(), on=self.pk, how="left")
        if legacy is not None:
            joined = joined.join(legacy, on=self.pk, how="left")
        status = pl.col("_t_status")
        is_new = status.is_null()
        decision = decide(PlanTerms(
            is_new=is_new, status=lambda value: (status == value).fill_null(False),
            hash_differs=~same_hash("_t_h", "_s_h"),
            v1_hash_equal=same_hash("_t_h", "_v1_h") if legacy is not None else None,
            rewrite_unchanged=pl.lit(backfill_unchanged), false=pl.lit(False)))
        (first, name), *rest = decision.operations
        chosen = pl.when(first).then(pl.lit(name))
        for condition, name in rest:
            chosen = chosen.when(condition).then(pl.lit(name))
        op, forgotten = chosen.otherwise(pl.lit(None)), decision.forgotten
        kept = pl.col("_t_resumed").fill_null(False) if resumed is not None else pl.lit(False)
        target_part = pl.col(TARGET_PART) if self.part else pl.lit(None)
        own_part = pl.col(self.part) if self.part else pl.lit(None)
        return joined.select(
            *self.pk, op.alias(OP), pl.when(is_new).then(own_part).otherwise(target_part).alias("_route"),
            forgotten.alias("_forgotten"), (op.is_null() & kept).alias("_kept"),
        ).filter(pl.col(OP).is_not_null() | pl.col("_forgotten") | pl.col("_kept")
                 ).collect(engine="streaming")  # the rows that matter: few, unless all are new
