"""Great Expectations off the load's process: the client of the validation service.

Importing GX and building a suite costs seconds of pure-Python work. On a thread of the load's
process that work would hold the GIL and stall the load; in the long-lived validation service
(:mod:`bronze_assets.lib.quality.service`, shared by every run of this installation) it is paid
once, not once per run. Each process keeps one connection to the service (opened on first use,
starting the service when none is listening); the service validates the staged Arrow IPC file
in place, so no rows cross between the processes.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pickle
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.staged_file import staged_reader
from bronze_assets.lib.quality import service
from bronze_assets.lib.quality.validate import QualityReport, docs_dir, suite_runner
from bronze_assets.settings import Settings

LOCAL_ENGINE = "local"  # the engine whose checks this service runs (``lib.load.engine.LOCAL``)
START_TIMEOUT_SECONDS = 60
RESPAWN_SECONDS = 5  # a service that holds the socket's lock but does not answer: start another


class QualityWorkerError(RuntimeError):
    """The validation service ended (killed, out of memory) before it answered."""


def _build(contract: Contract, load_date: date, docs_dir: Path | None) -> None:
    suite_runner(contract, load_date, docs_dir)


def _validate(contract: Contract, load_date: date, docs_dir: Path | None, path: Path) -> QualityReport:
    return suite_runner(contract, load_date, docs_dir).validate_batches(staged_reader(path))


TASKS: dict[str, Callable[..., Any]] = {"build": _build, "validate": _validate}


class _Connection:
    """This process's connection to the service, and the futures awaiting its answers."""

    def __init__(self, conn: socket.socket, sock: Path) -> None:
        self.conn, self.sock = conn, sock
        self.pid = _service_pid(sock)
        self.requests, self.answers = conn.makefile("wb"), conn.makefile("rb")
        self.pending: dict[int, Future] = {}
        self.ids = itertools.count()
        self.lock = threading.Lock()
        self.closed = False
        self.reader = threading.Thread(target=self._read_answers, name="gx-service-answers", daemon=True)
        self.reader.start()

    def submit(self, task: str, *args: Any) -> Future:
        future: Future = Future()
        with self.lock:
            if self.closed:
                raise QualityWorkerError("the GX validation service has ended")
            request_id = next(self.ids)
            self.pending[request_id] = future
            try:
                pickle.dump((request_id, task, args), self.requests)
                self.requests.flush()
            except OSError:
                self.pending.pop(request_id)
                self.closed = True
                raise QualityWorkerError("the GX validation service has ended") from None
        return future

    def _read_answers(self) -> None:
        while True:
            try:
                request_id, ok, value = pickle.load(self.answers)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            with self.lock:
                future = self.pending.pop(request_id)
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        with self.lock:
            self.closed = True
            orphans, self.pending = list(self.pending.values()), {}
        for future in orphans:
            future.set_exception(QualityWorkerError(
                f"the GX validation service (pid {self.pid}) ended before it answered"))

    @property
    def alive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        """Hang up (the service finishes what it has in hand and drops the answer)."""
        with self.lock:
            self.closed = True
        with contextlib.suppress(OSError):  # first: the reader, blocked in a read, sees the end
            self.conn.shutdown(socket.SHUT_RDWR)
        self.reader.join(timeout=10)
        for stream in (self.requests, self.answers):
            with contextlib.suppress(OSError):
                stream.close()
        self.conn.close()


def _service_pid(sock: Path) -> int | None:
    try:
        return int(sock.with_suffix(".pid").read_text())
    except (OSError, ValueError):
        return None


def _connect(settings: Settings, ended: int | None = None) -> _Connection:
    """A connection to this installation's service, started when none is listening. ``ended``:
    the pid of a service this process saw end; while it is still exiting, its listening socket can
    accept a connection it will never answer, so a connection to that pid is dropped."""
    sock = service.socket_path(settings.gx_service_dir)
    deadline, spawned = time.monotonic() + START_TIMEOUT_SECONDS, None
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(sock))
            if ended is None or _service_pid(sock) != ended:
                return _Connection(conn, sock)
            conn.close()
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
        now = time.monotonic()
        if now > deadline:
            raise QualityWorkerError(f"the GX validation service did not start within "
                                     f"{START_TIMEOUT_SECONDS} s (its log: {sock.with_suffix('.log')})")
        if spawned is None or now - spawned > RESPAWN_SECONDS:
            service.spawn(sock, settings.gx_service_idle_seconds)
            spawned = now
        time.sleep(0.02)


