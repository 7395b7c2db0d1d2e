"""Cancel and resume with real Celery workers.

The job ``gated_chain`` is first → gated → last on the Celery executor; ``gated`` runs
until the test creates its gate file, writes its pid while it runs, and every step
appends a line per execution to its mark file, so the tests count executions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from celery_app.queues import RUNS_QUEUE, STEP_QUEUES
from celery_app.run_launcher import CeleryRunLauncher
from coreexec import RunHandle, RunStatus, submit_job
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.io_managers import OutputKey
from coreexec.redis_clients import redis_client
from coreexec.transport import keys
from coreexec.transport.coordinator_heartbeat import (
    CoordinatorInfo,
    CoordinatorState,
    coordinator_status,
)
from coreexec.transport.redis_events import RedisEventStream
from tests.jobs.submission_jobs import gate_path, pid_path, runs_of, wait_until
from tests.support.processes import REPO_ROOT, CeleryWorkerProcess, child_env, pid_alive

GATED = "tests.jobs.submission_jobs:gated_chain"
WorkerFactory = Callable[..., CeleryWorkerProcess]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coreexec", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
        timeout=180,
        check=False,
    )


def _open_gate() -> None:
    gate = gate_path("gated")
    gate.parent.mkdir(parents=True, exist_ok=True)
    gate.touch()


def _gated_pid() -> int:
    """The pid of the process running step ``gated``, once it runs."""
    wait_until(lambda: pid_path("gated").exists(), 60, "step gated to start")
    return int(pid_path("gated").read_text())


def _live_coordinator(redis_url: str, run_id: str) -> CoordinatorInfo:
    with redis_client(redis_url) as client:
        raw = client.get(keys.run_coordinator(run_id))
    assert raw is not None, "no live coordinator heartbeat"
    info = CoordinatorInfo.from_json(raw)
    assert info is not None
    return info


def _kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, f"pid {pid} to die")


def _active_tasks(worker: CeleryWorkerProcess) -> list[object]:
    """What ``celery inspect active`` says the worker is running now."""
    argv = [sys.executable, "-m", "celery", "-A", "celery_app", "inspect", "active"]
    argv += ["-d", worker.nodename, "-t", "5", "--json"]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    )
    replies = json.loads(done.stdout)
    active: list[object] = replies[worker.nodename]
    return active


def _stream_has_success(redis_url: str, run_id: str, step_key: str) -> bool:
    with redis_client(redis_url) as client:
        entries = RedisEventStream(client, run_id).history()
    return any(
        entry.event is not None
        and entry.event.kind is EventKind.STEP_SUCCESS
        and entry.event.step_key == step_key
        for entry in entries
    )


def _assert_completed_once(handle: RunHandle) -> None:
    assert handle.status() is RunStatus.SUCCESS
    assert [runs_of(key) for key in ("first", "gated", "last")] == [1, 1, 1]
    output = Instance.from_env().io_manager().load(OutputKey(handle.run_id, "last", "result"))
    assert output == (1 + 100) * 2
    successes = [e.step_key for e in handle.events() if e.kind is EventKind.STEP_SUCCESS]
    assert sorted(successes) == ["first", "gated", "last"]


# -- cancel -------------------------------------------------------------------------------


def test_cancel_during_a_run_leaves_no_step_running(
    env: Path, launcher: CeleryRunLauncher, celery_worker_factory: WorkerFactory
) -> None:
    celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord")
    steps = celery_worker_factory(queues=list(STEP_QUEUES), concurrency=2, hostname="steps")
    handle = submit_job(GATED, launcher=launcher)
    step_pid = _gated_pid()
    assert step_pid in steps.group_pids()

    started = time.monotonic()
    outcome = handle.cancel()
    assert outcome.after is RunStatus.CANCELING and outcome.woke_coordinator
    assert handle.wait(timeout=30) is RunStatus.CANCELED
    took_s = time.monotonic() - started

    wait_until(lambda: not pid_alive(step_pid), 10, f"step process {step_pid} to stop")
    assert _active_tasks(steps) == []
    assert not pid_path("gated").exists()
    assert not gate_path("gated").exists()  # it stopped without ever being let through
    assert [runs_of(key) for key in ("first", "gated", "last")] == [1, 1, 0]
    events = handle.events()
    failure = next(e for e in events if e.kind is EventKind.STEP_FAILURE)
    assert failure.step_key == "gated" and failure.data["failure_class"] == "cancelled"
    skipped = [e.step_key for e in events if e.kind is EventKind.STEP_SKIPPED]
    assert skipped == ["last"]
    kinds = [e.kind for e in events]
    assert kinds.index(EventKind.RUN_CANCELING) < kinds.index(EventKind.RUN_CANCELED)
    assert took_s < 10, f"cancel took {took_s:.1f}s"


def test_cli_cancel_waits_for_the_run_to_stop(
    env: Path, launcher: CeleryRunLauncher, celery_worker_factory: WorkerFactory
) -> None:
    celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord")
    celery_worker_factory(queues=list(STEP_QUEUES), concurrency=2, hostname="steps")
    handle = submit_job(GATED, launcher=launcher)
    step_pid = _gated_pid()
    result = _cli("runs", "cancel", handle.run_id, "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "its coordinator was woken" in result.stdout
    assert result.stdout.rstrip().endswith(f"run {handle.run_id}: CANCELED")
    wait_until(lambda: not pid_alive(step_pid), 10, f"step process {step_pid} to stop")
    watched = _cli("runs", "watch", handle.run_id)
    assert watched.returncode == 130


# -- resume after the coordinator died ------------------------------------------------------


def test_resume_after_the_coordinator_is_killed_does_not_rerun_succeeded_steps(
    env: Path,
    redis_url: str,
    launcher: CeleryRunLauncher,
    celery_worker_factory: WorkerFactory,
) -> None:
    coordinator = celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord")
    celery_worker_factory(queues=list(STEP_QUEUES), concurrency=2, hostname="steps")
    handle = submit_job(GATED, launcher=launcher)
    _gated_pid()
    info = _live_coordinator(redis_url, handle.run_id)
    assert info.pid in coordinator.group_pids()

    refused = _cli("runs", "resume", handle.run_id)
    assert refused.returncode == 1
    assert "is alive" in refused.stderr

    # The whole coordinator worker dies (its main process first, so nothing redelivers).
    coordinator.kill9()
    _kill9(info.pid)
    with redis_client(redis_url) as client:
        assert coordinator_status(client, handle.run_id).state is CoordinatorState.DEAD
    # The step finishes while no coordinator listens: only the stream knows.
    _open_gate()
    wait_until(
        lambda: _stream_has_success(redis_url, handle.run_id, "gated"), 30, "gated to succeed"
    )
    assert handle.status() is RunStatus.STARTED
    assert EventKind.STEP_SUCCESS not in [e.kind for e in handle.events() if e.step_key == "gated"]
    watched = _cli("runs", "watch", handle.run_id)
    assert watched.returncode == 1
    assert "its coordinator died (no heartbeat) while the run was STARTED" in watched.stderr
    assert f"coreexec runs resume {handle.run_id}" in watched.stderr

    resumed = _cli("runs", "resume", handle.run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "step events that arrived meanwhile" in resumed.stdout
    assert resumed.stdout.rstrip().endswith(f"run {handle.run_id} resumed: SUCCESS")
    _assert_completed_once(handle)
    starts = [e for e in handle.events() if e.kind is EventKind.RUN_START]
    assert [e.data["resumed"] for e in starts] == [False, True]


def test_submitted_resume_waits_for_a_step_still_running(
    env: Path,
    redis_url: str,
    launcher: CeleryRunLauncher,
    celery_worker_factory: WorkerFactory,
) -> None:
    coordinator = celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord")
    celery_worker_factory(queues=list(STEP_QUEUES), concurrency=2, hostname="steps")
    handle = submit_job(GATED, launcher=launcher)
    step_pid = _gated_pid()
    info = _live_coordinator(redis_url, handle.run_id)
    coordinator.kill9()
    _kill9(info.pid)

    celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord2")
    resume = subprocess.Popen(
        [sys.executable, "-m", "coreexec", "runs", "resume", handle.run_id, "--submit", "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
    )
    try:
        # The new coordinator waits for the attempt a worker still runs.
        wait_until(lambda: _coordinator_alive(redis_url, handle.run_id), 60, "the new coordinator")
        assert pid_alive(step_pid) and runs_of("gated") == 1
        _open_gate()
        stdout, stderr = resume.communicate(timeout=120)
    finally:
        if resume.poll() is None:
            resume.kill()
            resume.wait()
    assert resume.returncode == 0, stdout + stderr
    assert "handed to the 'celery' run launcher" in stdout
    _assert_completed_once(handle)


def _coordinator_alive(redis_url: str, run_id: str) -> bool:
    with redis_client(redis_url) as client:
        return coordinator_status(client, run_id).state is CoordinatorState.ALIVE


def test_a_coordinator_process_killed_mid_run_is_resumed_by_its_redelivered_task(
    env: Path,
    redis_url: str,
    launcher: CeleryRunLauncher,
    celery_worker_factory: WorkerFactory,
) -> None:
    coordinator = celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord")
    celery_worker_factory(queues=list(STEP_QUEUES), concurrency=2, hostname="steps")
    handle = submit_job(GATED, launcher=launcher)
    _gated_pid()
    info = _live_coordinator(redis_url, handle.run_id)

    _kill9(info.pid)  # only the pool process: the worker requeues the task (acks_late)
    wait_until(
        lambda: _live_coordinator_pid(redis_url, handle.run_id) not in (None, info.pid),
        60,
        "another pool process to take the run over",
    )
    _open_gate()
    assert handle.wait(timeout=60) is RunStatus.SUCCESS
    _assert_completed_once(handle)
    starts = [e for e in handle.events() if e.kind is EventKind.RUN_START]
    assert [e.data["resumed"] for e in starts] == [False, True]
    assert coordinator.is_running()


def _live_coordinator_pid(redis_url: str, run_id: str) -> int | None:
    with redis_client(redis_url) as client:
        raw = client.get(keys.run_coordinator(run_id))
    info = CoordinatorInfo.from_json(raw) if raw is not None else None
    return info.pid if info is not None else None


def _stream_failure(redis_url: str, run_id: str, step_key: str) -> Event | None:
    with redis_client(redis_url) as client:
        entries = RedisEventStream(client, run_id).history()
    for entry in entries:
        event = entry.event
        if event is None or event.kind is not EventKind.STEP_FAILURE:
            continue
        if event.step_key == step_key:
            return event
    return None


def test_cancel_of_a_run_whose_coordinator_died_stops_its_step_then_resume(
    env: Path,
    redis_url: str,
    launcher: CeleryRunLauncher,
    celery_worker_factory: WorkerFactory,
) -> None:
    coordinator = celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord")
    steps = celery_worker_factory(queues=list(STEP_QUEUES), concurrency=2, hostname="steps")
    handle = submit_job(GATED, launcher=launcher)
    step_pid = _gated_pid()
    info = _live_coordinator(redis_url, handle.run_id)
    coordinator.kill9()
    _kill9(info.pid)

    canceled = _cli("runs", "cancel", handle.run_id)
    assert canceled.returncode == 0, canceled.stdout + canceled.stderr
    assert "has no live coordinator (its heartbeat stopped), so it was marked CANCELED" in (
        canceled.stdout
    )
    assert "steps a worker had taken (gated) were told to stop" in canceled.stdout
    assert handle.status() is RunStatus.CANCELED

    # Nobody coordinates the run, yet its running step stops without its gate opening.
    wait_until(lambda: not pid_alive(step_pid), 15, f"step process {step_pid} to stop")
    assert _active_tasks(steps) == []
    assert not gate_path("gated").exists()
    wait_until(
        lambda: _stream_failure(redis_url, handle.run_id, "gated") is not None,
        15,
        "the terminated attempt to report its end",
    )
    failure = _stream_failure(redis_url, handle.run_id, "gated")
    assert failure is not None and failure.data["failure_class"] == "cancelled"
    assert not _stream_has_success(redis_url, handle.run_id, "gated")

    _open_gate()
    resumed = _cli("runs", "resume", handle.run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert handle.status() is RunStatus.SUCCESS
    # The terminated attempt ran once, the resumed one once more; the rest once.
    assert [runs_of(key) for key in ("first", "gated", "last")] == [1, 2, 1]
    successes = [e.step_key for e in handle.events() if e.kind is EventKind.STEP_SUCCESS]
    assert sorted(successes) == ["first", "gated", "last"]
