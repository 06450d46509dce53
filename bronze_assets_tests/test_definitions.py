"""The Dagster code location loads (what `dagster dev -w workspace.yaml` does)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg

from bronze_assets.definitions import defs
from bronze_assets.defs.resources import BronzeStorage, PostgresSource

ROOT = Path(__file__).resolve().parents[1]


def test_definitions_load_with_resources() -> None:
    definitions = defs()
    assert isinstance(definitions, dg.Definitions)
    resources = definitions.resources or {}
    assert isinstance(resources["source"], PostgresSource)
    assert isinstance(resources["bronze"], BronzeStorage)


def test_bronze_storage_root_from_env(tmp_path: Path) -> None:
    # conftest sets BRONZE_ROOT to tmp_path/bronze
    assert BronzeStorage().storage().uri("bz_orders") == f"{tmp_path}/bronze/bz_orders"
    s3 = BronzeStorage(root="s3://lake/bronze/", storage_options={"region": "eu-west-1"}).storage()
    assert s3.uri("bz_x") == "s3://lake/bronze/bz_x" and s3.delta_options == {"region": "eu-west-1"}


def test_dagster_cli_validates_the_workspace() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_instance_config_enforces_the_one_hour_run_limit(tmp_path: Path) -> None:
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    config = dagster_instance_config(str(tmp_path))[0]
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] is True and monitoring["max_runtime_seconds"] == 3600
