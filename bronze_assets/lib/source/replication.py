"""Log-based change capture from PostgreSQL: one publication per table and one logical
replication slot (``pgoutput``) per table and bronze deployment, read with psycopg2's
replication protocol.

Slots are global to the server and hold a read position, so two bronze roots that shared one
would take each other's changes: a slot's name carries the deployment id (``$BRONZE_DEPLOYMENT_ID``,
else a hash of the bronze root). A publication holds no position, so every deployment shares
the table's one publication (``bronze_<table>``, the name its owner creates).

Only *which keys changed*, in commit order and up to which LSN, is taken from the stream: the
load then reads those keys' current rows in one snapshot (:func:`bronze_assets.lib.cdc`). So the
record hash, score and types are the ones every load computes, TOAST values the stream leaves out
need no special case, and an older change can never overwrite a newer one.

The pgoutput messages (protocol 1) are decoded here, in a few lines of ``struct``: psycopg2 reads
the protocol but not the plugin's format, and the decoders on PyPI are unmaintained or turn an
unchanged TOAST value into NULL (measured; see the README's CDC section).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

from bronze_assets.contracts import Contract
from bronze_assets.lib.source.ddl import qualified, quote_ident
from bronze_assets.lib.source.dsn import describe_dsn, dsn_parts, redact
from bronze_assets.settings import ENV_SOURCE_DSN

# the session of the walsender pinned like every bronze session (ARCHITECTURE §2.2)
PINNED_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres -c extra_float_digits=1"
DRAIN_CHANGES = 5_000_000  # a run reads at most about this many changes (the rest waits for the next run)


class ReplicationError(RuntimeError):
    """Log-based CDC cannot run against this source (the message says why and what to do)."""


class PublicationError(ReplicationError):
    """The table's publication is missing or leaves the table out, and the source user may not set
    it up (the message names the table, the publication and the SQL its owner runs)."""


ENV_DEPLOYMENT_ID = "BRONZE_DEPLOYMENT_ID"
_DEPLOYMENT_ID = re.compile(r"[a-z0-9_]{1,20}")
_SCHEMES = {"s3a": "s3", "s3n": "s3", "abfs": "abfss"}  # one store, spelled by another client


def normalized_root(root: str) -> str:
    """``root`` as one spelling: a local path absolute (``file://`` dropped), an object-store
    URI with its scheme in lower case (``s3a``/``s3n`` as ``s3``, ``abfs`` as ``abfss``), no
    trailing slash. The same root spelled another way (``az://`` for ``abfss://``, a symlink)
    is another root to this: set ``$BRONZE_DEPLOYMENT_ID`` then."""
    if "://" in root:
        scheme, rest = root.split("://", 1)
        scheme = scheme.lower()
        if scheme != "file":
            return f"{_SCHEMES.get(scheme, scheme)}://{rest.rstrip('/')}"
        root = rest
    return os.path.normpath(os.path.abspath(os.path.expanduser(root)))


def deployment_id(root: str, explicit: str | None = None) -> str:
    """The id in this deployment's slot names: ``explicit`` (``$BRONZE_DEPLOYMENT_ID``), else the
    first 8 hex digits of the SHA-256 of the bronze root ``root``, normalized.

    A hash of the root, not an id stored in it: a root copied elsewhere (a second environment,
    a restore next to the original) gets a slot of its own instead of sharing the original's;
    a copy restored over the original shares its slot, and the position check names the gap
    (:mod:`bronze_assets.lib.cdc`)."""
    if explicit is not None:
        if not _DEPLOYMENT_ID.fullmatch(explicit):
            raise ReplicationError(
                f"{ENV_DEPLOYMENT_ID}={explicit!r} is not a deployment id: use 1 to 20 lowercase letters, "
                f"digits or underscores (it goes into the names of replication slots)")
        return explicit
    return hashlib.sha256(normalized_root(root).encode()).hexdigest()[:8]


def _database(dsn: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", dsn_parts(dsn)["db"].lower())


def slot_name(dsn: str, contract: Contract, deployment: str) -> str:
    """``bronze_<database>_<table>_<deployment id>`` (at most 63 characters: the database and table
    part is shortened, never the id): slot names are global to the server. ``deployment``: the
    id (:func:`deployment_id`)."""
    return f"bronze_{_database(dsn)}_{contract.name}"[:62 - len(deployment)] + f"_{deployment}"


def legacy_slot_name(dsn: str, contract: Contract) -> str:
    """``bronze_<database>_<table>``: the one slot every bronze root shared before slots were named
    per deployment (positions committed then record no slot; :mod:`bronze_assets.lib.cdc`
    migrates them)."""
    return f"bronze_{_database(dsn)}_{contract.name}"[:63]


def publication_name(contract: Contract) -> str:
    return f"bronze_{contract.name}"


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_int(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def _connect(dsn: str, replication: bool = False) -> Any:
    import psycopg2
    import psycopg2.extras

    try:
        if replication:
            return psycopg2.connect(dsn, options=PINNED_OPTIONS,
                                    connection_factory=psycopg2.extras.LogicalReplicationConnection)
        conn = psycopg2.connect(dsn, options=PINNED_OPTIONS)
        conn.autocommit = True
        return conn
    except psycopg2.Error as exc:
        cause = " ".join(redact(str(exc), dsn).split())  # one line: libpq's message spans several
        cause += "" if cause[-1:] in ".?!" else "."
        kind = "replication " if replication else ""
        needs = (" (the user needs the REPLICATION attribute and a pg_hba.conf line allowing its "
                 "connection)") if replication else ""
        raise ReplicationError(
            f"cannot open a {kind}connection to the PostgreSQL source ({describe_dsn(dsn)}): {cause} Check "
            f"that the server is running and reachable, that the database exists and the credentials are "
            f"right, and the value of {ENV_SOURCE_DSN}{needs}.") from None


def _query(dsn: str, sql: str, params: tuple | dict[str, Any] = ()) -> list[tuple]:
    with closing(_connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def replication_settings(dsn: str) -> tuple[str, bool]:
    """The server's ``wal_level`` and whether the source user may replicate (REPLICATION or superuser)."""
    level, can = _query(dsn, "SELECT current_setting('wal_level'), (SELECT rolreplication OR rolsuper "
                             "FROM pg_roles WHERE rolname = current_user)")[0]
    return level, bool(can)


def availability(dsn: str) -> str | None:
    """None when this source can serve log-based CDC, else why not (and what to change)."""
    level, can = replication_settings(dsn)
    if level != "logical":
        return (f"wal_level is {level!r}, not 'logical' (ALTER SYSTEM SET wal_level = 'logical' and restart "
                f"the server)")
    if not can:
        return "the source user lacks the REPLICATION attribute (ALTER ROLE … WITH REPLICATION)"
    return None


def no_free_slot(dsn: str, slot: str) -> str | None:
    """Why the slot named ``slot`` cannot be created now (every one of the server's
    ``max_replication_slots`` taken, and none of them is ``slot``), with what to change; else None."""
    ((taken, exists, limit),) = _query(
        dsn, "SELECT count(*), coalesce(bool_or(slot_name = %s), false), "
             "current_setting('max_replication_slots')::int FROM pg_replication_slots", (slot,))
    return None if exists or taken < limit else _slots_full(int(limit))


def _slots_full(limit: int | None) -> str:
    taken = "every replication slot of the source is" if limit is None else \
        f"all {limit} replication slots of the source are"
    return (f"{taken} in use (max_replication_slots): raise max_replication_slots "
            f"(a restart), or drop the slots nobody reads (`bronze cdc status` lists the bronze slots of "
            f"other deployments; SELECT pg_drop_replication_slot('<name>') drops one)")


@dataclass(frozen=True)
class SlotState:
    """A slot as ``pg_replication_slots`` shows it."""

    name: str
    active: bool
    wal_status: str | None  # reserved / extended / unreserved / lost
    confirmed_flush_lsn: int | None
    retained_wal_bytes: int | None  # WAL the slot keeps on the server's disk
    relid: int | None = None  # the source table's OID now (None: no such table)
    published: bool = True  # whether the table's publication includes it
    current_lsn: int | None = None  # the server's WAL position when read

    @property
    def lost(self) -> bool:
        return self.wal_status == "lost"


# the source table's OID, and whether its publication covers it: named in the publication, through
# FOR ALL TABLES / TABLES IN SCHEMA, or as a partitioned table through its partitions or ancestors
_RELID = "(SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace " \
         "WHERE n.nspname = %(schema)s AND c.relname = %(table)s)"
_PUBLISHED = (
    "EXISTS (SELECT 1 FROM pg_publication_tables pt JOIN pg_namespace pn ON pn.nspname = pt.schemaname "
    "JOIN pg_class pc ON pc.relnamespace = pn.oid AND pc.relname = pt.tablename WHERE pt.pubname = %(pub)s "
    f"AND pc.oid IN (SELECT {_RELID} UNION ALL SELECT relid FROM pg_partition_tree({_RELID}::regclass) "
    f"UNION ALL SELECT relid FROM pg_partition_ancestors({_RELID}::regclass)))")


def _names(contract: Contract) -> dict[str, str]:
    return {"schema": contract.source_schema, "table": contract.source_name,
            "pub": publication_name(contract)}


def slot_state(dsn: str, contract: Contract, slot: str) -> SlotState | None:
    """The table's slot (named ``slot``: :func:`slot_name`), or
    None when there is none."""
    rows = _query(dsn, f"SELECT slot_name, active, wal_status, confirmed_flush_lsn::text, "
                       f"pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, {_RELID}::bigint, "
                       f"{_PUBLISHED}, pg_current_wal_lsn()::text "
                       f"FROM pg_replication_slots "
                       f"WHERE slot_name = %(slot)s AND database = current_database()",
                  _names(contract) | {"slot": slot})
    if not rows:
        return None
    name, active, status, confirmed, retained, relid, published, current = rows[0]
    return SlotState(name, bool(active), status, lsn_int(confirmed) if confirmed else None,
                     int(retained) if retained is not None else None, relid, bool(published),
                     lsn_int(current))


def table_relid(dsn: str, contract: Contract) -> int | None:
    """The source table's OID: a table dropped and re-created gets a new one."""
    return _query(dsn, f"SELECT {_RELID}::bigint", _names(contract))[0][0]


def bronze_slots(dsn: str) -> list[tuple[str, bool, int | None]]:
    """Every bronze slot of this database (any deployment's): name, active, WAL it holds."""
    return [(name, bool(active), int(held) if held is not None else None) for name, active, held in _query(
        dsn, "SELECT slot_name::text, active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
             "FROM pg_replication_slots WHERE database = current_database() AND plugin = 'pgoutput' "
             "AND slot_name LIKE 'bronze\\_%%' ORDER BY slot_name")]


def stream_gap(dsn: str, contract: Contract, slot: SlotState | None, relid: int | None,
               name: str) -> str | None:
    """Why the table's slot (named ``name``) can no longer give every change
    since bronze's position (``relid``: the table OID recorded with it), or None when it can.
    Whether the slot's position still matches bronze's is :func:`bronze_assets.lib.cdc.position_gap`."""
    if slot is None:
        return f"the replication slot {name} is gone"
    if slot.lost:
        return f"the replication slot {name} is lost (wal_status 'lost': its WAL was removed)"
    table = contract.source_ref
    if slot.relid is None:
        return f"the source table {table} is gone"
    if relid is not None and slot.relid != relid:
        return f"the source table {table} was dropped and re-created since (a new table to the log)"
    if not slot.published:
        return f"the publication {publication_name(contract)} no longer includes {table}"
    return None


# what setting up the table's publication takes, read without changing anything: the table's
# OID, whether the publication exists and covers the table, whether the source user may create it
# (CREATE on the database and ownership of the table) or add the table (ownership of both), and the
# names as SQL spells them
_PUBLICATION_STATE = (
    f"SELECT {_RELID}::bigint, p.oid IS NOT NULL, {_PUBLISHED}, "
    "has_database_privilege(current_database(), 'CREATE'), "
    f"(SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = {_RELID}), "
    "pg_has_role(p.pubowner, 'USAGE'), current_user::text, current_database()::text, "
    "quote_ident(%(pub)s), quote_ident(%(schema)s) || '.' || quote_ident(%(table)s) "
    "FROM (SELECT 1) one LEFT JOIN pg_publication p ON p.pubname = %(pub)s")


@dataclass(frozen=True)
class PublicationState:
    """The table's publication, and what the source user may do about it."""

    table: str  # schema.table, as SQL spells it
    publication: str  # as SQL spells it
    user: str
    database: str
    table_exists: bool
    exists: bool  # the publication
    covers: bool  # it covers the table
    may_create_in_database: bool
    owns_table: bool
    owns_publication: bool

    @property
    def owner_sql(self) -> str:
        """What the table's owner runs so the publication covers the table."""
        if self.exists:
            return f"ALTER PUBLICATION {self.publication} ADD TABLE {self.table}"
        return f"CREATE PUBLICATION {self.publication} FOR TABLE {self.table}"

    def problem(self, denied: str | None = None) -> str | None:
        """None when the publication covers the table or the source user may make it so; else
        why not and the SQL to run (``denied``: the server's refusal, when it was tried)."""
        if not self.table_exists:
            return f"the source table {self.table} does not exist"
        if self.covers:
            return None
        missing = [] if denied is None else [denied]
        if denied is None and not self.exists and not self.may_create_in_database:
            missing.append(f"it lacks the CREATE privilege on database {self.database}")
        if denied is None and not self.owns_table:
            missing.append(f"it does not own {self.table}")
        if denied is None and self.exists and not self.owns_publication:
            missing.append(f"it does not own the publication {self.publication}")
        if not missing:
            return None
        gap = "does not exist" if not self.exists else f"does not include {self.table}"
        verb = "create it" if not self.exists else "add the table"
        return (f"the publication {self.publication} {gap} and the source user {self.user} may not {verb} "
                f"({'; '.join(missing)}); as the owner of {self.table} run: {self.owner_sql}")


def publication_state(dsn: str, contract: Contract) -> PublicationState:
    (relid, exists, covers, may_create, owns_table, owns_pub, user, database, pub, table), = _query(
        dsn, _PUBLICATION_STATE, _names(contract))
    return PublicationState(table, pub, user, database, relid is not None, bool(exists), bool(covers),
                            bool(may_create), bool(owns_table), bool(owns_pub))


def publication_problem(dsn: str, contract: Contract) -> str | None:
    """None when the table's publication covers it or the source user may create it / add the
    table (nothing is changed); else why not, with the SQL the table's owner runs."""
    return publication_state(dsn, contract).problem()


def ensure_publication(dsn: str, contract: Contract) -> None:
    """The table's publication (inserts, updates, deletes, truncates) covering the table: a table
    dropped and re-created has left its publication, so it is added again (other tables a DBA put
    in it stay). :class:`PublicationError` when the source user may not (never a bare
    "permission denied")."""
    import psycopg2.errors

    state = publication_state(dsn, contract)
    problem = state.problem()
    if problem is not None:
        raise PublicationError(problem)
    if state.covers:
        return
    name = quote_ident(publication_name(contract))
    table = qualified(contract.source_schema, contract.source_name)
    try:
        _query(dsn, f"ALTER PUBLICATION {name} ADD TABLE {table}" if state.exists
               else f"CREATE PUBLICATION {name} FOR TABLE {table}")
    except psycopg2.errors.InsufficientPrivilege as exc:  # a rule the check above does not know
        raise PublicationError(state.problem(denied=" ".join(str(exc).split()))) from None


def drop_slot(dsn: str, contract: Contract, slot: str, *, only_inactive: bool = False) -> bool:
    """Drop the table's slot (named ``slot``); it releases the WAL it
    holds. False when there was none (or, ``only_inactive``, when a reader is using it)."""
    import psycopg2.errors

    try:
        rows = _query(dsn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                           "WHERE slot_name = %s AND database = current_database()"
                           + (" AND NOT active" if only_inactive else ""), (slot,))
    except psycopg2.errors.ObjectInUse:  # it became active in between
        if not only_inactive:
            raise
        return False
    return bool(rows)


@contextmanager
def new_slot(dsn: str, contract: Contract, slot: str) -> Iterator[tuple[int, str]]:
    """Create the table's slot (named ``slot``) and yield (its
    consistent LSN, its exported snapshot): a reader that joins the snapshot sees exactly the
    changes before the LSN, the stream the ones after. The snapshot stays importable until the
    block ends (the replication session stays idle). The table's publication is the caller's
    (:func:`ensure_publication`, before an old slot is dropped)."""
    import psycopg2.errors

    with closing(_connect(dsn, replication=True)) as conn:
        cur = conn.cursor()
        try:
            cur.execute(f"CREATE_REPLICATION_SLOT {quote_ident(slot)} LOGICAL pgoutput "
                        f"(SNAPSHOT 'export')")
        except psycopg2.errors.ConfigurationLimitExceeded:  # 53400: every slot taken
            raise ReplicationError(f"{contract.bronze_table}: cannot create the replication slot {slot}: "
                                   f"{_slots_full(None)}") from None
        _, consistent, snapshot, _ = cur.fetchone()
        yield lsn_int(consistent), snapshot


def acknowledge(dsn: str, contract: Contract, lsn: int, slot: str) -> None:
    """Let the slot (named ``slot``) release the WAL before ``lsn``
    (the changes bronze holds): its confirmed position becomes ``lsn``."""
    name = slot
    _query(dsn, "SELECT pg_replication_slot_advance(%s, %s::pg_lsn) WHERE %s::pg_lsn > "
                "(SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s)",
           (name, lsn_text(lsn), lsn_text(lsn), name))


# ------------------------------------------------------------------------------------ pgoutput


_STRUCTS: dict[str, struct.Struct] = {}
_I16, _I32 = struct.Struct("!h"), struct.Struct("!i")
_TEXT = ord("t")  # a TupleData value sent as text (its length and bytes follow)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, fmt: str) -> Any:
        unpack = _STRUCTS.get(fmt)
        if unpack is None:
            unpack = _STRUCTS.setdefault(fmt, struct.Struct("!" + fmt))
        (value,) = unpack.unpack_from(self.data, self.at)
        self.at += unpack.size
        return value

    def text(self) -> str:
        end = self.data.index(0, self.at)
        value = self.data[self.at:end].decode()
        self.at = end + 1
        return value

    def value(self, index: int) -> str | None:
        """The ``index``-th value of a TupleData, the reader left after the whole tuple; None for
        a NULL ('n'), an unchanged TOAST value ('u', not sent) or a missing column. Only that
        value is decoded: the others are skipped by their length."""
        data, at = self.data, self.at
        (count,) = _I16.unpack_from(data, at)
        at += 2
        found = None
        for column in range(count):
            kind = data[at]
            at += 1
            if kind == _TEXT:
                (size,) = _I32.unpack_from(data, at)
                at += 4
                if column == index:
                    found = data[at:at + size].decode()
                at += size
        self.at = at
        return found


@dataclass
class Relation:
    name: str
    columns: list[str]


@dataclass
class ChangeSet:
    """What one read of the stream found: the changed keys (last operation per key, in commit
    order) up to ``end_lsn``, the end of the last complete transaction read."""

    start_lsn: int
    end_lsn: int  # where the next read starts: the server's position when the read drained the stream
    keys: dict[int, str] = field(default_factory=dict)  # key -> I / U / D
    complete: bool = False  # the stream was read up to the server's position at the start
    transactions: int = 0
    changes: int = 0
    truncated: bool = False  # a TRUNCATE: every key may be gone (the load re-reads the table)

    @property
    def deleted(self) -> int:
        return sum(1 for op in self.keys.values() if op == "D")


class _Decoder:
    """Folds pgoutput messages into a :class:`ChangeSet`; a transaction counts at its COMMIT.

    An open transaction's keys and operations wait in two lists of ints and strings, objects the
    garbage collector does not track: a read of many changes leaves it nothing to promote, so
    it triggers no full collection (of every object of the process, the GIL held)."""

    def __init__(self, key: str, changes: ChangeSet) -> None:
        self.key, self.changes = key, changes
        self.relations: dict[int, Relation] = {}
        self.pending_keys: list[int] = []
        self.pending_ops: list[str] = []
        self.truncate = False

    def feed(self, payload: bytes) -> None:
        r = _Reader(payload)
        kind = chr(r.read("B"))
        if kind == "B":
            self.pending_keys, self.pending_ops, self.truncate = [], [], False
        elif kind == "C":
            r.read("B")
            r.read("q")
            end = r.read("q")
            self.changes.keys.update(zip(self.pending_keys, self.pending_ops, strict=True))  # last op per key
            self.changes.changes += len(self.pending_keys)
            self.changes.truncated |= self.truncate
            self.changes.transactions += 1
            self.changes.end_lsn = max(self.changes.end_lsn, end)
            self.pending_keys, self.pending_ops = [], []
        elif kind == "R":
            rel_id, schema, table = r.read("I"), r.text(), r.text()
            r.read("B")
            columns = []
            for _ in range(r.read("h")):
                r.read("B")
                columns.append(r.text())
                r.read("I")
                r.read("i")
            self.relations[rel_id] = Relation(f"{schema}.{table}", columns)
        elif kind == "T":
            self.truncate = True
        elif kind in "IUD":
            rel = self.relations[r.read("I")]
            marker = chr(r.read("B"))
            if marker in "KO":  # the old key (K) or old row (O): the key may have changed
                self._key(r.value(rel.columns.index(self.key)), "D" if kind == "D" else "U")
                if kind == "U":
                    marker = chr(r.read("B"))
            if marker == "N":
                self._key(r.value(rel.columns.index(self.key)), "I" if kind == "I" else "U")
        # 'O' origin, 'Y' type and anything newer carry no row change

    def _key(self, value: str | None, op: str) -> None:
        if value is not None:
            self.pending_keys.append(int(value))
            self.pending_ops.append(op)


def read_changes(dsn: str, contract: Contract, start_lsn: int, max_changes: int = DRAIN_CHANGES,
                 *, slot: str) -> ChangeSet:
    """Read the table's slot (named ``slot``) up to the server's
    WAL position at the call (complete transactions only; at most about ``max_changes`` changes,
    the rest waits for the next run). Nothing is acknowledged here: :func:`acknowledge` does that
    once bronze has committed the changes.

    The read is ``pg_logical_slot_peek_binary_changes`` (pgoutput, the same messages the streaming
    protocol carries), which never moves the slot. A streaming read does: psycopg2 moves its flush
    position to a keepalive's WAL end while no data message has arrived, and reports it with its
    next feedback, so a run killed after reading would have lost the changes it read. The peek
    starts at the slot's confirmed position: a slot behind ``start_lsn`` (bronze committed up to
    it, and the run was killed before it told the slot) is first advanced to it, as that run's
    acknowledgement would have. :func:`bronze_assets.lib.cdc.position_gap` rules out a slot
    confirmed past ``start_lsn``."""
    acknowledge(dsn, contract, start_lsn, slot)
    (target,) = _query(dsn, "SELECT pg_current_wal_lsn()::text")[0]
    target_lsn = lsn_int(target)
    changes = ChangeSet(start_lsn, start_lsn)
    decoder = _Decoder(contract.primary_key[0], changes)
    # a server-side cursor: the changes arrive 10,000 at a time, never all in this process's memory
    with closing(_connect(dsn)) as conn, conn.cursor(name="bronze_peek", withhold=True) as cur:
        cur.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, "
                    "'proto_version', '1', 'publication_names', %s)",
                    (slot, target, max_changes, publication_name(contract)))
        # iterated: each row's tuple is built as it is read and freed at once (a list of fetched
        # rows would outlive young collections and be promoted, then trigger full ones)
        cur.itersize = 10_000
        read = 0
        for (data,) in cur:
            decoder.feed(bytes(data))
            read += 1
    changes.complete = read < max_changes
    if changes.complete:
        changes.end_lsn = max(changes.end_lsn, target_lsn)
    return changes
