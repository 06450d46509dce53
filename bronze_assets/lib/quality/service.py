"""The validation service: one long-lived process that runs Great Expectations for every run.

Importing GX and building its context costs seconds of CPU (≈3.7 s here) and ≈300 MB; paid
once per run, that is most of an hourly tick's checks. The service pays it once and stays:

* **Lifecycle.** The first check that needs it starts it (:func:`spawn`, a detached daemon); it
  ends after ``gx_service_idle_seconds`` with no client connected, or once the code it was
  started from has changed on disk (a deploy) and nobody is connected. A killed service is
  started again by the next check; the check it was answering fails naming its table.
* **Versioning.** Its socket is named by a :func:`fingerprint` of the installation (package
  folder, interpreter, the size and time of every module of the package, the GX and pandas
  versions): code of another version never talks to it, it starts a service of its own.
* **Security.** The socket lives in a folder only its user can open (0700, refused when owned by
  another user or a symlink) and is itself 0600; on Linux each connection's peer user is checked
  too (``SO_PEERCRED``). Requests are pickles, which only that user can send. It validates
  staged files in place, by path: no rows cross the socket.

One request at a time is executed (GX keeps process-global state); each connection gets its
answers in order. Only the pandas engine is used, so GX's optional backends (Spark, cloud SDKs,
SQL dialects) are not imported in the service (:func:`block_optional_backends`: 0.8 s of the
import and ≈75 MB), and the modules GX imports only for expectations the suites do not use
(``scipy.stats``, ``altair``) are loaded on first use (:func:`defer_unused_modules`).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import pickle
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bronze_assets.lib import allocators

PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder holding the bronze_assets package
STALE_CHECK_SECONDS = 30
# GX's optional backends: GX treats them as absent when their import fails (its compatibility layer)
OPTIONAL_BACKENDS = frozenset({"pyspark", "azure", "google", "boto3", "botocore", "databricks", "sqlalchemy",
                               "psycopg2", "trino", "snowflake"})
# imported by GX's distribution expectations (KL divergence, KS tests) and chart renderers, which
# the generated suites never use: loaded on first attribute access instead of at GX's import
DEFERRED_MODULES = frozenset({"scipy.stats", "altair"})


class ServiceDirError(RuntimeError):
    """The service folder is not private to this user."""


def fingerprint() -> str:
    """What a service must share with a client to serve it: the installation and its code."""
    digest = hashlib.sha256(f"{PACKAGE_ROOT}\0{sys.executable}".encode())
    for dist in ("great_expectations", "pandas"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            digest.update(f"\0{dist}={importlib.metadata.version(dist)}".encode())
    package = PACKAGE_ROOT / "bronze_assets"
    for path in sorted(package.rglob("*.py")):
        with contextlib.suppress(OSError):
            st = path.stat()
            digest.update(f"\0{path.relative_to(package)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def private_dir(path: Path) -> Path:
    """``path`` created 0700 if missing; refused unless a real folder of this user that nobody
    else can open."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ServiceDirError(
            f"{path} must be a folder of user {os.getuid()} with mode 0700 (it holds the GX validation "
            f"service's socket); remove it or set BRONZE_GX_SERVICE_DIR to another folder")
    return path


def socket_path(service_dir: Path) -> Path:
    return private_dir(service_dir) / f"gx-{fingerprint()}.sock"


def spawn(sock: Path, idle_seconds: float) -> None:
    """Start a service for ``sock`` as a daemon (it outlives this process), and return at once.
    Its messages go to ``<sock>.log``."""
    boot = (f"import sys; sys.path.insert(0, {str(PACKAGE_ROOT)!r}); "
            f"from {__name__} import main; main()")
    with open(sock.with_suffix(".log"), "ab") as log:
        os.chmod(log.name, 0o600)
        subprocess.run([sys.executable, "-c", boot, str(sock), str(idle_seconds)], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                       start_new_session=True)


