"""The ``bronze`` console script."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import click

from bronze_assets.settings import ENV_SOURCE_DSN


def _as_of(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """bronze_assets: land the inventory PostgreSQL database in Delta Lake with Dagster."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
    """Create schema tests and the ten source tables and fill them with generated data."""
    from bronze_assets.demo.generator import SeedOptions
    from bronze_assets.demo.seed import SourceNotEmptyError, seed_source
    from bronze_assets.lib.source.dsn import describe_dsn
    from bronze_assets.lib.source.postgres import SourceConnectionError, resolve_source_dsn

    try:
        kwargs = {"as_of": _as_of(as_of)} if as_of else {}
        options = SeedOptions(scale=scale, defect_rate=defect_rate, seed=seed_value, **kwargs)
        target = resolve_source_dsn(dsn)
        report = seed_source(target, options, reset=reset)
    except (SourceNotEmptyError, SourceConnectionError, ValueError) as exc:
        _fail(str(exc))
        return
    click.echo(f"seeded {describe_dsn(target)} schema tests in {report.seconds:.1f} s")
    width = max(len(n) for n in report.rows)
    for name, rows in report.rows.items():
        defects = sum(report.defects[name].values())
        click.echo(f"  {name:<{width}}  {rows:>10,} rows  {defects:>8,} defective")
    click.echo(f"  {'total':<{width}}  {report.total_rows:>10,} rows")


@main.command()
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Scale used to seed the source when it is empty.")
def demo(scale: float) -> None:
    """Seed the source if empty, materialize every bronze asset and print a summary."""
    from bronze_assets.demo.run import format_summary, run_demo
    from bronze_assets.lib.source.postgres import SourceConnectionError

    try:
        rows = run_demo(scale, on_progress=lambda msg: click.echo(msg, err=True))
    except SourceConnectionError as exc:
        _fail(str(exc))
        return
    click.echo(format_summary(rows))


@main.group()
def server() -> None:
    """Manage the embedded PostgreSQL source (used when BRONZE_SOURCE_DSN is unset)."""


@server.command("uri")
def server_uri() -> None:
    """Start the embedded server if needed and print its connection URI (it stops on exit)."""
    from bronze_assets.lib.source.embedded import embedded_server

    click.echo(embedded_server().start())


@server.command("status")
def server_status() -> None:
    """Say whether the embedded server is running and where its data lives."""
    from bronze_assets.lib.source.embedded import embedded_server

    srv = embedded_server()
    click.echo(f"{'running' if srv.is_running else 'stopped'}: {srv.pgdata}")


if __name__ == "__main__":
    main()
