"""A Dagster executor that runs a run's steps on threads of the run's own process.

Dagster's ``in_process`` executor runs one step after another; its ``multiprocess`` executor
starts a process per step, each importing Dagster and bronze again (≈1.6 CPU s). A bronze step
spends most of its time in native code that releases the GIL (the binary COPY's decoding,
DuckDB, delta-rs, AES-GCM), so two tables' steps on two threads keep both cores busy.

Each step runs on a thread of its own (its events are logged there, as the in-process executor
logs them, by the instance's thread-safe storages); the run's thread hands the events to
Dagster's plan bookkeeping one at a time, as the multiprocess executor does. Which step starts
when is a :class:`StepPool`'s to say: ``after`` names, per step key, the steps that must end first,
retries included (a child table's referential check reads its parents); ``weight`` orders the
ready steps (heavier first: the longest first shortens the run) and, with ``budget``, bounds what
runs at once: a step starts beside others only while the weights of the steps still computing
their output stay within the budget (memory: the heaviest step's read may have to run alone). A
step whose output is out (``STEP_OUTPUT``: a bronze table's rows are staged, its IO manager
writes them) weighs nothing more: the next step starts reading beside its write; with
``beside_writes`` such a step also frees a thread (up to that many steps beyond ``max_concurrent``),
so a run's last step reads while the others MERGE instead of after them. With ``release_output``
off a step keeps its weight until it ends (its write included). Each run has a pool of its own,
or several runs of the process share one (the demo's three runs at once: one set of slots, one
budget, a child's step after its parents' in whichever run they are).
A Ctrl-C received by the run (Dagster's captured interrupt, or the pool's :meth:`StepPool.interrupt`
for runs on threads, which Dagster does not hand it) starts no further step and asks the
running ones to stop (:mod:`bronze_assets.lib.stop`): each raises ``KeyboardInterrupt`` at its
next stop point (between source batches, between commits) and fails as interrupted. A step that
reaches none within ``STOP_GRACE_SECONDS`` is left behind (its thread is a daemon): the run ends.
An error the run raises (Dagster's, outside a step's own handling, in a step's thread or the run's;
a step's with ``raise_on_error``) stops the other running steps the same way before it is raised,
and the other runs of a shared pool with them (:meth:`StepPool.fail`): no run leaves a step running
unless it reached no stop point within the grace.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.execution.api import ExecuteRunWithPlanIterable
from dagster._core.execution.compute_logs import create_compute_log_file_key
from dagster._core.execution.context.system import PlanExecutionContext, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import PlanExecutionContextManager
from dagster._core.execution.plan.execute_plan import _trigger_hook, dagster_event_sequence_for_step
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.step import ExecutionStep
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.executor.base import Executor

from bronze_assets.lib import ast_lock
from bronze_assets.lib.stop import clear_stop, request_stop

POLL_SECONDS = 0.1  # how often the run's thread looks for an interrupt while steps run
STOP_GRACE_SECONDS = 30.0  # how long an interrupted run waits for its running steps to stop
_DONE = object()  # a step thread's last message
_WAKE = object()  # the pool says a step may start now

ast_lock.install()  # steps and runs on threads format tracebacks at once


class StepPool:
    """The steps of one or more runs of this process on shared slots: at most ``max_concurrent``
    at once, plus up to ``beside_writes`` more, one per step whose output is out (a bronze table's
    rows staged, its IO manager writing them: its MERGE). ``after`` names, per step key, the steps
    that must end first, retries included, in whichever run of the pool they are (steps no run of
    the pool plans are ignored); ``weight`` orders the ready steps of every run (heavier first: the
    longest first shortens the load; or as ``order`` lists them) and, with ``budget``, bounds what
    computes at once: a step starts beside others only while the weights of the steps still
    computing stay within the budget (memory: the heaviest step's read may have to run alone;
    with ``release_output`` off a step keeps its weight until it ends, its write included), and
    a step does not start where it would keep a ready one before it from fitting once the
    running ones end. No
    step starts before every run planned with :meth:`plan` has handed its steps in (their weights
    are then all known). One executor's own pool when none is given; the demo's runs share one."""

    def __init__(self, max_concurrent: int, *, beside_writes: int = 0, release_output: bool = True,
                 after: Mapping[str, frozenset[str]] | None = None,
                 weight: Mapping[str, float] | None = None, budget: float | None = None,
                 order: Sequence[str] | None = None):
        self.max_concurrent = max(1, max_concurrent)
        self.beside_writes = max(0, beside_writes)
        self.release_output = release_output
        self.after = dict(after or {})
        self.weight = dict(weight or {})
        self.budget = budget
        self._order = {step: i for i, step in enumerate(order or [])}
        self._lock = threading.Lock()
        self._planned: set[str] = set()  # every step of the runs planned
        self._arrived: set[str] = set()  # steps of the runs whose executor has started (or ended)
        self._waiting: set[str] = set()  # handed out by Dagster, not started
        self._running: set[str] = set()
        self._writing: set[str] = set()  # running, output out
        self._ended: set[str] = set()  # ended for good (not up for retry), or their run did
        self._listeners: list[queue.Queue[tuple[str, object]]] = []
        self._interrupted = threading.Event()
        self.failure: BaseException | None = None  # the error that stopped the pool's runs

    def plan(self, steps: Iterable[str]) -> None:
        """A run that will hand in ``steps``: no step starts until it has (or has ended)."""
        with self._lock:
            self._planned |= set(steps)

    def arrive(self, steps: Iterable[str], listener: queue.Queue[tuple[str, object]]) -> None:
        """A run's executor has started with ``steps``; ``listener`` hears when a slot may be free."""
        with self._lock:
            self._planned |= set(steps)
            self._arrived |= set(steps)
            self._listeners.append(listener)
        self._wake()

    def close(self, steps: Iterable[str], listener: queue.Queue[tuple[str, object]] | None = None) -> None:
        """A run has ended: its ``steps`` that did not run (skipped, or the run failed before them)
        end with it, so no other run's step waits for them."""
        steps = set(steps)
        with self._lock:
            self._planned |= steps
            self._arrived |= steps
            self._ended |= steps - self._running
            self._waiting -= steps
            if listener is not None and listener in self._listeners:
                self._listeners.remove(listener)
        self._wake()

    def wait(self, steps: Iterable[str]) -> None:
        """Steps handed out by Dagster, to start when :meth:`start` lets them."""
        with self._lock:
            self._waiting |= set(steps)

    def withdraw(self, steps: Iterable[str]) -> None:
        """Waiting steps that will not start (their run was interrupted)."""
        with self._lock:
            self._waiting -= set(steps)

    def ready(self, step: str) -> bool:
        """Whether every step ``step`` runs after has ended."""
        with self._lock:
            return self._ready(step)

    def start(self, step: str) -> bool:
        """Whether ``step`` (ready) may start now; if so it counts as running."""
        with self._lock:
            if not self._arrived >= self._planned or not self._fits(step):
                return False
            mine = self.weight.get(step, 0.0)
            for other in self._waiting - {step}:
                if self.rank(other) >= self.rank(step) or not self._ready(other):
                    continue
                if self._fits(other):
                    return False  # the one before it starts first (its executor is told)
                if self.budget is not None and mine + self.weight.get(other, 0.0) > self.budget:
                    return False  # it would keep the one before it from fitting
            self._waiting.discard(step)
            self._running.add(step)
            return True

    def rank(self, step: str) -> tuple[int, float, str]:
        """Where ``step`` comes in the order the ready steps start: ``order``'s, else heavier first."""
        return self._order.get(step, len(self._order)), -self.weight.get(step, 0.0), step

    def output_out(self, step: str) -> None:
        """``step`` has handed its output over: it only writes it now."""
        with self._lock:
            if step in self._running:
                self._writing.add(step)
        self._wake()

    def end(self, step: str, *, for_good: bool = True) -> None:
        """``step`` has ended (``for_good=False``: up for retry, its ``after`` steps wait on)."""
        with self._lock:
            self._running.discard(step)
            self._writing.discard(step)
            if for_good:
                self._ended.add(step)
        self._wake()

    def interrupt(self) -> None:
        """Stop every run of the pool: no further step starts, the running ones are asked to stop."""
        self._interrupted.set()
        self._wake()

    def fail(self, error: BaseException) -> None:
        """A run of the pool raises ``error``: the others stop as on :meth:`interrupt` (its stop
        requests reach every run's steps), and ``failure`` keeps the first such error."""
        with self._lock:
            if self.failure is None:
                self.failure = error
        self.interrupt()

    @property
    def interrupted(self) -> bool:
        """Whether the pool's runs are to stop (:meth:`interrupt` or :meth:`fail`)."""
        return self._interrupted.is_set()

    def _ready(self, step: str) -> bool:
        return (self.after.get(step, frozenset()) & self._planned) <= self._ended

    def _fits(self, step: str) -> bool:
        if not self._running:
            return True
        if len(self._running) >= self.max_concurrent + min(self.beside_writes, len(self._writing)):
            return False
        weighing = self._running - self._writing if self.release_output else self._running
        return self.budget is None or \
            sum(self.weight.get(k, 0.0) for k in weighing) + self.weight.get(step, 0.0) <= self.budget

    def _wake(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener.put(("", _WAKE))


class ThreadedExecutor(Executor):
    """Runs up to ``max_concurrent`` steps of a run at once, each on its own thread (plus up to
    ``beside_writes`` more, one per running step whose output is out), or the run's share of a
    :class:`StepPool` that several runs of this process use at once."""

    def __init__(self, retries: RetryMode, max_concurrent: int,
                 after: Mapping[str, frozenset[str]] | None = None,
                 weight: Mapping[str, float] | None = None, budget: float | None = None,
                 beside_writes: int = 0, release_output: bool = True, pool: StepPool | None = None):
        self._retries = retries
        self.max_concurrent = max(1, max_concurrent) if pool is None else pool.max_concurrent
        self.after = dict(after or {})
        self.weight = dict(weight or {}) if pool is None else pool.weight
        self.budget = budget
        self.beside_writes = max(0, beside_writes)
        self.release_output = release_output
        self.pool = pool

    @property
    def retries(self) -> RetryMode:
        return self._retries

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan,
                ) -> Iterator[DagsterEvent]:
        step_keys = execution_plan.step_keys_to_execute
        yield DagsterEvent.engine_event(
            plan_context, f"Executing steps on up to {self.max_concurrent} threads (pid: {os.getpid()})",
            event_specific_data=EngineEventData.in_process(os.getpid(), step_keys))
        yield from iter(ExecuteRunWithPlanIterable(
            execution_plan=plan_context.execution_plan,
            iterator=self._iterate,
            execution_context_manager=PlanExecutionContextManager(
                job=plan_context.job, retry_mode=plan_context.retry_mode,
                execution_plan=plan_context.execution_plan, run_config=plan_context.run_config,
                dagster_run=plan_context.dagster_run, instance=plan_context.instance,
                raise_on_error=plan_context.raise_on_error, output_capture=plan_context.output_capture),
        ))
        yield DagsterEvent.engine_event(
            plan_context, f"Finished steps on threads (pid: {os.getpid()})",
            event_specific_data=EngineEventData.in_process(os.getpid(), step_keys))

    def _iterate(self, job_context: PlanExecutionContext, execution_plan: ExecutionPlan,
                 ) -> Iterator[DagsterEvent]:
        compute_logs = job_context.instance.compute_log_manager
        in_run = set(execution_plan.step_keys_to_execute)
        pool = self.pool or StepPool(self.max_concurrent, beside_writes=self.beside_writes,
                                     release_output=self.release_output, after=self.after,
                                     weight=self.weight, budget=self.budget)
        with InstanceConcurrencyContext(job_context.instance, job_context.dagster_run) as concurrency, \
                execution_plan.start(retry_mode=job_context.retry_mode,
                                     sort_key_fn=lambda step: pool.rank(step.key),
                                     instance_concurrency_context=concurrency,
                                     step_dependency_config=job_context.step_dependency_config,
                                     ) as active:
            log_key = compute_logs.build_log_key_for_run(job_context.run_id, create_compute_log_file_key())
            with compute_logs.capture_logs(log_key) as log_context:
                yield DagsterEvent.capture_logs(job_context, list(in_run), log_key, log_context)
                messages: queue.Queue[tuple[str, object]] = queue.Queue()
                pool.arrive(in_run, messages)
                try:
                    yield from self._run_steps(job_context, active, pool, messages)
                finally:
                    pool.close(in_run, messages)
                    if self.pool is None:  # a shared pool's owner clears it once every run ended
                        clear_stop()

    def _run_steps(self, job_context: PlanExecutionContext, active: Any, pool: StepPool,
                   messages: queue.Queue[tuple[str, object]]) -> Iterator[DagsterEvent]:
        threads: dict[str, threading.Thread] = {}
        events: dict[str, list[DagsterEvent]] = {}
        contexts: dict[str, Any] = {}
        waiting: list[ExecutionStep] = []  # handed out by Dagster, held until the pool starts them
        stopping = False
        failure: BaseException | None = None  # an error the run raises once its other steps ended
        deadline = float("inf")
        try:
            while not active.is_complete or threads or waiting:
                if stopping and time.monotonic() > deadline:
                    break  # steps that reached no stop point are left behind
                if not stopping and (active.check_for_interrupts() or pool.interrupted):
                    stopping = True
                    deadline = time.monotonic() + STOP_GRACE_SECONDS
                    active.mark_interrupted()
                    pool.withdraw(s.key for s in waiting)
                    waiting.clear()
                    request_stop()  # the running steps stop at their next stop point
                if not stopping:
                    handed = active.get_steps_to_execute()
                    pool.wait(s.key for s in handed)
                    waiting += handed
                    waiting.sort(key=lambda step: pool.rank(step.key))
                    yield from active.concurrency_event_iterator(job_context)
                    for step in [s for s in waiting if pool.ready(s.key)]:
                        if not pool.start(step.key):
                            continue
                        waiting.remove(step)
                        contexts[step.key] = job_context.for_step(step, active.get_known_state())
                        events[step.key] = []
                        threads[step.key] = _start(step.key, contexts[step.key], messages, pool)
                if not threads and (stopping or not waiting):
                    if stopping or active.is_complete:
                        break
                    active.sleep_til_ready()
                    continue
                try:
                    key, message = messages.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if message is _WAKE:
                    continue
                if message is _DONE:  # the step's thread has ended it in the pool
                    threads.pop(key).join()
                    if not stopping:
                        active.verify_complete(job_context, key)
                    for event in active.plan_events_iterator(job_context):
                        events[key].append(event)
                        yield event
                    yield from _trigger_hook(contexts.pop(key), events.pop(key))
                elif isinstance(message, BaseException):
                    if not stopping:  # a framework error outside the step's own error handling (or,
                        # with raise_on_error, the step's): raised once the other running steps stopped
                        failure, stopping = message, True
                        deadline = time.monotonic() + STOP_GRACE_SECONDS
                        pool.withdraw(s.key for s in waiting)
                        waiting.clear()
                        pool.fail(message)  # a shared pool's other runs stop too
                        request_stop()
                    # interrupted: how the step ended is in its events; wait for the other steps
                else:
                    assert isinstance(message, DagsterEvent)
                    events[key].append(message)
                    if message.event_type == DagsterEventType.STEP_OUTPUT:
                        pool.output_out(key)
                    yield message
                    active.handle_event(message)
        except BaseException as error:  # raised in the run's own thread, or its events no longer read
            if threads:  # its running steps stop first, and so do the other runs' (one stop request)
                if isinstance(error, KeyboardInterrupt | GeneratorExit):
                    pool.interrupt()
                else:
                    pool.fail(error)
                request_stop()
                _join(threads.values(), time.monotonic() + STOP_GRACE_SECONDS)
            raise
        if failure is not None:
            raise failure
        if stopping:
            raise KeyboardInterrupt


