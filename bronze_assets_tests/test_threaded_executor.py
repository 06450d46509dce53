"""The demo's executor: a run's steps on threads, parents' steps first, heavy steps alone."""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable, Mapping

import dagster as dg
import pytest

from bronze_assets.defs import threaded_executor as te
from bronze_assets.defs.pipes import BronzePipes

BARRIER_SECONDS = 20.0


def _job(assets: list[dg.AssetsDefinition]) -> dg.JobDefinition:
    definitions = dg.Definitions(assets=assets,
                                 jobs=[dg.define_asset_job("j", selection=dg.AssetSelection.all())])
    return definitions.resolve_job_def("j")


def _run(assets: list[dg.AssetsDefinition], executor: dg.ExecutorDefinition, **kwargs: object,
         ) -> dg.ExecuteInProcessResult:
    return te.execute_in_process(_job(assets), executor, instance=dg.DagsterInstance.ephemeral(),
                                 raise_on_error=False, **kwargs)  # type: ignore[arg-type]


def _recording(names: list[str], log: list[tuple[str, str]],
               wait: Mapping[str, threading.Barrier] | None = None, fail: str | None = None,
               ) -> list[dg.AssetsDefinition]:
    lock = threading.Lock()

    def make(name: str) -> dg.AssetsDefinition:
        @dg.asset(name=name)
        def _asset() -> None:
            with lock:
                log.append(("start", name))
            if wait and name in wait:
                wait[name].wait(BARRIER_SECONDS)  # raises BrokenBarrierError unless run together
            time.sleep(0.05)
            if name == fail:
                raise RuntimeError(f"{name} fails")
            with lock:
                log.append(("end", name))
        return _asset

    return [make(n) for n in names]


def test_two_steps_run_at_once() -> None:
    barrier = threading.Barrier(2)
    log: list[tuple[str, str]] = []
    result = _run(_recording(["a", "b"], log, {"a": barrier, "b": barrier}), te.threaded_executor(2))
    assert result.success
    assert sorted(log) == [("end", "a"), ("end", "b"), ("start", "a"), ("start", "b")]
    assert [e for e, _ in log[:2]] == ["start", "start"]  # both started before either ended


def test_after_orders_steps_and_weight_orders_the_rest() -> None:
    log: list[tuple[str, str]] = []
    result = _run(_recording(["child", "parent", "small", "big"], log),
                  te.threaded_executor(1, after={"child": frozenset({"parent"})},
                                       weight={"big": 10.0, "small": 1.0, "child": 5.0, "parent": 2.0}))
    assert result.success
    starts = [n for e, n in log if e == "start"]
    assert starts.index("parent") < starts.index("child")
    assert starts[0] == "big" and starts[-1] == "small"  # heaviest first: child waits for parent


def test_budget_keeps_the_heavy_step_alone() -> None:
    log: list[tuple[str, str]] = []
    result = _run(_recording(["heavy", "x", "y"], log),
                  te.threaded_executor(2, weight={"heavy": 10.0, "x": 5.0, "y": 5.0}, budget=10.0))
    assert result.success
    assert log[:2] == [("start", "heavy"), ("end", "heavy")]  # x and y together after it
    assert {n for _, n in log[2:4]} == {"x", "y"} and [e for e, _ in log[2:4]] == ["start", "start"]


def _run_writes(log: list[tuple[str, str]], names: list[str], executor: dg.ExecutorDefinition, *,
                write: Callable[[str], None], compute: Callable[[str], None] = lambda name: None,
                ) -> dg.ExecuteInProcessResult:
    """A job of the assets ``names`` on ``executor``: each logs ``("start", name)`` then runs
    ``compute(name)``; their IO manager's ``handle_output`` is ``write(step_key)`` (a bronze
    table's MERGE happens there)."""
    class Writes(dg.IOManager):
        def handle_output(self, context, obj) -> None:  # type: ignore[no-untyped-def]
            write(context.step_key)

        def load_input(self, context):  # type: ignore[no-untyped-def]
            return None

    def make(name: str) -> dg.AssetsDefinition:
        @dg.asset(name=name, io_manager_key="writes")
        def _asset() -> int:
            log.append(("start", name))
            compute(name)
            return 1
        return _asset

    definitions = dg.Definitions(assets=[make(n) for n in names],
                                 jobs=[dg.define_asset_job("j", selection=dg.AssetSelection.all())],
                                 resources={"writes": Writes()})
    return te.execute_in_process(definitions.resolve_job_def("j"), executor,
                                 instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)


