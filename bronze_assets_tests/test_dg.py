"""Dagster's own tools work on the project: ``dg check defs`` (pinned to the project's dagster)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dg_check_defs_loads_every_definition() -> None:
    venv = Path(sys.executable).parent.parent
    env = os.environ | {"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(venv / "bin" / "dg"), "check", "defs"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr
    # dagster-databricks (extra spark) registers a preview scaffolder of its own; ours use no preview API
    preview = [line for line in result.stderr.splitlines()
               if "PreviewWarning" in line and "Scaffolder`" not in line]
    assert preview == []


def test_the_bronze_command_prints_no_warnings() -> None:
    result = subprocess.run([sys.executable, "-m", "bronze_assets.cli", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "BRONZE_START_DATE" in result.stdout
    assert "Warning" not in result.stderr, result.stderr


def test_loading_the_definitions_uses_no_preview_api() -> None:
    code = "from bronze_assets.definitions import defs; defs().get_repository_def()"
    result = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "PreviewWarning" not in result.stderr, result.stderr