class _BlockOptional(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name.partition(".")[0] in OPTIONAL_BACKENDS:
            raise ModuleNotFoundError(f"No module named {name!r} (not used by the validation service)",
                                      name=name)


def block_optional_backends() -> None:
    """Make GX's optional backends look absent in this process (the service runs pandas only)."""
    sys.meta_path.insert(0, _BlockOptional())


class _Deferred(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in DEFERRED_MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = importlib.util.LazyLoader(spec.loader)
                return spec
        return None


def defer_unused_modules() -> None:
    """Import :data:`DEFERRED_MODULES` lazily in this process (``importlib.util.LazyLoader``): the
    module object exists at once, its code runs when an attribute is first read. GX's import then
    skips them (≈1.1-1.7 s of CPU and ≈75 MB here)."""
    sys.meta_path.insert(0, _Deferred())


def lean_allocators() -> None:
    """Let this process give the memory of a validated chunk back when it is freed: Arrow allocates
    from the system heap (its own pool keeps freed pages for reuse), and one glibc arena
    serves every thread (requests run one at a time; an arena per connection thread keeps its own
    freed memory; :func:`~bronze_assets.lib.allocators.bound_glibc_heap`)."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    allocators.bound_glibc_heap(arenas=1)


def _trim(collect: bool = False) -> None:
    """Hand freed memory back to the system after a request (pandas frames of a large batch).
    ``collect``: after a validation, first free the reference cycles it left: GX's checkpoint run
    with Data Docs leaves some that hold its last chunk (its frame and mapped staged pages, ≈ 50 MB
    for a 250k-row chunk of ``bz_orders``) until a full collection happens to run. The collection
    walks only what was made since GX's import (which :func:`_warm_import` froze)."""
    if collect:
        gc.collect()
    allocators.trim_glibc_heap()


class Service:
    """The listening socket, its connections and the one lock requests run under."""

    def __init__(self, sock: Path, idle_seconds: float, tasks: dict[str, Callable[..., Any]]) -> None:
        self.sock, self.idle_seconds, self.tasks = sock, idle_seconds, tasks
        self.lock = threading.Lock()  # one request at a time: GX keeps process-global state
        self.clients = 0
        self.clients_lock = threading.Lock()
        self.last_seen = time.monotonic()
        self.version = fingerprint()

    def serve_forever(self, listener: socket.socket) -> None:
        listener.settimeout(1.0)
        checked = time.monotonic()
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                with self.clients_lock:
                    idle = self.clients == 0
                    quiet = time.monotonic() - self.last_seen
                if idle and quiet >= self.idle_seconds:
                    return
                if idle and time.monotonic() - checked >= STALE_CHECK_SECONDS:
                    checked = time.monotonic()
                    if fingerprint() != self.version:  # the code was changed: its clients use another
                        return
                continue
            if not _same_user(conn):
                conn.close()
                continue
            with self.clients_lock:
                self.clients += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            with conn, conn.makefile("rb") as requests, conn.makefile("wb") as answers:
                self.answer(requests, answers)
        except OSError:
            pass
        finally:
            with self.clients_lock:
                self.clients -= 1
                self.last_seen = time.monotonic()

    def answer(self, requests: IO[bytes], answers: IO[bytes]) -> None:
        """One connection's loop: a request at a time until the client closes it."""
        while True:
            try:
                request_id, task, args = pickle.load(requests)
            except EOFError:
                return
            with self.lock:
                try:
                    answer = (request_id, True, self.tasks[task](*args))
                except Exception as exc:  # sent back to the caller, which raises it
                    answer = (request_id, False, exc)
                finally:
                    _trim(collect=task == "validate")
            try:
                payload = pickle.dumps(answer)
            except Exception:  # an exception that does not pickle: its text
                error = RuntimeError(f"{type(answer[2]).__name__}: {answer[2]}")
                payload = pickle.dumps((request_id, False, error))
            answers.write(payload)
            answers.flush()


def _same_user(conn: socket.socket) -> bool:
    """Whether the peer runs as this user (Linux: ``SO_PEERCRED``; elsewhere the folder's 0700
    is the guard)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return True
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    return uid == os.getuid()


def main() -> None:
    """The service's entry point (``spawn``): detach, take the socket's lock (a second service
    for the same socket exits at once), listen, warm GX up, serve until idle."""
    sock, idle_seconds = Path(sys.argv[1]), float(sys.argv[2])
    if os.fork():  # the launcher's child exits: the service is nobody's child, reaped by init
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # ended by SIGTERM (``stop_service``) even when started by a process that ignores it: an
    # ignored signal is inherited, and Dagster maps SIGTERM to SIGINT's handler, which a shell
    # sets to "ignore" for a command it starts in the background (``nohup … &``)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    lean_allocators()  # before any thread starts
    lock = open(sock.with_suffix(".lock"), "wb")  # noqa: SIM115 (held for the service's life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another service holds this socket
    sock.with_suffix(".pid").write_text(str(os.getpid()))  # before it listens: clients read it then
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()  # left by a killed service
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)
    try:
        listener.bind(str(sock))
    finally:
        os.umask(old_mask)
    listener.listen(64)
    block_optional_backends()
    defer_unused_modules()
    from bronze_assets.lib.quality.worker import TASKS

    threading.Thread(target=_warm_import, daemon=True).start()
    try:
        Service(sock, idle_seconds, TASKS).serve_forever(listener)
    finally:  # still holding the lock: the socket and pid file at this path are this service's
        for path in (sock, sock.with_suffix(".pid")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        listener.close()


def _warm_import() -> None:
    """Import GX while the first client connects (its first request then finds it ready), then
    move what the import built out of the collector's sight (``gc.freeze``): it lives as long as
    the service, and the automatic collections during a validation need not walk it again. The
    collector is off during the import: what it builds (modules, classes) lives as long as the
    service, so collections in between would only walk it again and again."""
    gc.disable()
    try:
        with contextlib.suppress(Exception):
            import great_expectations  # noqa: F401
    finally:
        gc.enable()
    gc.collect()
    gc.freeze()
