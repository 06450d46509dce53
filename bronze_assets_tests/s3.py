"""A local S3 server for the suite (ARCHITECTURE §2.9, issue #23): moto's S3 server on
127.0.0.1 and a free port (its own process: see :func:`start_moto`) — a real S3 protocol server
that enforces conditional puts (``If-None-Match: *``, moto ≥ 5.2.5), which delta-rs ≥ 1.6.1
commits rely on. Each test gets
its own bucket and the standard AWS variables set as a user would set them, so
``BRONZE_ROOT=s3://<bucket>/bronze`` is configured exactly as in production."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
class Request:
    """One request the S3 server answered (a line of its access log)."""

    method: str
    key: str  # the object key or prefix, without the bucket
    query: str
    status: int

    @property
    def table(self) -> str:
        """The bronze table it touched (``bz_orders``, ``bz_audit_log`` …), or ``?``."""
        parts = (self.key or re.sub(r".*prefix=([^&]*).*", r"\1", self.query).replace("%2F", "/")).split("/")
        return parts[1] if len(parts) > 1 and parts[1] else "?"

    @property
    def kind(self) -> str:
        """LIST, or the method and whether it is a log (``_delta_log``) or data file; 404s apart."""
        if "list-type=2" in self.query:
            return "LIST"
        what = "log" if "_delta_log" in self.key else "data"
        return f"{self.method} {what}" + (f" {self.status}" if self.status >= 300 else "")


_ACCESS = re.compile(r'"([A-Z]+) /([^/? ]+)/?([^? ]*)\??(\S*) HTTP/1\.1" (\d{3})')


@dataclass(frozen=True)
class S3:
    """One test's bucket on the local S3 server."""

    endpoint: str
    bucket: str
    log: Path | None = None  # the server's access log: every request it answered
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

    def requests(self) -> list[Request]:
        """The requests to this bucket so far, in order (moto logs each when it has answered)."""
        assert self.log is not None, "a server started with a log"
        # werkzeug colours some lines (206, 404, 412 …): without the colour codes, or they are missed
        plain = re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text())
        found = (_ACCESS.search(line) for line in plain.splitlines())
        return [Request(m[1], m[3], m[4], int(m[5])) for m in found if m and m[2] == self.bucket]

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


def start_moto(port: int, env: dict[str, str] | None = None,
               log: Path | None = None) -> subprocess.Popen[bytes]:
    """moto's S3 server on 127.0.0.1:``port`` as its own process, once it accepts connections.

    Not ``ThreadedMotoServer`` in the test process: a delta-rs call that keeps the GIL while it
    waits on the store (``DeltaTable.history`` does, deltalake 1.6.6) then waits on a server
    thread that needs the GIL to answer — a deadlock until the store's timeouts give up."""
    out = log.open("ab") if log else subprocess.DEVNULL  # werkzeug's access log: one line per request
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=out, stderr=out)
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


@dataclass(frozen=True)
class MotoServer:
    endpoint: str
    log: Path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto S3 server on 127.0.0.1 (one per test session / xdist worker) and its access log."""
    port, log = free_port(), tmp_path_factory.mktemp("moto") / "access.log"
    server = start_moto(port, log=log)
    yield MotoServer(f"http://127.0.0.1:{port}", log)
    stop(server)


def store_env(monkeypatch: pytest.MonkeyPatch, family: tuple[str, ...], values: dict[str, str]) -> None:
    """Only ``values`` of a store's variables (``family``) reach a test, none of the developer's shell."""
    for name in family:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3(s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A new bucket on the local S3 server, the standard AWS variables pointing at it and
    ``BRONZE_ROOT=s3://<bucket>/bronze``."""
    store_env(monkeypatch, AWS_VARIABLES, {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_ALLOW_HTTP": "true"})
    bucket = S3(s3_server.endpoint, f"bronze-{uuid.uuid4().hex[:12]}", s3_server.log)
    bucket.client().create_bucket(Bucket=bucket.bucket)
    monkeypatch.setenv(ENV_BRONZE_ROOT, bucket.root)
    return bucket
