"""The multiprocess executor with real worker processes: reuse, limits, deaths, cancellation.

Jobs come from ``tests.jobs.multiprocess_jobs``; steps that tests steer write their pid
to ``<pid_dir>/<step_key>.<attempt>`` (run tag ``pid_dir``), and tests wait for those
files with a deadline. Concurrency is measured from the STEP_START and STEP_SUCCESS (or
STEP_FAILURE) timestamps the workers report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from coreexec import Event, EventKind, Instance, RunStatus, execute_job
from coreexec.errors import BrokerConnectionError
from coreexec.execution.run_context import RunContext
from coreexec.result import ExecutionResult
from tests.support.ports import free_port
from tests.support.waiting import wait_until

JOBS = "tests.jobs.multiprocess_jobs"
DEADLINE_S = 30.0


# -- helpers ---------------------------------------------------------------------------


def mp_config(**config: Any) -> dict[str, Any]:
    return {"execution": {"config": {"multiprocess": config}}}


@pytest.fixture
def instance(tmp_path: Path) -> Instance:
    return Instance.at(tmp_path / "home")


@pytest.fixture
def pid_dir(tmp_path: Path) -> Path:
    path = tmp_path / "pids"
    path.mkdir()
    return path


def read_pid(path: Path) -> int:
    wait_until(path.exists, f"pid file {path}", DEADLINE_S)
    return int(path.read_text())


def is_gone(pid: int) -> bool:
    """True when ``pid`` no longer exists (or is a zombie nobody will run again)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] == "Z"


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def step_intervals(events: list[Event]) -> dict[str, tuple[float, float]]:
    """(start, end) of every attempt, by attempt id."""
    starts: dict[str, float] = {}
    spans: dict[str, tuple[float, float]] = {}
    keys: dict[str, str] = {}
    for event in events:
        if event.attempt_id is None or event.step_key is None:
            continue
        if event.kind is EventKind.STEP_START:
            starts[event.attempt_id] = event.timestamp
            keys[event.attempt_id] = event.step_key
        elif (
            event.kind in (EventKind.STEP_SUCCESS, EventKind.STEP_FAILURE)
            and event.attempt_id in starts
        ):
            key = f"{keys[event.attempt_id]}#{event.attempt_id}"
            spans[key] = (starts[event.attempt_id], event.timestamp)
    return spans


def max_overlap(spans: Mapping[str, tuple[float, float]], prefix: str = "") -> int:
    """The most attempts (whose step key starts with ``prefix``) running at one instant."""
    points: list[tuple[float, int]] = []
    for key, (start, end) in spans.items():
        if key.startswith(prefix):
            points.append((start, 1))
            points.append((end, -1))
    points.sort(key=lambda p: (p[0], p[1]))  # an end before a start at the same instant
    running = best = 0
    for _, delta in points:
        running += delta
        best = max(best, running)
    return best


class BackgroundRun:
    """``execute_job`` on a thread, its RunContext available once the run starts."""

    def __init__(self, reference: str, run_config: dict[str, Any], **kwargs: Any) -> None:
        self.context: RunContext | None = None
        self.result: ExecutionResult | None = None
        self.error: BaseException | None = None
        self._started = threading.Event()

        def hook(context: RunContext) -> None:
            self.context = context
            self._started.set()

        def target() -> None:
            try:
                self.result = execute_job(reference, run_config, run_context_hook=hook, **kwargs)
            except BaseException as exc:
                self.error = exc
            finally:
                self._started.set()

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def started(self) -> RunContext:
        assert self._started.wait(DEADLINE_S), "the run did not start"
        assert self.context is not None, f"the run failed to start: {self.error!r}"
        return self.context

    def finish(self, timeout_s: float = DEADLINE_S) -> ExecutionResult:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"the run did not end within {timeout_s}s"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def kinds(result: ExecutionResult, step_key: str) -> list[EventKind]:
    return [e.kind for e in result.events if e.step_key == step_key]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def worker_processes() -> set[int]:
    """Live worker processes of this test process: the fork server's children (forkserver)
    and this process's ``spawn_main`` children (spawn), with anything they started."""
    found: set[int] = set()
    for pid in children_of(os.getpid()):
        text = cmdline(pid)
        if "multiprocessing.forkserver" in text:
            found |= descendants(pid)
        elif "spawn_main" in text:
            found |= {pid} | descendants(pid)
    return found


