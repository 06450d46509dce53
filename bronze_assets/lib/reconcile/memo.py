"""Incremental reconciliation of tables bucketed by an integer key: a first-level bucket whose
source rows are the same row versions as when a reconciliation verified it equal, and whose
bronze (count, checksum sum) is the same too, is equal without rendering or hashing its rows.

The source's *fingerprint* of a bucket is its row count and the sum of a 64-bit hash of each
row's (key, ``xmin``, ``ctid``), computed without rendering a column. Any new row version (an
UPDATE, even HOT, a DELETE and INSERT, a restore) has a new ``xmin`` and ``ctid``; VACUUM FULL and
CLUSTER keep ``xmin`` but may move ``ctid``, which only costs a re-hash. What can change the text
of an unchanged tuple, or lets another server repeat its (key, ``xmin``, ``ctid``) with other
values, is in the state's *token* (:func:`catalog_token_sql` and the snapshot's ``server``): a
token that differs sends the table to a full pass, which writes the state again. The state is
one JSON file per table beside the tables (``_reconcile/<bz_table>.json``)."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.commit_log import HASH_VERSION
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.reconcile.model import TableReconciliation
from bronze_assets.lib.source.ddl import quote_literal

STATE_DIR = "_reconcile"
STATE_FORMAT = 1
MAX_BUCKETS_KEPT = 4 * 16_384  # a kept geometry grown past this many buckets is drawn again
FULL_PASS_SHARE = 0.5  # more buckets than this share to hash: one pass over the heap instead of key ranges

Buckets = dict[int, tuple[int, int]]


def catalog_token_sql(qualified_name: str) -> str:
    """One text that changes when rendering an unchanged tuple of the table can change: the table's
    oid and relfilenode (a rewrite), its columns' names and numbers (a column dropped and added back,
    or two renamed in a swap, changes every tuple's text without a rewrite), the server's version,
    and for every type its columns use (through domains, arrays, ranges and composites) its oid,
    output function and enum labels in order (ALTER TYPE … RENAME VALUE changes the text and no
    tuple). A column of a ``reg*`` type (regclass, regtype …) renders the name of the object it
    points at, which a rename changes: such a table's token is new on every run (full passes)."""
    oid = f"{quote_literal(qualified_name)}::regclass"
    return (
        "WITH RECURSIVE t(oid) AS ("
        f"SELECT atttypid FROM pg_attribute WHERE attrelid = {oid} AND attnum > 0 AND NOT attisdropped "
        "UNION SELECT c.child FROM t JOIN pg_type y ON y.oid = t.oid CROSS JOIN LATERAL ("
        "SELECT nullif(y.typbasetype, 0) UNION ALL SELECT nullif(y.typelem, 0) "
        "UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = y.oid "
        "UNION ALL SELECT a.atttypid FROM pg_attribute a WHERE y.typrelid <> 0 AND a.attrelid = y.typrelid "
        "AND a.attnum > 0 AND NOT a.attisdropped) c(child) WHERE c.child IS NOT NULL) "
        f"SELECT concat_ws('|', {oid}::oid, pg_relation_filenode({oid}), "
        "current_setting('server_version_num'), "
        "(SELECT string_agg(concat_ws(':', attname, attnum, atttypid), ',' ORDER BY attnum) "
        f"FROM pg_attribute WHERE attrelid = {oid} AND attnum > 0 AND NOT attisdropped), "
        "(SELECT string_agg(concat_ws(':', y.oid, y.typoutput::oid, (SELECT string_agg(e.enumlabel, ',' "
        "ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = y.oid)), ';' ORDER BY y.oid) "
        "FROM t JOIN pg_type y ON y.oid = t.oid), "
        "(SELECT random()::text FROM t JOIN pg_type y ON y.oid = t.oid "
        "WHERE y.typnamespace = 'pg_catalog'::regnamespace AND y.typname LIKE 'reg%' LIMIT 1))")


