"""The object stores the suite runs bronze on (ARCHITECTURE §2.9): a test that takes ``store``
runs once on S3 (moto, ``s3.py``) and once on ADLS (Azurite, ``azurite.py``; skipped, saying how
to install it, where Azurite is missing); a test that takes ``any_store`` runs on a local folder too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bronze_assets_tests.azurite import Adls
from bronze_assets_tests.s3 import S3

Store = S3 | Adls


@pytest.fixture(params=["s3", "adls"])
def store(request: pytest.FixtureRequest) -> Store:
    """A new bucket (S3) or container (ADLS) with ``BRONZE_ROOT`` and the store's variables set."""
    return request.getfixturevalue(request.param)


@dataclass(frozen=True)
class LocalRoot:
    """A bronze root in a local folder (the default deployment)."""

    root: str


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalRoot:
    """A new local folder with ``BRONZE_ROOT`` set to it."""
    root = str(tmp_path / "bronze")
    monkeypatch.setenv("BRONZE_ROOT", root)
    return LocalRoot(root)


@pytest.fixture(params=["s3", "adls", "local"])
def any_store(request: pytest.FixtureRequest) -> Store | LocalRoot:
    """``store``, and a local folder."""
    return request.getfixturevalue(request.param)
