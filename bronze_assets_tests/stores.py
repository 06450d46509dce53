"""The object stores the suite runs bronze on (ARCHITECTURE §2.9): a test that takes ``store``
runs once on S3 (moto, ``s3.py``) and once on ADLS (Azurite, ``azurite.py``; skipped, saying how
to install it, where Azurite is missing)."""

from __future__ import annotations

import pytest

from bronze_assets_tests.azurite import Adls
from bronze_assets_tests.s3 import S3

Store = S3 | Adls


@pytest.fixture(params=["s3", "adls"])
def store(request: pytest.FixtureRequest) -> Store:
    """A new bucket (S3) or container (ADLS) with ``BRONZE_ROOT`` and the store's variables set."""
    return request.getfixturevalue(request.param)
