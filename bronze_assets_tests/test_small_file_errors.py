"""A small file beside the tables is written through ``obstore`` on an object store (one PUT), not
through delta-rs: its errors must get the same failure class and fix as delta-rs' own."""

from __future__ import annotations

import os

import pytest

from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.failures import Cause, classify
from bronze_assets_tests.s3 import S3, free_port, start_moto, stop

CHECK_FILE = "_bronze_checks/bz_orders.key_uniqueness.json"


def _write_error(storage: Storage) -> BaseException:
    with pytest.raises(Exception) as raised:  # obstore raises its own types
        storage.write_file(CHECK_FILE, b"{}")
    return raised.value


def test_a_missing_bucket_is_not_retried_and_says_to_create_it(s3: S3) -> None:
    classified = classify(_write_error(Storage("s3://no-such-bucket-here/bronze")), "bz_orders")
    assert classified.cause is Cause.MISSING_OBJECT and not classified.retry
    assert "create the bucket" in classified.message and "\n" not in classified.message


def test_refused_keys_are_an_authentication_failure(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    """A moto server that checks keys refuses the unknown ones (InvalidAccessKeyId), as AWS does."""
    port = free_port()
    server = start_moto(port, os.environ | {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        classified = classify(_write_error(Storage(s3.root)), "bz_orders")
    finally:
        stop(server)
    assert classified.cause is Cause.AUTHENTICATION and not classified.retry
    assert "AWS_" in classified.message and "\n" not in classified.message


def test_an_unreachable_store_is_retried(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_RETRIES", "0")
    classified = classify(_write_error(Storage(s3.root)), "bz_orders")
    assert classified.cause is Cause.CONNECTION and classified.retry
