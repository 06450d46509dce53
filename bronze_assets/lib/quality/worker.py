"""Great Expectations in a worker process of its own, beside the load.

Importing GX and building a suite costs seconds of pure-Python work per process. On a thread of
the load's process that work holds the GIL and stalls the load; in a worker process it runs on
another core while the load reads the source and MERGEs. The worker is a child of the process
that runs the checks (one per Dagster run or step process), started on first use as a
fresh interpreter running :func:`serve` (not ``multiprocessing``: a spawned child would re-run
the caller's ``__main__`` script); it ends when its parent closes the pipe or exits. It
validates the staged Arrow IPC file in place, so no rows cross between the processes.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import date
from pathlib import Path
from typing import IO, Any

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.staging import staged_reader
from bronze_assets.lib.quality.validate import QualityReport, suite_runner

STOP_TIMEOUT_SECONDS = 10


class QualityWorkerError(RuntimeError):
    """The worker process ended (killed, out of memory) before it answered."""


def _build(contract: Contract, load_date: date, docs_dir: Path | None) -> None:
    suite_runner(contract, load_date, docs_dir)


def _validate(contract: Contract, load_date: date, docs_dir: Path | None, path: Path) -> QualityReport:
    return suite_runner(contract, load_date, docs_dir).validate_batches(staged_reader(path))


_TASKS: dict[str, Callable[..., Any]] = {"build": _build, "validate": _validate}


class _Worker:
    """One child process answering pickled requests in order, and the futures awaiting them."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[3])  # importable even when not installed
        boot = f"import sys; sys.path.insert(0, {package_root!r}); from {__name__} import serve; serve()"
        self.process = subprocess.Popen([sys.executable, "-c", boot],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pending: dict[int, Future] = {}
        self.ids = itertools.count()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read_answers, name="gx-worker-answers", daemon=True)
        self.reader.start()

    def submit(self, task: str, *args: Any) -> Future:
        future: Future = Future()
        with self.lock:
            if self.process.poll() is not None:
                raise QualityWorkerError(f"the GX worker process has ended (exit {self.process.returncode})")
            request_id = next(self.ids)
            self.pending[request_id] = future
            assert self.process.stdin is not None
            pickle.dump((request_id, task, args), self.process.stdin)
            self.process.stdin.flush()
        return future

    def _read_answers(self) -> None:
        assert self.process.stdout is not None
        while True:
            try:
                request_id, ok, value = pickle.load(self.process.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            with self.lock:
                future = self.pending.pop(request_id)
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        code = self.process.wait()
        with self.lock:
            orphans, self.pending = list(self.pending.values()), {}
        for future in orphans:
            future.set_exception(QualityWorkerError(
                f"the GX worker process ended (exit {code}) before it answered"))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, wait: bool = True) -> None:
        """Close the request pipe (the worker finishes what it has, then exits) and wait; or,
        without ``wait``, end it now (nobody is left to read its answers)."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        if not wait:
            self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=STOP_TIMEOUT_SECONDS)


_worker: _Worker | None = None
_worker_lock = threading.Lock()


def _submit(task: str, *args: Any) -> Future:
    global _worker
    with _worker_lock:
        if _worker is None or not _worker.alive:  # first use, or an earlier worker died
            _worker = _Worker()
        worker = _worker
    return worker.submit(task, *args)


def warm(contract: Contract, load_date: date, docs_dir: Path | None) -> Future[None]:
    """Start importing GX and building ``contract``'s suite in the worker; returns at once."""
    return _submit("build", contract, load_date, docs_dir)


def validate_staged(contract: Contract, load_date: date, docs_dir: Path | None, path: Path
                    ) -> Future[QualityReport]:
    """Validate the staged file at ``path`` in the worker; the file must outlive the future."""
    return _submit("validate", contract, load_date, docs_dir, path)


def report(future: Future[QualityReport], table: str) -> QualityReport:
    """The worker's answer, or an error naming the table when the worker died."""
    try:
        return future.result()
    except QualityWorkerError as exc:
        raise QualityWorkerError(f"{table}: {exc} (killed or out of memory?); re-run the check") from None


def peak_rss_bytes() -> int | None:
    """The running worker's peak resident memory (``VmHWM`` of its process), or ``None``."""
    worker = _worker
    if worker is None or not worker.alive:
        return None
    try:
        status = Path(f"/proc/{worker.process.pid}/status").read_text()
    except OSError:  # not Linux, or it just ended
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def shutdown(wait: bool = True) -> None:
    """Stop the worker, waiting for what it has in hand unless not ``wait`` (the next check starts
    a new one)."""
    global _worker
    with _worker_lock:
        worker, _worker = _worker, None
    if worker is not None:
        worker.stop(wait)


# at exit every answer anyone waits for has arrived: a worker still busy (a failed or interrupted
# step's warm-up or validation) is ended rather than waited for
atexit.register(shutdown, wait=False)


def _serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The worker's loop: one request at a time until the parent closes the pipe."""
    while True:
        try:
            request_id, task, args = pickle.load(requests)
        except EOFError:
            return
        try:
            answer = (request_id, True, _TASKS[task](*args))
        except Exception as exc:  # sent back to the caller, which raises it
            answer = (request_id, False, exc)
        try:
            payload = pickle.dumps(answer)
        except Exception:  # an exception that does not pickle: its text
            error = RuntimeError(f"{type(answer[2]).__name__}: {answer[2]}")
            payload = pickle.dumps((request_id, False, error))
        answers.write(payload)
        answers.flush()


def serve() -> None:
    """The worker process's entry point: requests on stdin, answers on the original stdout.

    A Ctrl-C in the terminal reaches every process of its process group: the worker ignores it,
    and its parent, which the user interrupted, decides (the parent's exit closes the pipe)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers_fd = os.dup(1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the answers
    _serve(sys.stdin.buffer, os.fdopen(answers_fd, "wb"))
