"""``bronze doctor``: what the loader needs on a PostgreSQL source, what is missing, and the exact
SQL the tables' owner (or a superuser) runs to fix it.

Connected as the loader, nothing is changed: privileges (CONNECT, USAGE, SELECT), each table's
existence and columns against its contract, the ``updated_at`` index of the tables loaded by
watermark, ``pg_read_all_stats`` (the watermark's cap reads ``pg_stat_activity``), and for CDC
tables ``wal_level``, the REPLICATION attribute, the table's publication and
``max_slot_wal_keep_size``. What CDC needs is told by the same functions the load uses
(:mod:`bronze_assets.lib.source.replication`), so the doctor and the load never disagree.

A check is ``missing`` when a load cannot do what its contract says without it (the load fails,
or a CDC table falls back to the watermark pattern), ``warn`` when it is recommended.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from bronze_assets.contracts import CONTRACTS, Contract, LoadPattern
from bronze_assets.lib.source.ddl import create_index_statements, qualified, quote_ident, quote_literal
from bronze_assets.lib.source.dsn import describe_dsn

OK, MISSING, WARN = "ok", "missing", "warn"
SOURCE = "(source)"  # the row of a check about the server or the loader's role, not one table


@dataclass(frozen=True)
class Check:
    table: str  # schema.table, a schema, or SOURCE
    check: str
    status: str  # ok / missing / warn
    detail: str = ""
    fix: str = ""  # the SQL (or command) that fixes it; empty when ok


@dataclass
class Diagnosis:
    source: str  # describe_dsn: host, port, db, user, never the password
    checks: list[Check] = field(default_factory=list)
    error: str | None = None  # the source could not be reached: one line, what to check

    @property
    def missing(self) -> list[Check]:
        return [c for c in self.checks if c.status == MISSING]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == WARN]

    @property
    def ok(self) -> bool:
        """Nothing required is missing (warnings allowed) and the source was reached."""
        return self.error is None and not self.missing

    def fixes(self, status: str) -> list[str]:
        """The distinct fixes of the checks with ``status``, in order."""
        return list(dict.fromkeys(c.fix for c in self.checks if c.status == status and c.fix))

    def summary(self) -> str:
        if self.error is not None:
            return f"cannot check the source: {self.error}"
        tables = len({c.table for c in self.checks if c.table != SOURCE and "." in c.table})
        verdict = "ready" if self.ok else "NOT ready"
        missing, warnings = len(self.missing), len(self.warnings)
        return (f"{self.source}: {verdict} — {len(self.checks)} checks over {tables} tables: "
                f"{len(self.checks) - missing - warnings} ok, {missing} missing, {warnings} warnings")

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "ok": self.ok, "error": self.error,
                "missing": len(self.missing), "warnings": len(self.warnings),
                "checks": [asdict(c) for c in self.checks],
                "sql_required": self.fixes(MISSING), "sql_recommended": self.fixes(WARN)}


class _Catalog:
    """The loader's session: one query at a time, rows as tuples."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def rows(self, sql: str) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []

    def one(self, sql: str) -> Any:
        return self.rows(sql)[0][0]


def diagnose(dsn: str, contracts: Iterable[Contract] | None = None, *, cdc: bool = True) -> Diagnosis:
    """Every check of every table of ``contracts`` (default: every tables file's) on ``dsn``,
    connected as the user it names; ``cdc``: log-based CDC is on (``Settings.cdc``).
    A source that cannot be reached gives a :class:`Diagnosis`
    whose ``error`` is one line naming host, port, database and user, and what to check."""
    from bronze_assets.lib.failures import classify
    from bronze_assets.lib.source.postgres import connect

    contracts = list(CONTRACTS.values() if contracts is None else contracts)
    diagnosis = Diagnosis(describe_dsn(dsn))
    try:
        conn = connect(dsn, autocommit=True)
    except Exception as exc:  # any failure to connect: one line
        diagnosis.error = classify(exc, "source", dsn).message.removeprefix("source: ")
        return diagnosis
    try:
        catalog = _Catalog(conn)
        diagnosis.checks += _role_checks(catalog)
        schemas = list(dict.fromkeys(c.source_schema for c in contracts))
        usable = {}
        for schema in schemas:
            check = _schema_check(catalog, schema)
            usable[schema] = check.status == OK
            diagnosis.checks.append(check)
        for contract in contracts:
            diagnosis.checks += _table_checks(catalog, contract, usable[contract.source_schema])
        cdc_tables = [c for c in contracts if c.cdc]
        if cdc_tables:
            diagnosis.checks += _cdc_checks(catalog, dsn, cdc_tables, on=cdc)
    finally:
        conn.close()
    return diagnosis