def state_token(contract: Contract, catalog: str) -> str:
    """The state's validity token: the §2.2 hash version, the contract's columns and types, and the
    source catalog's token."""
    columns = [(c.name, str(c.type)) for c in contract.columns]
    text = json.dumps([STATE_FORMAT, HASH_VERSION, contract.source_ref, columns, catalog])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class BucketState:
    """The buckets of one table last verified equal, under ``token`` and geometry (lo, width):
    {bucket: (source fingerprint rows, fingerprint sum, bronze rows, bronze checksum sum)}."""

    token: str
    lo: int
    width: int
    buckets: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"format": STATE_FORMAT, "token": self.token, "lo": self.lo, "width": self.width,
                           "buckets": {str(b): list(v) for b, v in self.buckets.items()}}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BucketState | None:
        try:
            doc = json.loads(data)
            if doc.get("format") != STATE_FORMAT:
                return None
            buckets = {int(b): (int(v[0]), int(v[1]), int(v[2]), int(v[3])) for b, v in doc["buckets"].items()
                       }
            return cls(str(doc["token"]), int(doc["lo"]), int(doc["width"]), buckets)
        except (ValueError, KeyError, TypeError, IndexError):
            return None  # unreadable: a full pass writes it again


def state_path(bronze_table: str) -> str:
    return f"{STATE_DIR}/{bronze_table}.json"


class Memo:
    """The first level of one table's bisection, from the state where it proves buckets equal.
    ``source`` needs ``fingerprints``, ``checksums_in`` and ``buckets_with_fingerprints``
    (:class:`~bronze_assets.lib.reconcile.source_side.SourceTable`)."""

    def __init__(self, storage: Storage, contract: Contract, token: str) -> None:
        self.storage, self.contract, self.token = storage, contract, token
        self.path = state_path(contract.bronze_table)
        data = storage.read_file(self.path)
        state = BucketState.from_json(data) if data else None
        self.state = state if state is not None and state.token == token else None

    def geometry(self, lo: int, hi: int, width: int) -> tuple[int, int]:
        """The state's (lo, width) while it still covers the keys, else the one drawn now."""
        s = self.state
        if s is not None and s.lo <= lo and -(-(hi - s.lo + 1) // s.width) <= MAX_BUCKETS_KEPT:
            return s.lo, s.width
        self.state = None
        return lo, width

    def first_level(self, source: Any, bronze: Any, lo: int, hi: int, width: int,
                    pool: ThreadPoolExecutor, report: TableReconciliation) -> tuple[Buckets, Buckets]:
        """(source, bronze) buckets of [lo, hi]: buckets proven equal by the state take bronze's
        sums; the others are hashed (their key ranges, or one pass when most are). Writes the
        state of the buckets equal now."""
        pending = pool.submit(bronze.buckets, lo, hi, width)
        state = self.state
        if state is None:
            ours, prints = source.buckets_with_fingerprints(lo, hi, width)
            theirs = pending.result()
            report.buckets_hashed = len(set(ours) | set(theirs))
        else:
            prints = source.fingerprints(lo, hi, width)
            theirs = pending.result()
            known = {b for b, (fn, fs, bn, bs) in state.buckets.items()
                     if prints.get(b) == (fn, fs) and theirs.get(b) == (bn, bs)}
            todo = sorted((set(prints) | set(theirs)) - known)
            seen = set(prints) | set(theirs)
            if len(todo) > FULL_PASS_SHARE * len(seen):
                ours = source.buckets(lo, hi, width)
                report.buckets_hashed = len(seen)
            else:
                ours = source.checksums_in(todo, lo, hi, width) if todo else {}
                ours.update({b: theirs[b] for b in known})
                report.buckets_from_state, report.buckets_hashed = len(known), len(todo)
        kept = {b: (*prints[b], *theirs[b]) for b in ours
                if b in prints and b in theirs and ours[b] == theirs[b]}
        self.storage.write_file(self.path, BucketState(self.token, lo, width, kept).to_json())
        return ours, theirs


__all__ = ["STATE_DIR", "BucketState", "Memo", "catalog_token_sql", "state_path", "state_token"]