@pytest.fixture
def no_leftover_workers() -> Iterator[None]:
    """Fails the test if a worker process outlives its run (the fork server may stay)."""
    assert worker_processes() == set(), "a worker process was running before the test"
    yield
    assert worker_processes() == set(), "worker processes were left behind"


pytestmark = pytest.mark.usefixtures("no_leftover_workers")


# -- the pool ----------------------------------------------------------------------------


def test_steps_run_in_reused_worker_processes(instance: Instance) -> None:
    result = execute_job(
        f"{JOBS}:naps", mp_config(max_concurrent=2), instance=instance, tags={"sleep_s": "0.05"}
    )
    assert result.success
    pids = {result.output_for(f"nap_{i}") for i in range(6)}
    # Six steps, two workers: every pid ran several steps and none is this process.
    assert len(pids) <= 2
    assert os.getpid() not in pids
    assert all(is_gone(pid) for pid in pids)


def test_outputs_flow_through_files_between_workers(instance: Instance) -> None:
    result = execute_job(f"{JOBS}:fanout", instance=instance)
    assert result.success
    assert result.output_for("gather") == 16
    stored = instance.storage_dir / result.run_id / "gather" / "result"
    assert stored.is_file()


def test_in_process_tag_runs_the_step_in_the_coordinator(instance: Instance) -> None:
    result = execute_job(f"{JOBS}:pids", instance=instance)
    assert result.success
    assert result.output_for("where_here") == os.getpid()
    assert result.output_for("where") != os.getpid()


def test_default_executor_is_multiprocess_and_in_process_can_be_chosen(
    instance: Instance,
) -> None:
    default = execute_job(f"{JOBS}:unpinned", instance=instance)
    assert default.output_for("where") != os.getpid()
    chosen = execute_job(
        f"{JOBS}:unpinned", {"execution": {"config": {"in_process": {}}}}, instance=instance
    )
    assert chosen.output_for("where") == os.getpid()
    starting = [e.message for e in chosen.events if e.kind is EventKind.RUN_STARTING]
    assert starting == ["executor multi_or_in_process"]


def test_definitions_executor_applies_unless_the_job_names_one(instance: Instance) -> None:
    pinned = execute_job(f"{JOBS}:defs_multiprocess.pinned_in_process", instance=instance)
    assert pinned.output_for("where") == os.getpid()
    via_defs = execute_job(f"{JOBS}:defs_multiprocess.unpinned", instance=instance)
    assert via_defs.output_for("where") != os.getpid()
    assert [e.message for e in via_defs.events if e.kind is EventKind.RUN_STARTING] == [
        "executor multiprocess"
    ]


def test_events_stream_back_while_the_step_runs(instance: Instance, pid_dir: Path) -> None:
    seen: list[Event] = []
    started = threading.Event()

    def listen(event: Event) -> None:
        seen.append(event)
        if event.kind is EventKind.STEP_START and event.step_key == "block_0":
            started.set()

    run = BackgroundRun(
        f"{JOBS}:blockers",
        mp_config(max_concurrent=3),
        instance=instance,
        tags={"pid_dir": str(pid_dir)},
        listeners=[listen],
    )
    context = run.started()
    # STEP_START of a step that has not ended reached the listener: events stream.
    assert started.wait(DEADLINE_S)
    assert not any(e.kind is EventKind.STEP_SUCCESS and e.step_key == "block_0" for e in seen)
    context.cancel_requested.set()
    assert run.finish().status is RunStatus.CANCELED


# -- limits ------------------------------------------------------------------------------


def test_max_concurrent_is_respected(instance: Instance) -> None:
    result = execute_job(
        f"{JOBS}:naps", mp_config(max_concurrent=2), instance=instance, tags={"sleep_s": "0.3"}
    )
    assert result.success
    assert max_overlap(step_intervals(result.events)) == 2


def test_tag_limit_with_a_value(instance: Instance) -> None:
    limits = [{"key": "database", "value": "warehouse", "limit": 1}]
    result = execute_job(
        f"{JOBS}:tagged_naps",
        mp_config(max_concurrent=4, tag_concurrency_limits=limits),
        instance=instance,
        tags={"sleep_s": "0.2"},
    )
    assert result.success
    spans = step_intervals(result.events)
    assert max_overlap(spans, "warehouse_") == 1
    assert max_overlap(spans) >= 2  # untagged steps ran beside the limited ones
    waits = [e for e in result.events if e.kind is EventKind.SLOT_WAIT]
    assert waits and "database=warehouse limit 1" in waits[0].message


