"""Runs whose coordinator died, with real workers: shown as lost by ``runs ls`` and
``runs show`` at once, then reaped by a worker after the grace period: a ``coreexec run``
is marked FAILURE with the reason (its steps end with it, its keys get a TTL); a run a
Celery coordinator task started is resumed through Celery and succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_app.queues import LOW_QUEUE, RUNS_QUEUE, STEP_QUEUES
from celery_app.run_launcher import CeleryRunLauncher
from coreexec import RunStatus, submit_job
from coreexec.events import EventKind
from coreexec.instance import Instance
from coreexec.redis_clients import redis_client
from coreexec.transport import keys
from tests.jobs.submission_jobs import gate_path, pid_path, runs_of, wait_until
from tests.support.processes import REPO_ROOT, CeleryWorkerProcess, child_env

GATED = "tests.jobs.submission_jobs:gated_chain"
WorkerFactory = Callable[..., CeleryWorkerProcess]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coreexec", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


def _open_gate() -> None:
    gate_path("gated").parent.mkdir(parents=True, exist_ok=True)
    gate_path("gated").touch()


def _only_run(instance: Instance) -> str:
    runs = instance.storage.list_runs()
    assert len(runs) == 1
    return runs[0].run_id


def test_a_killed_coreexec_run_is_shown_lost_then_reaped_as_failed(
    env: Path, redis_url: str, celery_worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    celery_worker_factory(
        queues=list(STEP_QUEUES), concurrency=2, env={"COREEXEC_ORPHAN_GRACE_S": "0"}
    )
    with (tmp_path / "run.log").open("wb") as log:
        terminal = subprocess.Popen(
            [sys.executable, "-m", "coreexec", "run", GATED],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=REPO_ROOT,
        )
    try:
        wait_until(pid_path("gated").exists, 60, "step gated to start")
    finally:
        terminal.send_signal(signal.SIGKILL)
        terminal.wait()
    instance = Instance.from_env()
    run_id = _only_run(instance)

    listed, shown = _cli("runs", "ls"), _cli("runs", "show", run_id)
    lost = "coordinator lost"
    assert lost in listed.stdout and f"coreexec runs resume {run_id}" in listed.stdout, listed
    assert lost in shown.stdout, shown

    celery_worker_factory(queues=[LOW_QUEUE], concurrency=1, env={"COREEXEC_ORPHAN_GRACE_S": "1"})
    wait_until(lambda: instance.storage.get_run(run_id).status is RunStatus.FAILURE, 60, "reap")
    failure = [e for _, e in instance.storage.events(run_id) if e.kind is EventKind.RUN_FAILURE]
    assert "coordinator lost" in failure[-1].message
    with redis_client(redis_url) as client:
        for key in (keys.run_events(run_id), keys.run_settings(run_id), keys.run_issued(run_id)):
            assert 0 < int(client.ttl(key)) <= keys.FINISHED_RUN_TTL_S, key
    shown = _cli("runs", "show", run_id)
    assert "coordinator lost" not in _cli("runs", "ls").stdout
    rows = {line.split()[0]: line for line in shown.stdout.splitlines() if line.strip()}
    assert "failed" in rows["gated"] and "infrastructure" in rows["gated"], shown.stdout
    _open_gate()


def test_a_run_whose_coordinator_worker_was_killed_is_resumed_through_celery(
    env: Path,
    launcher: CeleryRunLauncher,
    celery_worker_factory: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COREEXEC_ORPHAN_GRACE_S", "1")
    coordinator = celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord")
    celery_worker_factory(queues=list(STEP_QUEUES), concurrency=2, hostname="steps")
    instance = Instance.from_env()
    handle = submit_job(GATED, instance=instance, launcher=launcher)
    wait_until(pid_path("gated").exists, 60, "step gated to start")

    os.killpg(coordinator.pgid, signal.SIGKILL)  # the worker and its pool: the task is not requeued
    takeover = celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord2")
    # The reaper of a worker submits a resume through Celery; the new coordinator waits
    # for the step still running.
    wait_until(
        lambda: f"coordinate_run[{handle.run_id}:resume:" in takeover.read_log(),
        60,
        "the reaper to resume the run through Celery",
    )
    _open_gate()

    assert handle.wait(timeout=120) is RunStatus.SUCCESS
    assert [runs_of(key) for key in ("first", "gated", "last")] == [1, 1, 1]
