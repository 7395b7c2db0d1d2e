"""Submission through real Celery workers: ``submit_job`` stores the run and the Celery
run launcher hands it to a coordinator worker on ``coreexec.runs``; steps run on step
workers; the handle waits on the run's Redis stream. Also the CLI, a broker that is
down, and ``coreexec worker`` starting a real worker."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_app.app import make_app
from celery_app.queues import RUNS_QUEUE, STEP_QUEUES
from celery_app.run_launcher import CeleryRunLauncher
from celery_app.settings import CelerySettings
from coreexec import RunStatus, submit_job
from coreexec.errors import BrokerConnectionError, RunWaitTimeout
from coreexec.events import EventKind
from coreexec.instance import Instance
from coreexec.io_managers import OutputKey
from coreexec.redis_clients import redis_client
from coreexec.transport import keys
from coreexec.transport.coordinator_heartbeat import CoordinatorInfo
from tests.jobs.submission_jobs import runs_of
from tests.support.ports import free_port
from tests.support.processes import REPO_ROOT, CeleryWorkerProcess, child_env

FAN = "tests.jobs.submission_jobs:fan"
CHAIN = "tests.jobs.submission_jobs:chain"
CHAIN_LOCAL = "tests.jobs.submission_jobs:chain_local"
WorkerFactory = Callable[..., CeleryWorkerProcess]


def _coordinator_info(redis_url: str, run_id: str) -> CoordinatorInfo:
    with redis_client(redis_url) as client:
        raw = client.get(keys.run_coordinator_seen(run_id))
    assert raw is not None, "the coordinator never recorded a heartbeat"
    info = CoordinatorInfo.from_json(raw)
    assert info is not None
    return info


def _cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coreexec", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
        timeout=timeout_s,
        check=False,
    )


def test_fan_out_runs_on_a_coordinator_worker_and_a_step_worker(
    env: Path,
    redis_url: str,
    launcher: CeleryRunLauncher,
    celery_worker_factory: WorkerFactory,
) -> None:
    coordinator = celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord")
    steps = celery_worker_factory(queues=list(STEP_QUEUES), concurrency=2, hostname="steps")
    instance = Instance.from_env()

    handle = submit_job(FAN, tags={"team": "data"}, instance=instance, launcher=launcher)
    assert handle.redis_url == redis_url
    assert handle.wait(timeout=90) is RunStatus.SUCCESS

    assert instance.io_manager().load(OutputKey(handle.run_id, "join", "result")) == 9
    step_keys = ["first", "part_0", "part_1", "part_2", "join"]
    assert [runs_of(key) for key in step_keys] == [1] * 5
    starts = [e for e in handle.events() if e.kind is EventKind.STEP_START]
    assert sorted(e.step_key or "" for e in starts) == sorted(step_keys)
    assert {int(e.data["pid"]) for e in starts} <= set(steps.group_pids())
    info = _coordinator_info(redis_url, handle.run_id)
    assert info.pid in coordinator.group_pids() and info.pid != coordinator.pid
    assert handle.events()[-1].kind is EventKind.RUN_SUCCESS
    assert handle.record().tags["team"] == "data"


def test_a_job_on_the_in_process_executor_runs_inside_the_coordinator(
    env: Path,
    redis_url: str,
    launcher: CeleryRunLauncher,
    celery_worker_factory: WorkerFactory,
) -> None:
    coordinator = celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord")
    handle = submit_job(CHAIN_LOCAL, launcher=launcher)
    assert handle.wait(timeout=60) is RunStatus.SUCCESS
    info = _coordinator_info(redis_url, handle.run_id)
    starts = [e for e in handle.events() if e.kind is EventKind.STEP_START]
    assert {int(e.data["pid"]) for e in starts} == {info.pid}
    assert info.pid in coordinator.group_pids()


def test_a_duplicate_launch_of_a_run_does_not_run_it_twice(
    env: Path, launcher: CeleryRunLauncher, celery_worker_factory: WorkerFactory
) -> None:
    celery_worker_factory(queues=[RUNS_QUEUE], concurrency=2, hostname="coord")
    handle = submit_job(CHAIN_LOCAL, launcher=launcher)
    launcher.launch(handle.run_id)  # the same run handed over again
    assert handle.wait(timeout=60) is RunStatus.SUCCESS
    second = submit_job(CHAIN_LOCAL, launcher=launcher)
    assert second.wait(timeout=60) is RunStatus.SUCCESS
    # Both deliveries of the first run have been handled by now (one worker process
    # takes them in order); every step ran once per run.
    assert [runs_of(key) for key in ("first", "second", "third")] == [2, 2, 2]
    assert [e.kind for e in handle.events()].count(EventKind.RUN_START) == 1


def test_cli_submit_wait_and_watch(env: Path, celery_worker_factory: WorkerFactory) -> None:
    celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord")
    celery_worker_factory(queues=list(STEP_QUEUES), concurrency=2, hostname="steps")

    submitted = _cli("submit", CHAIN, "--wait", "--tag", "team=cli")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    run_id = submitted.stdout.split()[2]
    assert "[3/3]" in submitted.stdout
    assert submitted.stdout.rstrip().endswith(f"run {run_id}: SUCCESS")

    watched = _cli("runs", "watch", run_id)
    assert watched.returncode == 0, watched.stderr
    assert "third" in watched.stdout and "SUCCESS" in watched.stdout
    shown = _cli("runs", "show", run_id)
    assert "team=cli" in shown.stdout


def test_broker_down_is_a_clear_error_and_the_run_says_why(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("COREEXEC_BROKER_URL", down)
    monkeypatch.setenv("COREEXEC_REDIS_URL", down)
    launcher = CeleryRunLauncher(make_app(CelerySettings.from_env(), set_as_current=False))
    instance = Instance.from_env()

    with pytest.raises(BrokerConnectionError) as raised:
        submit_job(CHAIN, instance=instance, launcher=launcher)
    assert raised.value.url == down
    assert f"cannot reach the broker at {down}" in str(raised.value)
    assert "start redis-server" in str(raised.value)
    (record,) = instance.storage.list_runs()
    assert record.status is RunStatus.FAILURE
    (event,) = [event for _, event in instance.storage.events(record.run_id)]
    assert event.kind is EventKind.RUN_FAILURE and "start redis-server" in event.message

    result = _cli("submit", CHAIN)
    assert result.returncode == 1
    assert f"cannot reach the broker at {down}" in result.stderr
    assert "start redis-server" in result.stderr
    newest = instance.storage.list_runs(limit=1)[0]
    assert newest.status is RunStatus.FAILURE and newest.run_id != record.run_id
    shown = _cli("runs", "show", newest.run_id, "--events")
    assert "could not hand the run to the 'celery' run launcher" in shown.stdout


def test_coreexec_worker_starts_a_celery_worker_that_coordinates_runs(
    env: Path, launcher: CeleryRunLauncher, tmp_path: Path
) -> None:
    worker = CeleryWorkerProcess(queues=[RUNS_QUEUE], hostname="wrapped", log_dir=tmp_path / "logs")
    # Same readiness check and stop as the fixture's workers; started through our CLI.
    worker.argv = [
        sys.executable, "-m", "coreexec", "worker",
        "-Q", RUNS_QUEUE, "-c", "1", "-n", worker.hostname,
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with worker:
        assert "coreexec.coordinate_run" in worker.read_log()
        handle = submit_job(CHAIN_LOCAL, launcher=launcher)
        assert handle.wait(timeout=60) is RunStatus.SUCCESS
    assert os.environ["COREEXEC_HOME"] == str(env)


def test_a_run_waits_queued_until_a_coordinator_worker_starts(
    env: Path,
    launcher: CeleryRunLauncher,
    celery_worker_factory: WorkerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="celery_app.run_launcher"):
        waiting = submit_job(CHAIN_LOCAL, launcher=launcher)
        canceled = submit_job(CHAIN_LOCAL, launcher=launcher)
    assert f"run {waiting.run_id} waits in queue coreexec.runs, which no worker" in caplog.text
    with pytest.raises(RunWaitTimeout, match=waiting.run_id):
        waiting.wait(timeout=0.5)
    assert waiting.status() is RunStatus.QUEUED
    assert canceled.cancel().after is RunStatus.CANCELED

    celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="late")
    assert waiting.wait(timeout=60) is RunStatus.SUCCESS
    assert canceled.status() is RunStatus.CANCELED
    assert [runs_of(key) for key in ("first", "second", "third")] == [1, 1, 1]


def test_a_job_on_the_default_multiprocess_executor_runs_inside_a_coordinator_worker(
    env: Path, launcher: CeleryRunLauncher, celery_worker_factory: WorkerFactory
) -> None:
    coordinator = celery_worker_factory(queues=[RUNS_QUEUE], concurrency=1, hostname="coord")
    handle = submit_job("tests.jobs.core_jobs:scale_job", launcher=launcher)
    assert handle.wait(timeout=90) is RunStatus.SUCCESS, [e.message for e in handle.events()]
    assert "multi_or_in_process" in handle.events()[0].message
    output = Instance.from_env().io_manager().load(OutputKey(handle.run_id, "total", "result"))
    assert output == 12
    starts = [e for e in handle.events() if e.kind is EventKind.STEP_START]
    # The steps ran in processes the coordinator (a pool process of the worker) started.
    assert {int(e.data["pid"]) for e in starts}.isdisjoint({coordinator.pid})