def _join(threads: Iterable[threading.Thread], deadline: float) -> None:
    """Wait for ``threads`` to end, until ``deadline`` (``time.monotonic()``) at most."""
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def _start(key: str, step_context: Any, messages: queue.Queue[tuple[str, object]], pool: StepPool,
           ) -> threading.Thread:
    """A thread running one step, sending its events (then ``_DONE``) to ``messages``; it ends the
    step in ``pool`` itself, so the step holds its place there until it ends, even when its run
    has ended before it (left behind after an error or an interrupt)."""
    def run() -> None:
        retried = False  # one up for retry has not ended: its `after` steps wait for it
        try:
            for event in dagster_event_sequence_for_step(step_context):
                retried |= event.event_type == DagsterEventType.STEP_UP_FOR_RETRY
                messages.put((key, event))
        except KeyboardInterrupt:
            pass  # the step's interrupted failure event was sent; the run's thread raises
        except BaseException as error:  # handed to the run's thread
            messages.put((key, error))
        finally:
            pool.end(key, for_good=not retried)
            messages.put((key, _DONE))

    thread = threading.Thread(target=run, name=f"step {key}", daemon=True)
    thread.start()
    return thread


def threaded_executor(max_concurrent: int, after: Mapping[str, frozenset[str]] | None = None,
                      weight: Mapping[str, float] | None = None, budget: float | None = None,
                      beside_writes: int = 0, release_output: bool = True, pool: StepPool | None = None,
                      ) -> dg.ExecutorDefinition:
    """An executor definition running up to ``max_concurrent`` steps at once on threads (and up
    to ``beside_writes`` more beside steps writing their output), or its runs' steps on
    ``pool``'s slots (shared with other runs; the pool's settings then apply)."""
    def create(init_context: Any) -> ThreadedExecutor:
        retries = RetryMode.from_config(init_context.executor_config["retries"])
        assert retries is not None
        return ThreadedExecutor(retries, max_concurrent, after, weight, budget, beside_writes,
                                release_output, pool)

    create_fn: Callable[[Any], ThreadedExecutor] = create
    return dg.ExecutorDefinition(name="bronze_threads", config_schema={"retries": get_retries_config()},
                                 executor_creation_fn=create_fn, requirements=[])


def execute_in_process(job: dg.JobDefinition, executor_def: dg.ExecutorDefinition, *,
                       instance: dg.DagsterInstance, tags: Mapping[str, str] | None = None,
                       raise_on_error: bool = True, run_config: Mapping[str, Any] | None = None,
                       partition_key: str | None = None) -> dg.ExecuteInProcessResult:
    """``job.execute_in_process`` with ``executor_def`` (which ``execute_in_process`` would replace
    by the in-process executor): the same ephemeral job, run, events and result."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.execute_in_process import core_execute_in_process, merge_run_tags

    run_config = dict(run_config or {})
    ephemeral = job.as_ephemeral_job(resource_defs={}, input_values={}).with_executor_def(executor_def)
    return core_execute_in_process(
        job=InMemoryJob(job_def=ephemeral), run_config=run_config, instance=instance,
        output_capturing_enabled=True, raise_on_error=raise_on_error,
        run_tags=merge_run_tags(job_def=job, partition_key=partition_key, tags=tags, asset_selection=None,
                                instance=instance, run_config=run_config))