def test_a_heavy_step_writing_its_output_lets_the_next_step_start() -> None:
    """The budget bounds the steps still computing their output: once the heavy step's output is
    out (its IO manager writes it, as a bronze table's MERGE), the next step starts beside it."""
    log: list[tuple[str, str]] = []
    writing = threading.Barrier(2)  # broken unless x runs while heavy's output is written

    def write(step: str) -> None:
        if step == "heavy":
            log.append(("writing", "heavy"))
            writing.wait(BARRIER_SECONDS)
            log.append(("written", "heavy"))

    def compute(name: str) -> None:
        if name == "x":
            writing.wait(BARRIER_SECONDS)
        log.append(("end", name))

    result = _run_writes(log, ["heavy", "x"],
                         te.threaded_executor(2, weight={"heavy": 10.0, "x": 5.0}, budget=10.0),
                         write=write, compute=compute)
    assert result.success
    assert log[:3] == [("start", "heavy"), ("end", "heavy"), ("writing", "heavy")]
    assert log.index(("start", "x")) < log.index(("written", "heavy"))


@pytest.mark.parametrize("beside_writes", [0, 1])
def test_a_step_writing_its_output_frees_a_thread_for_beside_writes(beside_writes: int) -> None:
    """With ``beside_writes``, a step whose output is out (its IO manager writing it, as a bronze
    table's MERGE) frees a thread: on one thread the next step reads beside that write; without,
    it waits for the write to end."""
    log: list[tuple[str, str]] = []
    writing = threading.Barrier(2)  # met only if y runs while x's output is written

    def write(step: str) -> None:
        if step == "x":
            log.append(("writing", "x"))
            with contextlib.suppress(threading.BrokenBarrierError):
                writing.wait(1.0 if not beside_writes else BARRIER_SECONDS)
            log.append(("written", "x"))

    def compute(name: str) -> None:
        if name == "y" and beside_writes:
            writing.wait(BARRIER_SECONDS)

    result = _run_writes(log, ["x", "y"],
                         te.threaded_executor(1, weight={"x": 2.0, "y": 1.0}, beside_writes=beside_writes),
                         write=write, compute=compute)
    assert result.success
    assert log[:2] == [("start", "x"), ("writing", "x")]
    y_first = log.index(("start", "y")) < log.index(("written", "x"))
    assert y_first == bool(beside_writes)


def test_without_release_output_a_step_writing_its_output_still_weighs() -> None:
    """``release_output=False`` (a run with checks): the heavy step counts against the budget until
    it ends, its write included, so the next step does not start beside its write."""
    log: list[tuple[str, str]] = []

    def write(step: str) -> None:
        if step == "heavy":
            log.append(("writing", "heavy"))
            time.sleep(0.5)  # time for x to start, were the write released
            log.append(("written", "heavy"))

    result = _run_writes(log, ["heavy", "x"], te.threaded_executor(
        2, weight={"heavy": 10.0, "x": 5.0}, budget=10.0, release_output=False), write=write)
    assert result.success
    assert log == [("start", "heavy"), ("writing", "heavy"), ("written", "heavy"), ("start", "x")]


def test_a_failing_step_fails_alone() -> None:
    log: list[tuple[str, str]] = []
    result = _run(_recording(["bad", "good"], log, fail="bad"), te.threaded_executor(2))
    assert not result.success
    failed = {e.step_key for e in result.all_events if e.is_step_failure}
    succeeded = {e.step_key for e in result.all_events if e.is_step_success}
    assert failed == {"bad"} and succeeded == {"good"}
    assert ("end", "good") in log


