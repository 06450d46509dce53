"""One settings module reads every environment variable; README and ``bronze --help`` list them all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bronze_assets import settings
from bronze_assets.cli import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bronze_assets"


def test_every_variable_the_code_names_is_registered_and_documented() -> None:
    named = set()
    for path in PACKAGE.rglob("*.py"):
        named |= set(re.findall(r'"(BRONZE_[A-Z_]+[A-Z])"', path.read_text()))
    registered = {v.name for v in settings.VARIABLES}
    assert named - {settings.SECRET_PREFIX.rstrip("_")} <= registered, named - registered
    readme = (ROOT / "README.md").read_text()
    assert not [v for v in registered if f"`{v}`" not in readme], "README's Configuration table"
    help_text = CliRunner().invoke(main, ["--help"]).output
    assert all(v in help_text for v in registered)


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
               if p.name != "settings.py" and re.search(r"os\.environ(\.get|\[)|os\.getenv", p.read_text())
               and not re.search(r"os\.environ\[[^]]+\]\s*=", p.read_text())]
    assert readers == []


def test_unregistered_variables_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", " 2026-11-02 ")
    assert settings.env("BRONZE_START_DATE") == "2026-11-02"
    with pytest.raises(KeyError, match="not registered"):
        settings.env("BRONZE_NOT_A_SETTING")
    monkeypatch.setenv("BRONZE_START_DATE", "02/11/2026")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        settings.start_date()
