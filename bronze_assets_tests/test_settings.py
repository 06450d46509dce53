"""One settings module reads every environment variable; README and ``bronze --help`` list them all."""

from __future__ import annotations

import ast
import re
from datetime import date
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
        settings.Settings.from_env()


def test_settings_are_read_once_parsed_and_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_START_DATE", "2026-11-02")
    monkeypatch.setenv("BRONZE_PARTITIONS_START", "2023-05-17")
    monkeypatch.setenv("BRONZE_TARGET_FILE_MB", "8")
    monkeypatch.setenv("BRONZE_CDC", "Off")
    monkeypatch.setenv("BRONZE_SMTP_PASSWORD", "hunter22")
    monkeypatch.setenv("BRONZE_SECRET_SCOPE", "prod-scope")  # a setting, not a secret named SCOPE
    monkeypatch.setenv("BRONZE_SECRET_KPASSWORD", "pw-1")
    read = settings.Settings.from_env()
    assert read.secret_scope == "prod-scope" and read.env_secrets == {"BRONZE_SECRET_KPASSWORD": "pw-1"}
    monkeypatch.setenv("BRONZE_TARGET_FILE_MB", "64")  # a value, not a view of the environment
    assert (read.go_live(), read.partitions_start) == (date(2026, 11, 2), date(2023, 5, 1))
    assert read.target_file_bytes == 8 * 1024 * 1024 and read.cdc is False
    codec = settings.Settings.from_env({"BRONZE_PARQUET_COMPRESSION": "ZSTD:6"}).parquet_compression
    assert codec == "zstd:6" and settings.Settings().parquet_compression == "uncompressed"
    assert read.alerts["BRONZE_SMTP_PASSWORD"] == "hunter22" and "hunter22" not in repr(read)
    assert "pw-1" not in repr(read)
    defaults = settings.Settings()
    assert defaults.go_live(date(2026, 3, 17)) == date(2026, 3, 1) and defaults.cdc
    for name, value, fix in [("BRONZE_TARGET_FILE_MB", "32MB", "BRONZE_TARGET_FILE_MB=32"),
                             ("BRONZE_EXTRACT_PARALLELISM", "0", "at least 1"),
                             ("BRONZE_COMPUTE_COST_PER_HOUR", "cheap", "BRONZE_COMPUTE_COST_PER_HOUR=0.55"),
                             ("BRONZE_PARQUET_COMPRESSION", "gzip", "uncompressed, snappy, lz4, zstd"),
                             ("BRONZE_PARQUET_COMPRESSION", "snappy:3", "zstd:3")]:
        with pytest.raises(ValueError, match=f"{name}={value!r}.*{fix}"):
            settings.Settings.from_env({name: value})


# ------------------------------------------------------------------ lib reads no environment variable
LIB = PACKAGE / "lib"
SETTINGS_MODULE = "bronze_assets.settings"
# what lib may import from settings: the Settings type and constants (names that read nothing)
LIB_MAY_IMPORT = re.compile(r"Settings|Variable|[A-Z][A-Z0-9_]*")
ENV_READERS = {("os", "environ"), ("os", "getenv"), ("os", "putenv"), ("os", "unsetenv"),
               ("getpass", "getuser")}


def _not_reads(tree: ast.Module) -> set[int]:
    """Nodes that are no read: a module's ``if __name__ == "__main__":`` block (an entry point,
    which reads the settings) and ``os.environ[name] = value`` (a value handed to a child, e.g.
    Spark's Python workers)."""
    skip: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Subscript) for t in node.targets):
            skip |= {id(t.value) for t in node.targets}
    return skip