_worker: _Connection | None = None
_worker_lock = threading.Lock()


def _connection(settings: Settings) -> _Connection:
    """This process's live connection to the service: made on first use, and again once the
    service it had ended (never to that service's pid: :func:`_connect`)."""
    global _worker
    with _worker_lock:
        if _worker is None or not _worker.alive:
            _worker = _connect(settings, None if _worker is None else _worker.pid)
        return _worker


def _submit(settings: Settings, task: str, *args: Any) -> Future:
    return _connection(settings).submit(task, *args)


def start(settings: Settings) -> None:
    """Connect to this installation's service now, starting it when none listens (it imports GX at
    once): a caller with other work before its first check lets the two overlap."""
    _connection(settings)


def start_in_background(settings: Settings, every_table: bool = False) -> None:
    """:func:`start` on a thread of its own, when the local engine loads (the other engines validate
    where they load): a caller about to import Dagster and its definitions (seconds on one core)
    gets GX's import beside them, not beside its first tables' reads. ``every_table``: a caller
    about to load every table (``bronze demo``) also has their suites built for a load today
    (:func:`warm_load`, as each load asks for its own), beside its start-up rather than beside
    its first tables' reads. A failure is left to the first check, which names it."""
    if (settings.engine or LOCAL_ENGINE) != LOCAL_ENGINE:
        return

    def connect() -> None:
        with contextlib.suppress(Exception):
            start(settings)
            if every_table:
                from bronze_assets.contracts import CONTRACTS, LANDING_CONTRACTS

                for contract in (*CONTRACTS.values(), *LANDING_CONTRACTS.values()):
                    warm_load(settings, contract)

    threading.Thread(target=connect, name="gx-service-start", daemon=True).start()


def warm(settings: Settings, contract: Contract, load_date: date, docs_dir: Path | None) -> Future[None]:
    """Have the service import GX and build ``contract``'s suite (if it has not yet); returns at once."""
    return _submit(settings, "build", contract, load_date, docs_dir)


def warm_load(settings: Settings, contract: Contract) -> Future[None]:
    """:func:`warm` for a load of ``contract`` today, with its Data Docs where its checks put them."""
    return warm(settings, contract, datetime.now(UTC).date(), docs_dir(contract, settings.data_dir))


def validate_staged(settings: Settings, contract: Contract, load_date: date, docs_dir: Path | None,
                    path: Path) -> Future[QualityReport]:
    """Validate the staged file at ``path`` in the service; the file must outlive the future."""
    return _submit(settings, "validate", contract, load_date, docs_dir, path)


def report(future: Future[QualityReport], table: str) -> QualityReport:
    """The service's answer, or an error naming the table when the service died."""
    try:
        return future.result()
    except QualityWorkerError as exc:
        raise QualityWorkerError(f"{table}: {exc} (killed or out of memory?); re-run the check") from None


def service_pid(settings: Settings | None = None) -> int | None:
    """The pid of the service this process is connected to; with ``settings``, of the service
    of this installation that is running (connected or not); ``None`` if there is none."""
    if settings is None:
        worker = _worker
        return worker.pid if worker is not None and worker.alive else None
    pid = _service_pid(service.socket_path(settings.gx_service_dir))
    return pid if pid is not None and Path(f"/proc/{pid}").exists() else None


def peak_rss_bytes(pid: int | None = None) -> int | None:
    """Peak resident memory (``VmHWM``) of the service ``pid`` (default: the connected one)."""
    pid = pid or service_pid()
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # not Linux, or it just ended
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak(pid: int) -> None:
    """Restart the ``VmHWM`` of the service ``pid`` from its current size (Linux), so that a
    benchmark's phase measures its own peak."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU the service ``pid`` has used since it started, or ``None``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shutdown(wait: bool = True) -> None:
    """Close this process's connection; the service stays for the next run. ``wait`` is kept for
    callers that stop at exit (the service finishes in-hand work either way)."""
    global _worker
    with _worker_lock:
        worker, _worker = _worker, None
    if worker is not None:
        worker.close()


def stop_service(settings: Settings) -> bool:
    """End this installation's service now (e.g. after a benchmark); ``False`` if none ran."""
    shutdown()
    sock = service.socket_path(settings.gx_service_dir)
    pid = _service_pid(sock)
    if pid is None:
        return False
    try:
        if "quality.service" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return False  # the pid was reused
    except OSError:
        pass
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


atexit.register(shutdown, wait=False)