def test_tag_limit_per_unique_value(instance: Instance) -> None:
    limits = [{"key": "team", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
    result = execute_job(
        f"{JOBS}:team_naps",
        mp_config(max_concurrent=4, tag_concurrency_limits=limits),
        instance=instance,
        tags={"sleep_s": "0.2"},
    )
    assert result.success
    spans = step_intervals(result.events)
    assert max_overlap(spans, "team_a_") == 1
    assert max_overlap(spans, "team_b_") == 1
    assert max_overlap(spans) == 2  # one of each team at a time


def test_tag_limit_without_a_value_shares_one_limit(instance: Instance) -> None:
    result = execute_job(
        f"{JOBS}:gpu_naps",
        mp_config(max_concurrent=3, tag_concurrency_limits=[{"key": "gpu", "limit": 1}]),
        instance=instance,
        tags={"sleep_s": "0.1"},
    )
    assert result.success
    assert max_overlap(step_intervals(result.events)) == 1


def test_redis_tag_limit_holds_across_runs(instance: Instance, redis_url: str) -> None:
    config = mp_config(
        max_concurrent=4,
        tag_concurrency_limits=[{"key": "database", "value": "warehouse", "limit": 1}],
        redis_url=redis_url,
    )
    runs = [
        BackgroundRun(f"{JOBS}:tagged_naps", config, instance=instance, tags={"sleep_s": "0.15"})
        for _ in range(2)
    ]
    results = [run.finish() for run in runs]
    assert all(result.success for result in results)
    spans: dict[str, tuple[float, float]] = {}
    for result in results:
        spans.update(step_intervals(result.events))
    assert max_overlap(spans, "warehouse_") == 1
    other_run = {results[0].run_id[:8], results[1].run_id[:8]}
    waits = [e for r in results for e in r.events if e.kind is EventKind.SLOT_WAIT]
    assert any(any(run in e.message for run in other_run) for e in waits)


def test_limits_stored_for_everyone_hold_without_configured_rules(
    instance: Instance, redis_url: str
) -> None:
    from coreexec.limits import GlobalRules, TagConcurrencyLimit

    stored = GlobalRules.from_url(redis_url)
    stored.set_limit(TagConcurrencyLimit(key="database", value="warehouse", limit=1))
    stored.close()
    result = execute_job(
        f"{JOBS}:tagged_naps",
        mp_config(max_concurrent=4, redis_url=redis_url),
        instance=instance,
        tags={"sleep_s": "0.15"},
    )
    assert result.success
    spans = step_intervals(result.events)
    assert max_overlap(spans, "warehouse_") == 1
    assert any(e.kind is EventKind.SLOT_WAIT for e in result.events)


# -- worker deaths -------------------------------------------------------------------------


def test_step_killed_mid_run_is_retried_and_the_run_succeeds(
    instance: Instance, pid_dir: Path
) -> None:
    run = BackgroundRun(
        f"{JOBS}:killed_then_retried",
        mp_config(max_concurrent=2),
        instance=instance,
        tags={"pid_dir": str(pid_dir)},
    )
    victim = read_pid(pid_dir / "dies_first_time.1")
    os.kill(victim, signal.SIGKILL)
    result = run.finish()
    assert result.success, [e.message for e in result.events if e.kind is EventKind.STEP_FAILURE]
    assert result.output_for("dies_first_time") == 10
    failure = next(e for e in result.events if e.kind is EventKind.STEP_FAILURE)
    assert failure.data["failure_class"] == "infrastructure"
    assert f"worker process {victim}" in failure.message and "SIGKILL" in failure.message
    assert kinds(result, "dies_first_time").count(EventKind.STEP_START) == 2
    retried_in = read_pid(pid_dir / "dies_first_time.2")
    assert retried_in != victim


def test_segfault_is_an_infrastructure_failure_and_is_retried(instance: Instance) -> None:
    result = execute_job(f"{JOBS}:segfault_then_retried", instance=instance)
    assert result.success
    failure = next(e for e in result.events if e.kind is EventKind.STEP_FAILURE)
    assert failure.data["failure_class"] == "infrastructure"
    assert "SIGSEGV" in failure.message


def test_worker_death_without_retries_fails_only_that_step(instance: Instance) -> None:
    result = execute_job(f"{JOBS}:always_killed", mp_config(max_concurrent=2), instance=instance)
    assert result.status is RunStatus.FAILURE
    assert result.failed_steps == ["dies_always"]
    assert result.output_for("one") == 1


# -- cancellation --------------------------------------------------------------------------


def _blocked_run(instance: Instance, pid_dir: Path) -> tuple[BackgroundRun, list[int]]:
    run = BackgroundRun(
        f"{JOBS}:blockers",
        mp_config(max_concurrent=3),
        instance=instance,
        tags={"pid_dir": str(pid_dir)},
    )
    pids = [read_pid(pid_dir / f"block_{i}.1") for i in range(3)]
    assert set(pids) <= worker_processes()  # the leftover check sees running workers
    return run, pids


def _assert_canceled(result: ExecutionResult, pids: list[int]) -> None:
    assert result.status is RunStatus.CANCELED
    assert all(is_gone(pid) for pid in pids), [p for p in pids if not is_gone(p)]
    for i in range(3):
        assert kinds(result, f"later_{i}") == [EventKind.STEP_SKIPPED]
        failure = next(
            e
            for e in result.events
            if e.step_key == f"block_{i}" and e.kind is EventKind.STEP_FAILURE
        )
        assert failure.data["failure_class"] == "cancelled"


def test_cancel_from_another_thread_stops_steps_and_leaves_no_process(
    instance: Instance, pid_dir: Path
) -> None:
    run, pids = _blocked_run(instance, pid_dir)
    run.started().cancel_requested.set()
    _assert_canceled(run.finish(timeout_s=10), pids)


def test_cancel_from_another_process_stops_steps_and_leaves_no_process(
    instance: Instance, pid_dir: Path
) -> None:
    run, pids = _blocked_run(instance, pid_dir)
    run_id = run.started().run_id
    code = (
        "import sys\n"
        "from coreexec import Instance, RunStatus\n"
        "Instance.at(sys.argv[1]).storage.set_status(sys.argv[2], RunStatus.CANCELING)\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(instance.home), run_id], check=True, timeout=DEADLINE_S
    )
    _assert_canceled(run.finish(timeout_s=10), pids)


def test_coordinator_error_mid_run_leaves_no_process(instance: Instance, pid_dir: Path) -> None:
    def explode(event: Event) -> None:
        if event.kind is EventKind.STEP_START and event.step_key == "block_2":
            raise RuntimeError("listener failed")

    with pytest.raises(RuntimeError, match="listener failed"):
        execute_job(
            f"{JOBS}:blockers",
            mp_config(max_concurrent=3),
            instance=instance,
            tags={"pid_dir": str(pid_dir)},
            listeners=[explode],
        )
    pids = [int(path.read_text()) for path in pid_dir.glob("block_*.1")]
    assert pids and all(is_gone(pid) for pid in pids)


def test_workers_that_cannot_load_the_job_fail_the_steps_clearly(instance: Instance) -> None:
    result = execute_job(
        "tests.jobs.child_import_fails:job_of_a_module_children_cannot_import",
        mp_config(max_concurrent=1, start_method={"spawn": {}}),
        instance=instance,
    )
    assert result.status is RunStatus.FAILURE
    failure = next(e for e in result.events if e.kind is EventKind.STEP_FAILURE)
    assert failure.data["failure_class"] == "infrastructure"
    assert "worker processes cannot start" in failure.message
    assert "imported in a worker process on purpose" in failure.message


def test_unreachable_limiter_redis_fails_the_run_and_leaves_no_process(
    instance: Instance,
) -> None:
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    config = mp_config(tag_concurrency_limits=[{"key": "database", "limit": 1}], redis_url=dead_url)
    with pytest.raises(BrokerConnectionError, match="cannot reach Redis"):
        execute_job(f"{JOBS}:tagged_naps", config, instance=instance)


def test_a_script_without_a_main_guard_runs_once(tmp_path: Path) -> None:
    # Workers do not import the coordinator's main module, so a script that starts a run
    # at import time is not run again in every worker.
    script = tmp_path / "script.py"
    script.write_text(
        "import os, sys\n"
        "from coreexec import Instance, execute_job\n"
        "with open(sys.argv[1], 'a') as log:\n"
        "    log.write(f'{os.getpid()}\\n')\n"
        "result = execute_job(\n"
        f"    '{JOBS}:naps', {mp_config(max_concurrent=3)!r},\n"
        "    instance=Instance.at(sys.argv[2]), tags={'sleep_s': '0'},\n"
        ")\n"
        "print(result.status.value)\n"
    )
    log = tmp_path / "imports.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, str(script), str(log), str(tmp_path / "home")],
        capture_output=True,
        text=True,
        env=env,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SUCCESS"
    assert len(log.read_text().split()) == 1
