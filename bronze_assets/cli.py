"""The ``bronze`` console script."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import click

from bronze_assets.settings import ENV_SOURCE_DSN, Settings


def _as_of(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        """An object store that the bronze root cannot be reached on (no credentials, access
        denied, no such bucket, endpoint down) ends any command in one line, exit 1."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:
            from bronze_assets.lib.store_errors import object_store_problem
            from bronze_assets.settings import Settings

            try:
                settings: Settings | None = Settings.from_env()
            except ValueError:  # a malformed variable (exc may say so itself)
                settings = None
            problem = None if ctx.params.get("verbose") or settings is None else \
                object_store_problem(exc, settings.bronze_root, settings.object_store_endpoint)
            if problem is None:
                raise
            _fail(problem)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from bronze_assets.settings import VARIABLES

        with formatter.section("Environment (README.md, Configuration)"):
            formatter.write_dl([(v.name, f"{v.meaning} (default: {v.default})") for v in VARIABLES])


def _verbose() -> bool:
    """Whether ``bronze --verbose`` was given (then failures show their traceback)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("verbose"))


def _check_root() -> None:
    """One request to the bronze root's store before a command's work, and before Dagster is
    imported (seconds of CPU): a store that refuses or is down ends the command in one line within
    seconds (``Storage.check``; the group's handler words it)."""
    from bronze_assets.lib.delta.storage import Storage
    from bronze_assets.settings import Settings

    settings = Settings.from_env()
    Storage(settings.bronze_root, settings=settings).check()


def _fail_on(exc: BaseException, what: str) -> None:
    """Exit 1 with ``exc`` as one line (the failure policy's message); with ``--verbose``, raise it."""
    if _verbose():
        raise exc
    from bronze_assets.lib.failures import classify

    _fail(classify(exc, what).message)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log progress details; show a failure's traceback.")
def main(verbose: bool) -> None:
    """bronze_assets: land the inventory PostgreSQL database in Delta Lake with Dagster.

    Every setting is an environment variable (listed below); the source defaults to an embedded
    PostgreSQL and the bronze tables to $BRONZE_DATA_DIR/bronze."""
    import atexit
    import contextlib
    import gc
    import os

    # at exit, the interpreter's own collections walk every object the run's imports made (≈2 s
    # after a load); what must happen at exit is done by atexit handlers (they run before this one)
    atexit.register(gc.freeze)
    # delta-rs's own log (e.g. a WARN per credential provider tried): errors only, unless verbose
    os.environ.setdefault("RUST_LOG", "warn" if verbose else "error")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from bronze_assets.lib.secrets import install_log_redaction, protect_logs

    install_log_redaction()
    # every secret the settings hold, masked from the start (a malformed variable: the command
    # that reads it says which)
    with contextlib.suppress(ValueError):
        protect_logs(Settings.from_env())


@main.command()
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Volume: 1 = the seed's ≈486k rows, 0 = empty tables, 10 = 4.86M rows.")
@click.option("--defect-rate", type=float, default=0.01, show_default=True,
              help="Share of rows carrying each defect kind (NULLs, malformed values, "
                   "out-of-range values, orphan foreign keys).")
@click.option("--seed", "seed_value", type=int, default=42, show_default=True,
              help="Random seed: the same seed and --as-of give identical data.")
@click.option("--as-of", default=None, metavar="ISO-TIMESTAMP",
              help="The 'now' the data is generated relative to (default: today 00:00 UTC).")
@click.option("--reset", is_flag=True, help="Drop and recreate the ten tables if they hold data.")
@click.option("--dsn", default=None, metavar="URI",
              help=f"libpq URI of the source (default: ${ENV_SOURCE_DSN}, else embedded).")
def seed(scale: float, defect_rate: float, seed_value: int, as_of: str | None, reset: bool,
         dsn: str | None) -> None:
    """Create schema tests and the ten source tables and fill them with generated data; write the
    landing files of shipment_events (≈ 2 events per shipment) below $BRONZE_LANDING_ROOT."""
    from bronze_assets.demo.event_files import write_event_files
    from bronze_assets.demo.generator import SeedOptions
    from bronze_assets.demo.seed import SourceNotEmptyError, seed_source
    from bronze_assets.lib.source.dsn import describe_dsn, redact
    from bronze_assets.lib.source.postgres import SourceConnectionError, resolve_source_dsn

    target = None
    try:
        kwargs = {"as_of": _as_of(as_of)} if as_of else {}
        options = SeedOptions(scale=scale, defect_rate=defect_rate, seed=seed_value, **kwargs)
        target = resolve_source_dsn(Settings.from_env(), dsn)
        report = seed_source(target, options, reset=reset)
        events = write_event_files(Settings.from_env().landing_root, report.rows.get("shipments", 0), options)
    except (SourceNotEmptyError, SourceConnectionError, ValueError) as exc:
        _fail(str(exc))
        return
    except Exception as exc:  # e.g. a role that may not create schema tests: one line, not a traceback
        from bronze_assets.lib.failures import Cause, explain

        cause, detail, _ = explain(exc)
        if cause is not Cause.PERMISSION or _verbose():
            _fail_on(exc, "bronze seed")
        _fail(f"cannot seed {describe_dsn(target or '')}: {redact(detail, target)} — bronze seed creates "
              f"schema tests and its ten tables: run it as the database's owner (or a role with CREATE on "
              f"the database and schema tests), or seed a scratch database via --dsn")
        return
    click.echo(f"seeded {describe_dsn(target)} schema tests in {report.seconds:.1f} s")
    width = max(len(n) for n in report.rows)
    for name, rows in report.rows.items():
        defects = sum(report.defects[name].values())
        click.echo(f"  {name:<{width}}  {rows:>10,} rows  {defects:>8,} defective")
    click.echo(f"  {'total':<{width}}  {report.total_rows:>10,} rows")
    if events.files:
        click.echo(f"landing files: {len(events.files)} files, {events.events:,} shipment events "
                   f"({sum(events.defects.values()):,} defective, bad lines included) below "
                   f"{Settings.from_env().landing_root}/shipment_events/")


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


@main.command()
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Scale used to seed the source when it is empty.")
@click.option("--seed-external", is_flag=True,
              help=f"Seed the source named by ${ENV_SOURCE_DSN} too when it is empty (by default only "
                   f"the embedded server is seeded).")
def demo(scale: float, seed_external: bool) -> None:
    """Seed the embedded source if empty, materialize every bronze asset and print a summary.

    Every table that can load is loaded; the summary marks the ones that failed, with their
    reason, and the exit code is 1. Ctrl-C stops it (exit code 130)."""
    _check_root()  # before seeding, and before Dagster is imported
    from bronze_assets.lib.quality import worker

    # GX's import and the tables' suites beside Dagster's import, seeding and start-up
    worker.start_in_background(Settings.from_env(), every_table=True)
    from bronze_assets.demo.run import DemoRefusedError, format_summary, run_demo
    from bronze_assets.lib.source.postgres import SourceConnectionError

    try:
        rows = run_demo(scale, on_progress=lambda msg: click.echo(msg, err=True), seed_external=seed_external)
    except KeyboardInterrupt:
        click.echo("bronze demo: interrupted — the tables loaded so far are committed; run `bronze demo` "
                   "again to finish", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except (SourceConnectionError, DemoRefusedError) as exc:
        _fail(str(exc))
        return
    except Exception as exc:
        _fail_on(exc, "bronze demo")
        return
    click.echo(format_summary(rows))
    failed = [r for r in rows if r.error]
    if _verbose():
        for r in failed:
            click.echo(f"\n{r.table}: {r.trace or r.error}", err=True)
    if failed:
        sys.exit(1)


@main.group()
def server() -> None:
    """Manage the embedded PostgreSQL source (used when BRONZE_SOURCE_DSN is unset)."""


@server.command("uri")
def server_uri() -> None:
    """Start the embedded server if needed and print its connection URI (it stops on exit)."""
    from bronze_assets.lib.source.embedded import embedded_server

    click.echo(embedded_server(Settings.from_env().pgdata).start())


@server.command("status")
def server_status() -> None:
    """Say whether the embedded server is running and where its data lives."""
    from bronze_assets.lib.source.embedded import embedded_server

    srv = embedded_server(Settings.from_env().pgdata)
    click.echo(f"{'running' if srv.is_running else 'stopped'}: {srv.pgdata}")


_ROLES = ("analyst", "engineer", "scientist", "operations", "admin")  # = governance.access.Role


@main.command("read")
@click.argument("table")
@click.option("--role", type=click.Choice(_ROLES), required=True,
              help="Whose view to show: PII is decrypted, masked or hidden per the access matrix.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Rows to show (0 = all).")
@click.option("--where", "where", default=None, metavar="CONDITION",
              help="Only rows matching this SQL condition on the table's columns, e.g. "
                   "\"status = 'SHIPPED' AND order_date >= DATE '2025-01-01'\" (DataFusion SQL).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Output: aligned text, CSV, or JSON Lines (one object per row).")
@click.option("--columns", default=None, metavar="A,B,…", help="Only these columns (default: all).")
def read(table: str, role: str, limit: int, where: str | None, fmt: str, columns: str | None) -> None:
    """Print bz_<TABLE> as ROLE may see it, in primary key order; every read of a PII table is
    audited."""
    from bronze_assets.defs.resources import BronzeStorage
    from bronze_assets.lib.governance import PiiKeyError, TableNotLoadedError, read_table
    from bronze_assets.lib.governance.reader import ReadConditionError

    try:
        cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        data = read_table(table, role, BronzeStorage().storage(), columns=cols, limit=limit or None,
                          where=where)
    except ReadConditionError as exc:
        _fail(f"--where: {exc}")
        return
    except (KeyError, ValueError, TableNotLoadedError, PiiKeyError) as exc:
        _fail(str(exc).strip("'\""))
        return
    _print_table(data, fmt)


def _print_table(data, fmt: str) -> None:  # type: ignore[no-untyped-def]
    import json

    import pyarrow as pa

    rows = data.to_pylist()
    if fmt == "json":
        for row in rows:
            click.echo(json.dumps(row, default=str))
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(data.column_names)
        writer.writerows([["" if v is None else v for v in r.values()] for r in rows])
    else:
        numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
                   for t in data.schema.types]
        cells = [[("NULL" if v is None else str(v)) for v in r.values()] for r in rows]
        widths = [max([len(n), *(len(c[i]) for c in cells)]) for i, n in enumerate(data.column_names)]

        def line(values: list[str]) -> str:  # numbers right-aligned, no trailing blanks
            return "  ".join(v.rjust(w) if num else v.ljust(w)
                             for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

        click.echo(line(data.column_names))
        for c in cells:
            click.echo(line(c))
        click.echo(f"({len(rows):,} row{'' if len(rows) == 1 else 's'})", err=True)


@main.command("uc-sql")
@click.option("--catalog", default="main", show_default=True, help="Unity Catalog catalog of the tables.")
@click.option("--schema", default="bronze", show_default=True, help="Schema of the bz_* tables.")
@click.option("--root", default=None, help="Bronze root of the external tables [default: $BRONZE_ROOT].")
@click.option("--no-tables", is_flag=True, help="Only GRANTs and masks (the tables exist already).")
def uc_sql_command(catalog: str, schema: str, root: str | None, no_tables: bool) -> None:
    """Print Unity Catalog SQL: the bz_* tables as external tables over the bronze root, GRANTs
    and column masks for the PII access matrix."""
    from bronze_assets.lib.governance import uc_sql
    from bronze_assets.settings import bronze_root

    click.echo(uc_sql(catalog, schema, None if no_tables else (root or bronze_root())))


@main.command()
@click.option("--customer-id", type=int, required=True, help="customer_id of the data subject to erase.")
def forget(customer_id: int) -> None:
    """GDPR erasure: shred the customer's key, mark bz_customers rows FORGOTTEN, audit it."""
    from bronze_assets.defs.resources import BronzeStorage
    from bronze_assets.lib.governance import TableNotLoadedError, forget_subject

    try:
        result = forget_subject("customers", customer_id, BronzeStorage().storage())
    except TableNotLoadedError as exc:
        _fail(str(exc))
        return
    click.echo(
        f"customer {customer_id}: {result.rows_forgotten} row(s) of {result.table} FORGOTTEN "
        f"(version {result.version}); {result.keys_shredded} key(s) shredded; audit row written"
    )
    if not result.rows_forgotten:
        click.echo(f"note: {result.table} has no row for customer {customer_id}; its key is tombstoned, "
                   f"so a later load stores its personal data as NULL", err=True)


@main.command()
@click.argument("table")
@click.option("--limit", type=int, default=20, show_default=True, help="Newest commits to show.")
def history(table: str, limit: int) -> None:
    """Show the Delta commit history of bronze table TABLE (e.g. bz_orders)."""
    from bronze_assets.defs.resources import BronzeStorage
    from bronze_assets.lib.delta.timetravel import TimeTravelError, contract_for
    from bronze_assets.lib.delta.timetravel import history as table_history

    storage = BronzeStorage()
    try:
        contract = contract_for(table)
        rows = table_history(storage.storage(), contract.bronze_table, limit)
    except TimeTravelError as exc:
        _fail(str(exc))
        return
    click.echo(f"{'version':>7}  {'timestamp':<25} {'operation':<10} {'inserted':>9} {'updated':>9} "
               f"{'deleted':>9}  batch_id")
    for r in rows:
        click.echo(f"{r['version']:>7}  {r['timestamp']:<25} {r['operation'] or '-':<10} "
                   f"{_n(r['rows_inserted']):>9} {_n(r['rows_updated']):>9} {_n(r['rows_deleted']):>9}  "
                   f"{r['batch_id'] or '-'}")


def _n(value: object) -> str:
    return "-" if value is None else f"{int(value):,}"  # type: ignore[call-overload]


@main.command()
@click.argument("table")
@click.option("--version", "version", type=int, default=None, help="Version to restore.")
@click.option("--timestamp", default=None, metavar="ISO-TIMESTAMP",
              help="Restore the latest version committed at or before this time (UTC if no zone).")
@click.option("--dry-run", is_flag=True, help="Only show what the restore would change.")
def restore(table: str, version: int | None, timestamp: str | None, dry_run: bool) -> None:
    """Restore bronze table TABLE to an earlier version (a new, audited commit)."""
    from bronze_assets.defs.resources import BronzeStorage
    from bronze_assets.lib.delta.timetravel import TimeTravelError, contract_for
    from bronze_assets.lib.delta.timetravel import restore as restore_table
    from bronze_assets.lib.delta.writers import DeletionVectorsError
    from bronze_assets.lib.governance.pii import pii_protection

    storage = BronzeStorage()
    try:
        contract = contract_for(table)
        where = storage.storage()
        plan = restore_table(where, contract, version=version, timestamp=_as_of(timestamp), dry_run=dry_run,
                             pii=pii_protection(contract, where))
    except (TimeTravelError, DeletionVectorsError) as exc:
        _fail(str(exc))
        return
    click.echo(("dry run — " if dry_run else "restored — ") + plan.describe())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")
def status(as_json: bool) -> None:
    """Is every bronze table fresh, and what failed? Exit code 1 if any table is stale, never
    loaded or its last load failed.

    Reads the Delta tables under $BRONZE_ROOT, bz_audit_log, and the latest asset check results
    from the Dagster instance ($DAGSTER_HOME, else $BRONZE_DATA_DIR/dagster_home when it exists).
    """
    import os

    _check_root()
    from bronze_assets.defs.resources import BronzeStorage
    from bronze_assets.lib.monitoring import status as table_status
    from bronze_assets.settings import data_dir, env

    instance = None
    home = env("DAGSTER_HOME") or (str(data_dir() / "dagster_home")
                                              if (data_dir() / "dagster_home").is_dir() else None)
    if home:
        import dagster as dg

        os.environ["DAGSTER_HOME"] = home
        instance = dg.DagsterInstance.get()
    storage = BronzeStorage()
    rows = table_status.bronze_status(storage.storage(), instance=instance)
    click.echo(table_status.as_json(rows) if as_json else table_status.render(rows))
    if not all(r.healthy for r in rows):
        sys.exit(1)


@main.command("reconcile")
@click.argument("tables", nargs=-1, metavar="[TABLE]...")
@click.option("--deep", is_flag=True,
              help="Also recompute each row's hash from its bronze columns (PII decrypted, FORGOTTEN rows "
                   "skipped) and report rows altered in bronze.")
@click.option("--repair", is_flag=True,
              help="Re-load the mismatching keys through the normal MERGE (audited), then reconcile again.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def reconcile_command(tables: tuple[str, ...], deep: bool, repair: bool, as_json: bool) -> None:
    """Compare bronze with the source (every table, or TABLE…) in one source snapshot: keys ACTIVE
    in bronze but gone from the source (extra), source keys not ACTIVE in bronze (missing), rows
    whose record_hash differs from the source's (differs); rows changed since the table's last load
    are pending, not faults. Mismatches go to bz_reconciliation. Exit code 1 on any fault, a table
    never loaded or a source table that is gone."""
    from bronze_assets.contracts import CONTRACTS, get_contract
    from bronze_assets.defs.resources import BronzeEngine, BronzeStorage
    from bronze_assets.lib.reconcile.command import as_json as run_json
    from bronze_assets.lib.reconcile.command import reconcile_and_repair, render
    from bronze_assets.lib.source.postgres import SourceConnectionError, resolve_source_dsn

    try:
        contracts = [get_contract(t) for t in tables] if tables else list(CONTRACTS.values())
    except KeyError as exc:
        _fail(str(exc.args[0]))
        return
    try:
        storage = BronzeStorage().storage()
        run = reconcile_and_repair(contracts, resolve_source_dsn(storage.settings), storage, deep=deep,
                                   repair=repair, job_id="bronze reconcile",
                                   bronze_side=BronzeEngine().bronze_side)
    except SourceConnectionError as exc:
        _fail(str(exc))
        return
    except Exception as exc:
        _fail_on(exc, "bronze reconcile")
        return
    click.echo(run_json(run) if as_json else render(run))
    if not run.healthy:
        sys.exit(1)


@main.command()
@click.option("--schema", default=None, metavar="NAME", help="Source schema (default: tests).")
def ddl(schema: str | None) -> None:
    """Print the CREATE TABLE statements of the ten source tables, generated from the contracts
    (the source schema bronze expects: docs/contract.md §1), and the recommended indexes on
    updated_at of the tables loaded by watermark. Foreign keys are not declared: real sources
    carry orphans, which the referential check reports."""
    from bronze_assets.contracts import in_dependency_order
    from bronze_assets.lib.source.ddl import create_schema_statements
    from bronze_assets.settings import SOURCE_SCHEMA

    for statement in create_schema_statements(in_dependency_order(), schema or SOURCE_SCHEMA):
        click.echo(statement + ";\n")


@main.command()
@click.option("--dsn", default=None, metavar="URI",
              help=f"Source to check [default: ${ENV_SOURCE_DSN}, the configured source, else the "
                   f"embedded server].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def doctor(dsn: str | None, as_json: bool) -> None:
    """Check a source before loading it: connected as the loader, for every table of every tables
    file, the grants, the table and its columns, the updated_at index, pg_read_all_stats, and for
    CDC tables wal_level, REPLICATION, the publication and max_slot_wal_keep_size; each missing
    piece with the exact SQL the owner (or a superuser) runs. Changes nothing. Exit code 1 when
    something required is missing or the source cannot be reached (warnings alone: 0)."""
    import json

    from bronze_assets.lib.source.doctor import diagnose, render
    from bronze_assets.lib.source.postgres import resolve_source_dsn

    diagnosis = diagnose(resolve_source_dsn(Settings.from_env(), dsn), cdc=Settings.from_env().cdc)
    if as_json:
        click.echo(json.dumps(diagnosis.as_json(), indent=2))
    elif diagnosis.error is not None:
        click.echo(render(diagnosis)[0], err=True)
    else:
        click.echo("\n".join(render(diagnosis)))
    sys.exit(0 if diagnosis.ok else 1)


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@main.command("init")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--dsn", default=None, metavar="URI",
              help="Source to introspect [default: $BRONZE_SOURCE_DSN, else the embedded server]. "
                   "Never written to the file.")
@click.option("--schema", "schemas", multiple=True, metavar="NAME",
              help="Source schema (repeatable) [default: public; with --refresh: the file's].")
@click.option("--tables", "tables", multiple=True, metavar="NAMES",
              help="Tables to load: names or globs, comma-separated or repeated (table or schema.table) "
                   "[default: *].")
@click.option("--exclude", multiple=True, metavar="NAMES", help="Tables to leave out (names or globs).")
@click.option("--dsn-env", default=None, metavar="VAR",
              help="Environment variable the assets read the DSN from [default: BRONZE_SOURCE_DSN].")
@click.option("--refresh", is_flag=True,
              help="PATH exists: re-discover its columns and add new matching tables; the overlay is kept.")
@click.option("--incremental-rows", type=int, default=None, metavar="N",
              help="Tables with updated_at and more rows than this load incrementally [default: 100000].")
def init(path: str | None, dsn: str | None, schemas: tuple[str, ...], tables: tuple[str, ...],
         exclude: tuple[str, ...], dsn_env: str | None, refresh: bool, incremental_rows: int | None) -> None:
    """Introspect a source and write its tables file (a BronzeTables component, defs.yaml): the
    columns and types from the catalog, and per table a reviewed overlay (primary key, pattern,
    cadence, partitioning, Z-order, foreign keys) to edit. PATH defaults to
    bronze_assets/defs/<first schema>/defs.yaml (the folder Dagster loads). Then: review the file,
    `dg check defs`, load (README, "Your own database")."""
    from pathlib import Path

    from bronze_assets.contracts.tablefile import SourceSpec, read_file, render
    from bronze_assets.contracts.tables import DEFS_DIR
    from bronze_assets.lib.source.introspect import INCREMENTAL_ROWS, identifier, introspect
    from bronze_assets.lib.source.postgres import resolve_source_dsn

    existing = None
    if refresh:
        if path is None or not Path(path).is_file():
            _fail("--refresh needs the PATH of an existing tables file")
        existing = read_file(Path(path))
        base = existing.source
    else:
        base = SourceSpec()
    updates: dict[str, object] = {}
    if schemas:
        updates["schemas"] = list(schemas)
    if tables:
        updates["tables"] = _split(tables)
    if exclude:
        updates["exclude"] = _split(exclude)
    if dsn_env:
        updates["dsn_env"] = dsn_env
    source = SourceSpec.model_validate({**base.model_dump(), **updates})
    target = Path(path) if path else DEFS_DIR / identifier(source.schemas[0]) / "defs.yaml"
    if target.exists() and not refresh:
        _fail(f"{target} exists: refresh it with  bronze init --refresh {target}  (keeps your overlay)")
    try:
        result = introspect(resolve_source_dsn(Settings.from_env(), dsn), source, existing=existing,
                            name=target.parent.name,
                            incremental_rows=incremental_rows or INCREMENTAL_ROWS)
    except Exception as exc:  # the failure policy's one line (connection, permission, …)
        _fail_on(exc, "bronze init")
        return
    if not result.file.tables:
        _fail(f"no table of schema {', '.join(source.schemas)} matches {', '.join(source.tables)} "
              f"(or the role may not see them: GRANT USAGE ON SCHEMA …); nothing written")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(result.file, result.notes))
    for name in result.added:
        spec = result.file.tables[name]
        click.echo(f"  + {name:<28} {spec.load_pattern:<12} {spec.cadence:<8}"
                   + (f"  NOT LOADED: {spec.skip.split(':')[0]}" if spec.skip
                      else "  full snapshot: no primary key" if not spec.primary_key else ""))
    for name in result.refreshed:
        click.echo(f"  ~ {name:<28} columns refreshed"
                   + (f"  NOT LOADED: {result.file.tables[name].skip.split(':')[0]}"
                      if result.file.tables[name].skip else ""))
    for name in result.missing:
        click.echo(f"  ! {name:<28} not in the source any more (kept; its load fails until it is back)")
    stored_as = [n.text for n in result.notes if " is stored as " in n.text]
    if stored_as:
        click.echo("stored as another type (README, Type mapping):")
        for text in stored_as:
            click.echo(f"  {text}")
    skipped = [n for n, s in result.file.tables.items() if s.skip]
    click.echo(f"wrote {target}: {len(result.file.tables) - len(skipped)} table(s) to load"
               + (f", {len(skipped)} not loaded (see 'skip' in the file)" if skipped else "")
               + ". Review it, then: dg check defs")


if __name__ == "__main__":
    main()


@main.group()
def cdc() -> None:
    """Log-based CDC: the replication slots of the tables whose contract prefers it."""


@cdc.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per table.")
def cdc_status(as_json: bool) -> None:
    """Each CDC table's slot (this deployment's: $BRONZE_DEPLOYMENT_ID, else a hash of the bronze
    root): WAL status, WAL it holds, confirmed and bronze positions, and for a table that loads by
    the watermark pattern instead, why (with what to run); then the bronze slots of other
    deployments on the source. Exits 1 when bronze depends on a slot that can no longer give every
    change (gone, lost, its table re-created or out of the publication, confirmed past bronze's
    position, or another root's), or when the source cannot be reached."""
    import json

    from bronze_assets.contracts import CONTRACTS
    from bronze_assets.defs.resources import BronzeStorage
    from bronze_assets.lib.cdc import check_stream, deployment_id, fallback_reason
    from bronze_assets.lib.source import replication
    from bronze_assets.lib.source.postgres import SourceConnectionError, resolve_source_dsn

    storage = BronzeStorage().storage()
    rows = []
    try:
        dsn = resolve_source_dsn(Settings.from_env())
        deployment = deployment_id(storage)
        for contract in (c for c in CONTRACTS.values() if c.cdc):
            check = check_stream(contract, dsn, storage)
            slot, position, gap = check.state, check.position, check.gap
            rows.append({
                "table": contract.bronze_table, "slot": check.slot, "deployment": deployment,
                "wal_status": slot.wal_status if slot else "missing",
                "retained_wal_bytes": slot.retained_wal_bytes if slot else None,
                "confirmed_lsn": replication.lsn_text(slot.confirmed_flush_lsn)
                if slot and slot.confirmed_flush_lsn else None,
                "bronze_lsn": replication.lsn_text(position.lsn) if position is not None else None,
                # a tick without changes commits nothing, yet the slot confirms its position
                "lag_bytes": max(0, slot.current_lsn - max(position.lsn, slot.confirmed_flush_lsn or 0))
                if slot and slot.current_lsn is not None and position is not None else None,
                "problem": gap,
                "action": f"bronze cdc reset {contract.bronze_table}" if gap is not None else None,
                # a position read from the slot all roots shared before: the next run re-syncs
                "migrates_from": check.legacy_slot,
                # why the next run loads by the watermark pattern (None: it reads the slot)
                "reason": fallback_reason(contract, dsn, storage),
            })
        ours = {row["slot"] for row in rows}
        others = [s for s in replication.bronze_slots(dsn) if s[0] not in ours]
    except (replication.ReplicationError, SourceConnectionError) as exc:
        _fail(str(exc))  # one line: host, port, database, user and what to check; never the password
        return
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
    else:
        click.echo(f"{'table':<18} {'slot':<9} {'WAL held':>14}  {'confirmed':<12} {'bronze':<12} "
                   f"{'lag':>12}  note")
        for row in rows:
            retained = "-" if row["retained_wal_bytes"] is None else f"{row['retained_wal_bytes']:,} B"
            lag = "-" if row["lag_bytes"] is None else f"{row['lag_bytes']:,} B"
            notes = [f"{row['problem']}: run `{row['action']}`"] if row["problem"] else []
            if row["reason"]:
                notes.append(f"fallback: {row['reason']}")
            elif row["migrates_from"]:
                notes.append(f"the next load re-syncs from slot {row['slot']} once (its position was read "
                             f"from {row['migrates_from']}, shared by the bronze roots of earlier versions)")
            elif row["wal_status"] == "missing" and not row["problem"]:
                notes.append(f"the next load creates the slot {row['slot']}")
            click.echo((f"{row['table']:<18} {row['wal_status']:<9} {retained:>14}  "
                        f"{row['confirmed_lsn'] or '-':<12} {row['bronze_lsn'] or '-':<12} {lag:>12}  "
                        + "; ".join(notes)).rstrip())
        click.echo(f"deployment {deployment}: slots {', '.join(row['slot'] for row in rows)}")
        for name, active, held in others:
            click.echo(f"other bronze slot {name} ({'active' if active else 'inactive'}, "
                       f"{'-' if held is None else f'{held:,} B'} of WAL held): another deployment's, or "
                       f"abandoned (drop it: SELECT pg_drop_replication_slot('{name}'))")
    if any(row["problem"] for row in rows):
        sys.exit(1)


@cdc.command("reset")
@click.argument("table")
def cdc_reset(table: str) -> None:
    """Re-sync TABLE after a stream gap (its slot lost, or confirmed past bronze's position, or
    the root copied from another deployment's): a new slot of this deployment's, the table read in
    its snapshot and merged (keys gone from the source become DELETED); audited as CDC_RESET."""
    from bronze_assets.defs.resources import BronzeStorage
    from bronze_assets.lib.cdc import reset
    from bronze_assets.lib.delta.timetravel import TimeTravelError, contract_for
    from bronze_assets.lib.source.postgres import resolve_source_dsn

    try:
        contract = contract_for(table)
    except TimeTravelError as exc:
        _fail(str(exc))
        return
    if not contract.cdc:
        _fail(f"{contract.bronze_table} is not loaded by log-based CDC (its contract sets cdc=False)")
    from bronze_assets.lib.source.postgres import SourceConnectionError
    from bronze_assets.lib.source.replication import ReplicationError, lsn_text

    storage = BronzeStorage().storage()
    try:
        dsn = resolve_source_dsn(storage.settings)
        batch, result = reset(contract, dsn, storage, job_id="bronze cdc reset")
    except (ReplicationError, SourceConnectionError) as exc:  # e.g. a publication it may not create
        _fail(str(exc))
        return
    click.echo(f"{contract.bronze_table}: re-synced from a new slot at {lsn_text(batch.lsn)} — "
               f"{result.inserted:,} inserted, {result.updated:,} updated, "
               f"{result.soft_deleted:,} soft-deleted")
