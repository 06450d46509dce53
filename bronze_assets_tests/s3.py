"""A local S3 server for the suite (ARCHITECTURE §2.9, issue #23): moto's S3 server on
127.0.0.1 and a free port (its own process: see :func:`start_moto`) — a real S3 protocol server
that enforces conditional puts (``If-None-Match: *``, moto ≥ 5.2.5), which delta-rs ≥ 1.6.1
commits rely on. Each test gets
its own bucket and the standard AWS variables set as a user would set them, so
``BRONZE_ROOT=s3://<bucket>/bronze`` is configured exactly as in production."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bronze_assets.settings import ENV_BRONZE_ROOT

ACCESS_KEY, SECRET_KEY, REGION = "testing", "testing", "us-east-1"
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ALLOW_HTTP",
                 "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class S3:
    """One test's bucket on the local S3 server."""

    endpoint: str
    bucket: str
    endpoint_variable = "AWS_ENDPOINT_URL"  # where delta-rs sends its requests

    @property
    def root(self) -> str:
        """The bronze root as a user configures it."""
        return f"s3://{self.bucket}/bronze"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def create_once(self, key: str, body: bytes) -> None:
        """Create ``key`` only if it does not exist (``If-None-Match: *``), as delta-rs commits."""
        self.client().put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")

    def read_key(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    @staticmethod
    def refused(exc: BaseException) -> bool:
        """``exc`` is the store refusing a create because the key exists (412)."""
        from botocore.exceptions import ClientError

        return isinstance(exc, ClientError) and exc.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def start_moto(port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """moto's S3 server on 127.0.0.1:``port`` as its own process, once it accepts connections.

    Not ``ThreadedMotoServer`` in the test process: a delta-rs call that keeps the GIL while it
    waits on the store (``DeltaTable.history`` does, deltalake 1.6.6) then waits on a server
    thread that needs the GIL to answer — a deadlock until the store's timeouts give up."""
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(server, port, "moto's S3 server")
    return server


def wait_for_port(server: subprocess.Popen[bytes], port: int, name: str, timeout: float = 30) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; kill ``server`` if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"{name} did not start on 127.0.0.1:{port}") from None
            time.sleep(0.1)


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint of a moto S3 server on 127.0.0.1 (one per test session / xdist worker)."""
    port = free_port()
    server = start_moto(port)
    yield f"http://127.0.0.1:{port}"
    stop(server)


def clear_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS variable of the developer's shell reaches a test."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A new bucket on the local S3 server, the standard AWS variables pointing at it and
    ``BRONZE_ROOT=s3://<bucket>/bronze``."""
    clear_aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    bucket = S3(s3_server, f"bronze-{uuid.uuid4().hex[:12]}")
    bucket.client().create_bucket(Bucket=bucket.bucket)
    monkeypatch.setenv(ENV_BRONZE_ROOT, bucket.root)
    return bucket