def environment_reads(source: str) -> list[str]:
    """Where ``source`` reads the environment: ``os.environ``/``os.getenv`` and kin,
    ``getpass.getuser``, any ``from_env``, and any settings function (lib may import only the
    :class:`Settings` type and constants from settings)."""
    found: list[str] = []
    tree = ast.parse(source)
    skip = _not_reads(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and (node.value.id, node.attr) in ENV_READERS:
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
            elif node.attr == "from_env":
                found.append(f"line {node.lineno}: .from_env")
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "getpass"):
            found += [f"line {node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if (node.module, a.name) in ENV_READERS]
        elif isinstance(node, ast.ImportFrom) and node.module == SETTINGS_MODULE:
            found += [f"line {node.lineno}: settings.{a.name}" for a in node.names
                      if not LIB_MAY_IMPORT.fullmatch(a.name)]
        elif _imports_settings_module(node):
            found.append(f"line {node.lineno}: the settings module")
    return found


def _imports_settings_module(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.module == "bronze_assets" and any(a.name == "settings" for a in node.names)
    return isinstance(node, ast.Import) and any(a.name == SETTINGS_MODULE for a in node.names)


def test_the_environment_check_finds_every_kind_of_read() -> None:
    snippets = ["import os\nos.environ.get('X')", "import os\nos.getenv('X')", "from os import environ",
                "import getpass\ngetpass.getuser()", "from bronze_assets.settings import env",
                "from bronze_assets.settings import data_dir", "from bronze_assets import settings",
                "import bronze_assets.settings", "Storage.from_env()",
                "import os\nos.environ.setdefault('X', '1')", "import os\nx = os.environ['X']",
                "if __name__ == '__main__':\n    pass\nSettings.from_env()"]
    assert all(environment_reads(s) for s in snippets), [s for s in snippets if not environment_reads(s)]
    assert not environment_reads("from bronze_assets.settings import Settings, SOURCE_SCHEMA\n"
                                 "import os\nos.cpu_count()\nos.environ['PYSPARK_PYTHON'] = 'python'\n"
                                 "if __name__ == '__main__':\n    Settings.from_env()")
    assert environment_reads((PACKAGE / "settings.py").read_text())


def test_no_lib_module_reads_the_environment() -> None:
    """Settings are read once at an entry point and passed down (issue 21): ``lib`` reads none."""
    modules = sorted(LIB.rglob("*.py"))
    assert len(modules) > 50
    readers = {str(p.relative_to(PACKAGE)): environment_reads(p.read_text()) for p in modules}
    assert {k: v for k, v in readers.items() if v} == {}


def test_defs_read_the_environment_only_as_settings() -> None:
    """``defs`` (the resource edge) reads the environment only as one :class:`Settings`, built in
    one place (``defs/edge.py``: ``edge_settings``), whose values resources, schedules and sensors
    receive; no other ``Settings.from_env``, no ``env()`` call, flag or ``os.environ``.
    ``source_dsn_from``: a tables file names a variable of the user's, which no Settings field holds."""
    modules = sorted((PACKAGE / "defs").rglob("*.py"))
    assert len(modules) > 10
    builder = PACKAGE / "defs" / "edge.py"
    assert builder in modules
    assert any(r.endswith(": .from_env") for r in environment_reads(builder.read_text()))
    readers = {str(p.relative_to(PACKAGE)): [r for r in environment_reads(p.read_text())
                                             if r.split(": ", 1)[1] != "settings.source_dsn_from"]
               for p in modules if p != builder}
    assert {k: v for k, v in readers.items() if v} == {}
    assert environment_reads("from bronze_assets.settings import env_flag")  # what it finds
    assert environment_reads("Settings.from_env().schedules_running")


def test_engine_and_schedule_variables_are_settings() -> None:
    environ = {"BRONZE_ENGINE": "spark", "BRONZE_ENGINE_TABLES": "bz_orders=local",
               "BRONZE_DATABRICKS_VOLUME": "/Volumes/main/bronze/pipes", "BRONZE_DATABRICKS_WHEEL": "w.whl",
               "BRONZE_DATABRICKS_COMPUTE": "job-cluster", "BRONZE_SCHEDULES_RUNNING": "yes",
               "BRONZE_SENSORS_RUNNING": "0"}
    read = settings.Settings.from_env(environ)
    assert (read.engine, read.engine_tables, read.databricks_volume, read.databricks_wheel,
            read.databricks_compute, read.schedules_running, read.sensors_running) == \
        ("spark", "bz_orders=local", "/Volumes/main/bronze/pipes", "w.whl", "job-cluster", True, False)
    assert not settings.Settings.from_env({}).schedules_running
