"""``bronze ddl`` prints the source schema from the contracts; docs/source_schema.sql is its copy."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from bronze_assets.cli import main
from bronze_assets.contracts import CONTRACTS
from bronze_assets_tests.conftest import query

DOC = Path(__file__).resolve().parents[1] / "docs" / "source_schema.sql"


def test_ddl_matches_the_docs_page_and_creates_the_ten_tables(fresh_dsn: str) -> None:
    result = CliRunner().invoke(main, ["ddl"])
    assert result.exit_code == 0
    assert DOC.read_text().endswith(result.output), "docs/source_schema.sql is stale: regenerate it"
    for statement in result.output.split(";\n"):
        if statement.strip():
            query(fresh_dsn, statement)
    tables = {r[0] for r in query(fresh_dsn, "SELECT table_name FROM information_schema.tables "
                                             "WHERE table_schema = 'tests'")}
    assert tables == set(CONTRACTS)