def test_ranged_run_materializes_every_partition() -> None:
    parts = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-06")
    seen: list[str] = []

    @dg.asset(partitions_def=parts)
    def ranged(context) -> dg.Output[None]:  # type: ignore[no-untyped-def]  # (string annotations: Dagster reads none)
        seen.append(context.partition_key_range.start)
        return dg.Output(None)

    @dg.asset
    def plain() -> None:
        return None

    keys = parts.get_partition_keys()
    result = _run([ranged, plain], te.threaded_executor(2),
                  tags={"dagster/asset_partition_range_start": keys[0],
                        "dagster/asset_partition_range_end": keys[-1]})
    assert result.success
    partitions = {m.partition for m in result.asset_materializations_for_node("ranged")}
    assert partitions == set(keys) and seen == [keys[0]]
    assert [m.partition for m in result.asset_materializations_for_node("plain")] == [None]


@pytest.mark.parametrize("max_concurrent", [0, 1])
def test_one_thread_runs_steps_one_after_another(max_concurrent: int) -> None:
    log: list[tuple[str, str]] = []
    assert _run(_recording(["a", "b", "c"], log), te.threaded_executor(max_concurrent)).success
    assert [e for e, _ in log] == ["start", "end"] * 3


def test_ctrl_c_stops_the_running_steps_at_their_stop_points() -> None:
    """A Ctrl-C during the run: the two running steps stop at their next stop point (no exception
    is forced into a thread at an arbitrary instruction), the waiting step never starts, and the
    stop is lifted for the next run."""
    import os
    import signal

    from bronze_assets.lib.stop import stop_point

    log: list[tuple[str, str]] = []
    lock = threading.Lock()
    both = threading.Barrier(3)

    def make(name: str) -> dg.AssetsDefinition:
        @dg.asset(name=name)
        def _asset() -> None:
            with lock:
                log.append(("start", name))
            both.wait(BARRIER_SECONDS)
            deadline = time.monotonic() + BARRIER_SECONDS
            try:
                while time.monotonic() < deadline:
                    stop_point()
                    time.sleep(0.01)  # work outside a stop point: never interrupted here
            except KeyboardInterrupt as stop:
                where = traceback.extract_tb(stop.__traceback__)[-1].name
                with lock:
                    log.append(("stopped" if where == "stop_point" else f"interrupted in {where}", name))
                raise
            with lock:
                log.append(("end", name))
        return _asset

    def interrupt() -> None:
        both.wait(BARRIER_SECONDS)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt)
    sender.start()
    started = time.monotonic()
    with pytest.raises(BaseException) as raised:
        executor = te.threaded_executor(2, weight={"a": 1.0, "b": 1.0, "c": 0.0})  # c waits
        result = _run([make("a"), make("b"), make("c")], executor)
        assert not result.success
        raise KeyboardInterrupt  # Dagster reported the interrupted run instead of raising it
    sender.join()
    assert isinstance(raised.value, KeyboardInterrupt | dg.DagsterExecutionInterruptedError)
    assert time.monotonic() - started < BARRIER_SECONDS / 2
    started_steps = {n for kind, n in log if kind == "start"}
    assert started_steps == {"a", "b"} and {n for kind, n in log if kind == "stopped"} == {"a", "b"}
    assert not any(kind == "end" for kind, _ in log)
    stop_point()  # lifted: does not raise


def test_a_step_after_a_retried_parent_waits_for_its_retry() -> None:
    """A parent whose attempt failed and is retried (its RetryPolicy, as every bronze load has)
    has not ended: its child starts after the retry, not between the two attempts."""
    log: list[tuple[str, str]] = []
    attempts: list[int] = []

    @dg.asset(name="parent", retry_policy=dg.RetryPolicy(max_retries=1, delay=0.5))
    def parent() -> None:
        attempts.append(1)
        log.append(("start", "parent"))
        if len(attempts) == 1:
            raise RuntimeError("a transient failure")
        log.append(("end", "parent"))

    @dg.asset(name="child")
    def child() -> None:
        log.append(("start", "child"))

    result = _run([parent, child], te.threaded_executor(2, after={"child": frozenset({"parent"})}))
    assert result.success and len(attempts) == 2
    assert log == [("start", "parent"), ("start", "parent"), ("end", "parent"), ("start", "child")]


