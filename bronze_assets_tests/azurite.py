"""A local ADLS server for the suite (ARCHITECTURE §2.9, issue #23): Azurite's Blob service (npm
package ``azurite``, installed by ``scripts/install-azurite.sh``, which ``make test`` runs) in
memory on 127.0.0.1 and a free port. delta-rs reaches ``abfss://`` roots through the Blob API
and commits with a conditional put (``If-None-Match: *``), which Azurite enforces. Each test gets
its own container and the variables a user sets (``AZURE_STORAGE_ACCOUNT_NAME``,
``AZURE_STORAGE_ACCOUNT_KEY``, ``AZURE_STORAGE_USE_EMULATOR``), plus ``AZURITE_BLOB_STORAGE_URL``,
the emulator's address (delta-rs's object store defaults it to port 10000)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bronze_assets.settings import ENV_BRONZE_ROOT, user_cache_dir
from bronze_assets_tests.s3 import free_port, stop, store_env, wait_for_port

# Azurite's well-known development account (public, in Azure's documentation)
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURE_VARIABLES = ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_USE_EMULATOR",
                   "AZURITE_BLOB_STORAGE_URL", "AZURE_STORAGE_SAS_KEY", "AZURE_STORAGE_TOKEN",
                   "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID",
                   "AZURE_STORAGE_CONNECTION_STRING")
INSTALL = "bash scripts/install-azurite.sh (needs node and npm: sudo apt-get install -y nodejs npm)"


def azurite_blob() -> Path | None:
    """The ``azurite-blob`` launcher install-azurite.sh installs, if it is there and node is."""
    launcher = user_cache_dir() / "bronze_assets" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    return launcher if launcher.exists() and shutil.which("node") else None


@dataclass(frozen=True)
class Adls:
    """One test's container on Azurite."""

    endpoint: str
    container: str
    endpoint_variable = "AZURITE_BLOB_STORAGE_URL"  # where delta-rs sends its requests

    @property
    def root(self) -> str:
        """The bronze root as a user configures it."""
        return f"abfss://{self.container}@{ACCOUNT}.dfs.core.windows.net/bronze"

    def client(self):
        from azure.storage.blob import ContainerClient

        return ContainerClient(f"{self.endpoint}/{ACCOUNT}", self.container,
                               credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY})

    def keys(self, prefix: str = "") -> list[str]:
        return [b.name for b in self.client().list_blobs(name_starts_with=prefix or None)]

    def create_once(self, key: str, body: bytes) -> None:
        """Create ``key`` only if it does not exist (``If-None-Match: *``), as delta-rs commits."""
        self.client().upload_blob(key, body, overwrite=False)

    def read_key(self, key: str) -> bytes:
        return self.client().download_blob(key).readall()

    @staticmethod
    def refused(exc: BaseException) -> bool:
        """``exc`` is the store refusing a create because the key exists."""
        from azure.core.exceptions import ResourceExistsError

        return isinstance(exc, ResourceExistsError) and exc.status_code == 409


@pytest.fixture(scope="session")
def adls_server() -> Iterator[str]:
    """The Blob endpoint of an in-memory Azurite on 127.0.0.1 (one per test session / xdist
    worker); the test is skipped, saying how to install it, when Azurite or node is missing."""
    launcher = azurite_blob()
    if launcher is None:
        pytest.skip(f"Azurite (the ADLS test server) is not installed: run {INSTALL}")
    port = free_port()
    server = subprocess.Popen(
        [str(launcher), "--inMemoryPersistence", "--blobHost", "127.0.0.1", "--blobPort", str(port),
         "--skipApiVersionCheck", "--loose", "--silent",
         "--disableTelemetry"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(server, port, "Azurite")
    yield f"http://127.0.0.1:{port}"
    stop(server)


@pytest.fixture
def adls(adls_server: str, monkeypatch: pytest.MonkeyPatch) -> Adls:
    """A new container on Azurite, the Azure variables pointing at it and
    ``BRONZE_ROOT=abfss://<container>@devstoreaccount1.dfs.core.windows.net/bronze``."""
    store_env(monkeypatch, AZURE_VARIABLES, {
        "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": ACCOUNT_KEY,
        "AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": adls_server})
    container = Adls(adls_server, f"bronze-{uuid.uuid4().hex[:12]}")
    container.client().create_container()
    monkeypatch.setenv(ENV_BRONZE_ROOT, container.root)
    return container