def _role_checks(catalog: _Catalog) -> list[Check]:
    user, database, connect_ok, stats = catalog.rows(
        "SELECT current_user::text, current_database()::text, "
        "has_database_privilege(current_database(), 'CONNECT'), "
        "pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')")[0]
    role = quote_ident(user)
    return [
        Check(SOURCE, f"CONNECT on database {database}", OK if connect_ok else MISSING,
              "" if connect_ok else "granted through PUBLIC today; a new session would be refused",
              "" if connect_ok else f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {role}"),
        Check(SOURCE, "pg_read_all_stats (watermark cap)", OK if stats else WARN,
              "" if stats else "recommended: without it the watermark's cap cannot see open transactions "
                               "in pg_stat_activity and relies on the 15-minute overlap alone",
              "" if stats else f"GRANT pg_read_all_stats TO {role}"),
    ]


def _schema_check(catalog: _Catalog, schema: str) -> Check:
    exists, usage, user = catalog.rows(
        f"SELECT n.oid IS NOT NULL, n.oid IS NOT NULL AND has_schema_privilege(n.oid, 'USAGE'), "
        f"current_user::text FROM (SELECT 1) one "
        f"LEFT JOIN pg_namespace n ON n.nspname = {quote_literal(schema)}")[0]
    if not exists:
        return Check(schema, "schema exists", MISSING, f"no schema {schema} in this database",
                     "bronze init --refresh (or point $BRONZE_SOURCE_DSN at the database that holds it)")
    if not usage:
        return Check(schema, "USAGE on schema", MISSING, "the loader cannot see the schema's tables",
                     f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {quote_ident(user)}")
    return Check(schema, "USAGE on schema", OK)


def _table_checks(catalog: _Catalog, contract: Contract, schema_usable: bool) -> list[Check]:
    from bronze_assets.lib.source.schema import compare, live_columns_sql

    name = contract.source_ref
    table = qualified(contract.source_schema, contract.source_name)
    # the catalog, not to_regclass(): a name lookup in a schema without USAGE is itself refused
    found = catalog.rows(
        f"SELECT c.oid::bigint, c.relkind::text, has_table_privilege(c.oid, 'SELECT'), current_user::text, "
        f"EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        f"AND a.attnum = i.indkey[0] WHERE i.indrelid = c.oid AND a.attname = 'updated_at') "
        f"FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = {quote_literal(contract.source_schema)} "
        f"AND c.relname = {quote_literal(contract.source_name)}")
    if not found:
        return [Check(name, "table exists", MISSING, f"no table {name} in this database",
                      "bronze init --refresh (the tables file lists a table the source no longer has)")]
    _, relkind, select, user, indexed = found[0]
    checks = [Check(name, "table exists", OK),
              Check(name, "SELECT on table", OK if select else MISSING,
                    "" if select else "the load reads the table",
                    "" if select else f"GRANT SELECT ON {table} TO {quote_ident(user)}")]
    drift = compare(contract, catalog.rows(live_columns_sql(contract)))
    if drift.breaking:
        checks.append(Check(name, "columns match the contract", MISSING, drift.describe(),
                            "bronze init --refresh (records the source's columns in the tables file)"))
    elif drift.added or drift.rescued:
        checks.append(Check(name, "columns match the contract", WARN, drift.describe(),
                            "bronze init --refresh (records the source's columns in the tables file)"))
    else:
        checks.append(Check(name, "columns match the contract", OK))
    if contract.load_pattern is not LoadPattern.FULL:
        fix = "" if indexed else create_index_statements(
            [contract], contract.source_schema, concurrently=relkind != "p")[0]  # not on a partitioned table
        checks.append(Check(name, "index on updated_at", OK if indexed else WARN,
                            "" if indexed else "recommended: without it each watermark read scans the table",
                            fix))
    return checks


def _cdc_checks(catalog: _Catalog, dsn: str, contracts: list[Contract], on: bool) -> list[Check]:
    from bronze_assets.lib.cdc import CDC_OFF
    from bronze_assets.lib.source import replication

    tables = ", ".join(c.source_ref for c in contracts)
    if not on:
        return [Check(SOURCE, f"log-based CDC ({tables})", OK, f"{CDC_OFF}: loaded by the watermark pattern")]
    level, may_replicate = replication.replication_settings(dsn)
    user = catalog.one("SELECT current_user::text")
    keep = catalog.one("SELECT current_setting('max_slot_wal_keep_size')")
    fallback = f"without it {tables} load by the watermark pattern (or set BRONZE_CDC=off)"
    unset = keep == "-1"
    checks = [
        Check(SOURCE, "wal_level = logical (CDC)", OK if level == "logical" else MISSING,
              "" if level == "logical" else f"wal_level is {level!r}; {fallback}; a restart applies it",
              "" if level == "logical" else "ALTER SYSTEM SET wal_level = 'logical'"),
        Check(SOURCE, "REPLICATION attribute (CDC)", OK if may_replicate else MISSING,
              "" if may_replicate else f"{fallback}; also a pg_hba.conf line allowing its replication "
                                       f"connections (RDS: GRANT rds_replication)",
              "" if may_replicate else f"ALTER ROLE {quote_ident(user)} WITH REPLICATION"),
        Check(SOURCE, "max_slot_wal_keep_size (CDC)", WARN if unset else OK,
              "recommended: unset, an abandoned slot keeps WAL until the disk is full" if unset else keep,
              "ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'" if unset else ""),
    ]
    for contract in contracts:
        state = replication.publication_state(dsn, contract)
        if not state.table_exists:
            continue  # reported by the table's own checks
        problem = state.problem()
        if problem is None:
            detail = "" if state.covers else f"the loader creates {state.publication} on the first load"
            checks.append(Check(contract.source_ref, "publication (CDC)", OK, detail))
        else:
            checks.append(Check(contract.source_ref, "publication (CDC)", MISSING, problem, state.owner_sql))
    return checks


def render(diagnosis: Diagnosis) -> list[str]:
    """The diagnosis as lines: a table (table, check, status, fix), the SQL to run, a summary."""
    if diagnosis.error is not None:
        return [f"error: {diagnosis.error}"]
    rows = [("table", "check", "status", "fix")] + [
        (c.table, c.check, c.status, c.fix or c.detail) for c in diagnosis.checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows]
    for status, title in ((MISSING, "required"), (WARN, "recommended")):
        checks = [c for c in diagnosis.checks if c.status == status and c.fix]
        if not checks:
            continue
        lines += ["", f"-- {title}: run as the tables' owner or a superuser"]
        for fix in dict.fromkeys(c.fix for c in checks):
            lines.append(f"-- then: {fix}" if fix.startswith("bronze ") else f"{fix};")
        if any(c.fix.startswith("ALTER SYSTEM SET wal_level") for c in checks):
            lines.append("-- then restart the server (wal_level applies at start)")
        if any(c.fix.startswith("ALTER SYSTEM SET max_slot") for c in checks):
            lines.append("SELECT pg_reload_conf();")
    lines += ["", diagnosis.summary()]
    return lines