def test_ctrl_c_reaches_a_steps_pipes_subprocess(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A step waiting for a Pipes subprocess on a step thread (the spark engine's client,
    ``BronzePipes.subprocess_client``, here running a stand-in job): the run's interrupt is
    forwarded to the subprocess (SIGINT), as Dagster's Pipes client does when the step runs in a
    process's main thread, instead of the job running on after the run ended."""
    import os
    import signal
    import sys

    started, interrupted = tmp_path / "started", tmp_path / "interrupted"
    job = tmp_path / "job.py"
    job.write_text(
        "import os, pathlib, signal, sys, time\n"
        f"def on_int(*_):\n    pathlib.Path({str(interrupted)!r}).write_text('1'); sys.exit(130)\n"
        "signal.signal(signal.SIGINT, on_int)\n"
        f"pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(60)\n")

    @dg.asset(name="remote")
    def remote(context) -> None:  # type: ignore[no-untyped-def]
        BronzePipes().subprocess_client().run(command=[sys.executable, str(job)], context=context)

    def interrupt() -> None:
        deadline = time.monotonic() + BARRIER_SECONDS
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt)
    sender.start()
    try:
        with pytest.raises((KeyboardInterrupt, dg.DagsterExecutionInterruptedError)):
            result = _run([remote], te.threaded_executor(2))
            assert not result.success
            raise KeyboardInterrupt
        sender.join()
        deadline = time.monotonic() + 10
        while not interrupted.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert interrupted.exists(), "the Pipes subprocess was never interrupted"
    finally:
        if started.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(started.read_text()), signal.SIGKILL)


def test_an_error_ending_the_run_stops_its_other_running_steps_first() -> None:
    """An error the run raises (here a step's, with ``raise_on_error``; else one of Dagster's
    outside the step's own handling) ends the run only once its other running steps have ended:
    they stop at their next stop point, and none goes on writing after the run has returned."""
    from bronze_assets.lib.stop import stop_point

    log: list[str] = []
    slow_started = threading.Event()

    @dg.asset
    def slow() -> None:
        slow_started.set()
        deadline = time.monotonic() + BARRIER_SECONDS
        while time.monotonic() < deadline:
            stop_point()
            time.sleep(0.01)
        log.append("slow ended")

    @dg.asset
    def failing() -> None:
        slow_started.wait(BARRIER_SECONDS)
        raise RuntimeError("failing fails")

    started = time.monotonic()
    with pytest.raises(Exception, match="failing fails"):
        te.execute_in_process(_job([slow, failing]), te.threaded_executor(2),
                              instance=dg.DagsterInstance.ephemeral(), raise_on_error=True)
    assert not [t for t in threading.enumerate() if t.name == "step slow"]  # not left running
    assert time.monotonic() - started < BARRIER_SECONDS / 2 and log == []
    stop_point()  # the stop is lifted for the next run


def _run_on_threads(runs: list[list[dg.AssetsDefinition]], pool: te.StepPool, stagger: float = 0.3,
                    ) -> list[bool]:
    """Each of ``runs`` a run of its own on a thread (each with its own ephemeral instance), all on
    ``pool``, started ``stagger`` s apart; whether each succeeded."""
    for assets in runs:
        pool.plan(a.node_def.name for a in assets)
    results: list[bool] = [False] * len(runs)

    def execute(i: int) -> None:
        results[i] = _run(runs[i], te.threaded_executor(2, pool=pool)).success

    threads = [threading.Thread(target=execute, args=(i,)) for i in range(len(runs))]
    for thread in threads:
        thread.start()
        time.sleep(stagger)
    for thread in threads:
        thread.join()
    return results


def test_runs_sharing_a_pool_share_its_slots_and_wait_for_parents_in_other_runs() -> None:
    """Two runs at once on one pool of one slot: one step at a time in all, the heaviest first once
    both runs are in, and a child after its parent, which the other run (started later) loads."""
    log: list[tuple[str, str]] = []
    pool = te.StepPool(1, after={"child": frozenset({"parent"})},
                       weight={"child": 9.0, "heavy": 5.0, "parent": 1.0, "light": 0.0})
    first = _recording(["child", "light"], log)
    second = _recording(["parent", "heavy"], log)
    assert _run_on_threads([first, second], pool) == [True, True]
    assert [e for e, _ in log] == ["start", "end"] * 4  # one at a time across the runs
    starts = [n for e, n in log if e == "start"]
    assert starts[0] == "heavy"  # not `light`, though its run was in first
    assert starts.index("parent") < starts.index("child")



