"""One engine per bronze table on S3 (ARCHITECTURE §2.9, §6 "Object stores").

delta-rs commits on S3 with a conditional put; delta-spark does not (delta-io/delta #3596: its
S3 log store assumes a single writer), so a table loaded by both engines on S3 can lose a commit.
Which engine loads a table comes from ``BRONZE_ENGINE`` / ``BRONZE_ENGINE_TABLES``, and two
deployments (or a changed setting while the other engine's runs still go on) can disagree; the
table's own history says who is loading it. A load on an S3 root is refused when another engine
*loaded* the table (a commit with bronze's batch id) within :data:`QUIET_PERIOD`: then both engines
are writing it. Switching a table's engine is allowed once the other engine has been quiet that
long. Maintenance, retention, forget and restore commits (delta-rs, no batch id) are not loads.

A table with deletion vectors (the Spark engine's tables, ARCHITECTURE §6) is the Spark engine's
alone: delta-rs would rewrite every file a change touches and, on S3, commit beside delta-spark's
single-writer log; its full VACUUM deletes the deletion-vector files it does not know (measured on
delta-rs 1.6.6: the table then fails to read). :func:`refuse_deletion_vectors` stops every
delta-rs write of such a table with one line that names it and the fix."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from deltalake import DeltaTable

from bronze_assets.lib.delta.commit_log import BATCH_KEY, commit_history
from bronze_assets.lib.delta.storage import Storage

SPARK, DELTA_RS = "delta-spark", "delta-rs"
QUIET_PERIOD = timedelta(hours=24)
HISTORY_DEPTH = 10  # commits looked at: a day of hourly loads of one engine hides the other's older ones
S3_SCHEMES = ("s3://", "s3a://", "s3n://")


DELETION_VECTORS_FEATURE = "deletionVectors"  # the Delta reader feature of a table that may hold them


class MixedEnginesError(RuntimeError):
    """Both engines would write one bronze table on S3."""


class DeletionVectorsError(RuntimeError):
    """The local engine (delta-rs) would write a table that has deletion vectors."""


def deletion_vectors_enabled(dt: DeltaTable) -> bool:
    """Whether ``dt``'s protocol lists the ``deletionVectors`` reader feature (no I/O)."""
    return DELETION_VECTORS_FEATURE in (dt.protocol().reader_features or [])


def files_with_deletion_vectors(dt: DeltaTable) -> int:
    """Data files of ``dt``'s loaded version that carry a deletion vector (their vectors are read
    only when the protocol allows them)."""
    if not deletion_vectors_enabled(dt):
        return 0
    return sum(batch.num_rows for batch in dt.deletion_vectors())


def refuse_deletion_vectors(dt: DeltaTable | None, table: str, operation: str, *,
                            feature: bool = False) -> None:
    """Raise :class:`DeletionVectorsError` before delta-rs writes ``table`` (``operation``: "load",
    "OPTIMIZE/VACUUM", "retention", "forget", "restore") when its current version holds deletion
    vectors, or with ``feature`` when its protocol allows them at all (VACUUM: older versions'
    vectors are files delta-rs does not know)."""
    if dt is None or not deletion_vectors_enabled(dt):
        return
    files = files_with_deletion_vectors(dt)
    if not files and not feature:
        return
    held = f"{files} data file(s) with deletion vectors" if files else "the deletionVectors feature"
    purge = f"REORG TABLE delta.`{dt.table_uri}` APPLY (PURGE)"
    if feature:
        fix = ("run OPTIMIZE and VACUUM on Spark or Databricks (delta-rs' VACUUM deletes the "
               "deletion-vector files it does not know)")
    elif operation == "load":
        fix = (f"load it with the Spark engine (BRONZE_ENGINE_TABLES={table}=spark, or =databricks), or "
               f"purge them on Spark first ({purge})")
    else:
        fix = f"purge them on Spark first ({purge}), then run the {operation} again"
    raise DeletionVectorsError(f"{table}: refusing the local engine's {operation}: the table has {held}, "
                               f"the Spark engine's to write; {fix}")


def commit_engine(entry: Mapping[str, Any]) -> str | None:
    """Which engine wrote a commit (its ``engineInfo`` / ``clientVersion``), None if unknown."""
    info = f"{entry.get('engineInfo') or ''} {entry.get('clientVersion') or ''}"
    if "delta-rs" in info:
        return DELTA_RS
    if "Delta-Lake" in info or "Apache-Spark" in info or "Databricks" in info:
        return SPARK
    return None


def check_single_engine(root: str, table: str, writer: str, history: Iterable[Mapping[str, Any]],
                        now: datetime | None = None) -> None:
    """Raise :class:`MixedEnginesError` (one line, naming the table) when ``root`` is on S3 and the
    latest load of ``table`` within :data:`QUIET_PERIOD` was committed by an engine other than
    ``writer`` (:data:`SPARK` or :data:`DELTA_RS`). ``history``: the table's latest commits, newest
    first. Two engines that both keep loading each see the other's load as the latest one; once
    one of them is refused, the other's loads pass."""
    if not root.lower().startswith(S3_SCHEMES):
        return
    since = (now or datetime.now(UTC)) - QUIET_PERIOD
    for entry in history:
        when = datetime.fromtimestamp(int(entry.get("timestamp") or 0) / 1000, UTC)
        if when < since:
            return
        if BATCH_KEY not in entry:  # maintenance, retention, forget, restore: not a load
            continue
        other = commit_engine(entry)
        if other is not None and other != writer:
            raise MixedEnginesError(
                f"{table}: refusing a {writer} load on {root}: version {entry.get('version')} "
                f"({when:%Y-%m-%d %H:%M} UTC) was loaded by {other}, and delta-spark on S3 does not "
                f"commit with conditional puts (delta-io/delta #3596), so one S3 table must have one "
                f"engine: give {table} the same engine in every deployment (BRONZE_ENGINE / "
                f"BRONZE_ENGINE_TABLES); a switch is accepted once the other engine has not loaded it "
                f"for {QUIET_PERIOD.total_seconds() / 3600:.0f} h")
        return


def check_target(storage: Storage, table: str, writer: str, target: DeltaTable | None) -> None:
    """:func:`check_single_engine` on ``target``, the table a load has just opened: its last two
    commits (one GET each on S3), ten if neither is a load; nothing on other stores."""
    if target is None or not storage.root.lower().startswith(S3_SCHEMES):
        return
    for depth in (2, HISTORY_DEPTH):
        history = commit_history(target, depth)
        if any(BATCH_KEY in entry for entry in history) or len(history) < depth:
            break
    check_single_engine(storage.root, table, writer, history)