def test_a_run_raising_an_error_stops_the_pools_other_runs_and_its_step_left_behind_holds_its_place(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that raises an error (here a step's, with ``raise_on_error``) stops the other runs of
    its pool: none starts a further step (here a child in another run, waiting for its parent), and
    they end without waiting for the step the failing run left behind (it reached no stop point
    within the grace: a long MERGE). That step holds its place in the pool until it does end (its
    own thread ends it there): the child counts as ready only then. Before, the other runs went on
    starting steps while the failing run's stop request stopped each at its first stop point."""
    from bronze_assets.lib.stop import clear_stop

    monkeypatch.setattr(te, "STOP_GRACE_SECONDS", 0.5)
    log: list[str] = []
    busy_started, released = threading.Event(), threading.Event()

    @dg.asset
    def busy() -> None:
        busy_started.set()
        released.wait(BARRIER_SECONDS)  # no stop point; ends once the runs have (not by the clock)
        log.append("busy ended")

    @dg.asset
    def failing() -> None:
        busy_started.wait(BARRIER_SECONDS)
        raise RuntimeError("failing fails")

    @dg.asset
    def child() -> None:
        log.append("child")

    pool = te.StepPool(2, after={"child": frozenset({"busy"})})
    pool.plan(["busy", "failing"])
    pool.plan(["child"])
    outcome: dict[str, object] = {}

    def first() -> None:
        try:
            te.execute_in_process(_job([busy, failing]), te.threaded_executor(2, pool=pool),
                                  instance=dg.DagsterInstance.ephemeral(), raise_on_error=True)
        except Exception as error:
            outcome["first"] = error

    def second() -> None:
        try:
            outcome["second"] = _run([child], te.threaded_executor(2, pool=pool)).success
        except KeyboardInterrupt:
            outcome["second"] = "stopped"

    threads = [threading.Thread(target=first, daemon=True), threading.Thread(target=second, daemon=True)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BARRIER_SECONDS)
        assert not any(t.is_alive() for t in threads)
        assert "failing fails" in str(outcome["first"]) and outcome["second"] in (False, "stopped")
        assert "failing fails" in str(pool.failure) and log == [] and not pool.ready("child")
        busy_thread = next(t for t in threading.enumerate() if t.name == "step busy")
        released.set()
        busy_thread.join(BARRIER_SECONDS)
        assert log == ["busy ended"] and pool.ready("child")  # ended in the pool; the child never ran
    finally:
        released.set()
        clear_stop()


def test_an_error_in_the_runs_own_thread_stops_its_running_steps_before_it_is_raised(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An error raised in the run's own thread (here by a step's hooks, once that step ended; else
    Dagster's bookkeeping of an event) while another step runs: that step stops at its next stop
    point and has ended when the run raises, and the other runs of its pool are stopped
    (``pool.failure``). Before, the run raised at once, the step still running on its thread."""
    from bronze_assets.lib.stop import clear_stop, stop_point

    log: list[str] = []
    slow_started = threading.Event()

    @dg.asset
    def slow() -> None:
        slow_started.set()
        deadline = time.monotonic() + BARRIER_SECONDS
        try:
            while time.monotonic() < deadline:
                stop_point()
                time.sleep(0.01)
        finally:
            log.append("slow ended")

    @dg.asset
    def quick() -> None:
        slow_started.wait(BARRIER_SECONDS)

    hooks = te._trigger_hook

    def failing_hook(step_context, events):  # type: ignore[no-untyped-def]
        if step_context.step.key == "quick":
            raise RuntimeError("the hooks of quick fail")
        return hooks(step_context, events)

    monkeypatch.setattr(te, "_trigger_hook", failing_hook)
    pool = te.StepPool(2)
    try:
        with pytest.raises(Exception, match="the hooks of quick fail"):
            te.execute_in_process(_job([slow, quick]), te.threaded_executor(2, pool=pool),
                                  instance=dg.DagsterInstance.ephemeral(), raise_on_error=True)
        assert log == ["slow ended"]  # not left running
        assert not [t for t in threading.enumerate() if t.name == "step slow"]
        assert "the hooks of quick fail" in str(pool.failure)
    finally:
        clear_stop()
