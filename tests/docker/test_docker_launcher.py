"""Steps in containers on a real Docker engine: celery_docker_executor through real
celery workers, docker_executor from the test process, and what a user relies on when
containers are killed, run out of memory, are delivered twice or cancelled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from celery_app.queues import STEP_QUEUES
from coreexec import RunHandle, RunStatus
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.redis_clients import redis_client
from coreexec.transport.redis_events import RedisEventStream
from tests.jobs.celery_jobs import RunWatcher, marks, open_gate
from tests.jobs.launcher_jobs import IN_CONTAINER
from tests.support.processes import REPO_ROOT, CeleryWorkerProcess
from workers.docker.containers import RUN_LABEL, STEP_LABEL

REF = "tests.jobs.launcher_jobs"
HEARTBEAT_TIMEOUT_S = 2.0
FAST = {"heartbeat_interval_s": 0.3, "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S}
STOP_TIMEOUT_S = 5.0
WorkerFactory = Callable[..., CeleryWorkerProcess]


@pytest.fixture
def env(
    redis_url: str, coreexec_home: Path, docker_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Broker, Redis, home and Docker socket shared by the test, its workers and the
    containers they start."""
    monkeypatch.setenv("COREEXEC_BROKER_URL", redis_url)
    monkeypatch.setenv("COREEXEC_REDIS_URL", redis_url)
    monkeypatch.setenv("DOCKER_HOST", docker_engine.base_url)
    for name in ("COREEXEC_RESULT_BACKEND", "COREEXEC_CELERY_CONFIG", "COREEXEC_RUN_LAUNCHER"):
        monkeypatch.delenv(name, raising=False)
    return coreexec_home


@pytest.fixture
def block(env: Path, step_container: Any) -> dict[str, Any]:
    """The ``docker`` block running the step image of this checkout: host network, this
    checkout first on PYTHONPATH (read-only), the home read-write, the host's uid."""
    return {
        "image": step_container.image,
        "network": "host",
        "volumes": step_container.volumes(env),
        "env_vars": [f"PYTHONPATH={REPO_ROOT}"],
        "container_kwargs": {
            "user": f"{os.getuid()}:{os.getgid()}",
            "working_dir": str(REPO_ROOT),
            "labels": dict(step_container.labels),
        },
        "stop_timeout_s": STOP_TIMEOUT_S,
    }


@pytest.fixture
def client(docker_engine: Any) -> docker.DockerClient:
    return docker_engine.client


@pytest.fixture
def workers(env: Path, celery_worker_factory: WorkerFactory) -> Iterator[WorkerFactory]:
    yield lambda **kw: celery_worker_factory(queues=list(STEP_QUEUES), **kw)


def config(block: dict[str, Any], **docker: Any) -> dict[str, Any]:
    return {"execution": {"config": {**FAST, "docker": {**block, **docker}}}}


def containers_of(client: docker.DockerClient, run_id: str) -> list[dict[str, Any]]:
    """The run's containers as the engine lists them (``Id``, ``State``, ``Labels``);
    the raw list, as the SDK's list() fails on a container removed while it inspects."""
    return list(client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={run_id}"}))


def no_containers_left(client: docker.DockerClient, run_id: str) -> bool:
    """True once no container of the run exists. Supervisors remove a container right
    after publishing its end, so the run may end a moment before the last removal."""
    deadline = time.monotonic() + 30
    while containers_of(client, run_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def running_container(client: docker.DockerClient, run_id: str, step: str) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [
            c["Id"]
            for c in containers_of(client, run_id)
            if c["Labels"].get(STEP_LABEL) == step and c["State"] == "running"
        ]
        if found:
            return client.containers.get(found[0])
        time.sleep(0.05)
    raise AssertionError(f"no running container of step {step}")


def wait_marks(run_id: str, step: str, count: int) -> None:
    deadline = time.monotonic() + 90
    while len(marks(run_id, step)) < count:
        assert time.monotonic() < deadline, f"step {step} did not start {count} times"
        time.sleep(0.05)


def stream_events(redis_url: str, run_id: str) -> list[Event]:
    entries = RedisEventStream(redis_client(redis_url), run_id).history()
    return [entry.event for entry in entries if entry.event is not None]


def failures(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind is EventKind.STEP_FAILURE]


# -- runs -------------------------------------------------------------------------------


def test_every_step_in_a_container_through_celery_workers(
    workers: WorkerFactory, block: dict[str, Any], client: docker.DockerClient
) -> None:
    workers(concurrency=2)
    result = RunWatcher(f"{REF}:sum_job", config(block)).start().join(timeout_s=180)

    assert result.status is RunStatus.SUCCESS, result.events[-3:]
    assert result.output_for("total") == 6
    assert no_containers_left(client, result.run_id)  # removed after their end


def test_a_mixed_job_runs_light_steps_on_the_worker_and_heavy_ones_in_containers(
    workers: WorkerFactory, block: dict[str, Any]
) -> None:
    worker = workers(concurrency=1)
    result = RunWatcher(f"{REF}:mixed_job", config(block)).start().join(timeout_s=180)

    assert result.status is RunStatus.SUCCESS, result.events[-3:]
    light, heavy = result.output_for("heavy")
    assert heavy == IN_CONTAINER
    assert light != IN_CONTAINER and int(light.split()[-1]) in worker.group_pids()


def test_the_same_job_under_docker_executor(
    env: Path, block: dict[str, Any], client: docker.DockerClient
) -> None:
    run_config = {"execution": {"config": {"docker": block, "max_concurrent": 2}}}
    result = RunWatcher(f"{REF}:docker_mixed_job", run_config).start().join(timeout_s=180)

    assert result.status is RunStatus.SUCCESS, result.events[-3:]
    light, heavy = result.output_for("heavy")
    assert (heavy, light) == (IN_CONTAINER, f"in process {os.getpid()}")
    assert no_containers_left(client, result.run_id)


# -- failures ---------------------------------------------------------------------------


def test_docker_kill_is_an_infrastructure_failure_and_the_retry_succeeds(
    workers: WorkerFactory, block: dict[str, Any], client: docker.DockerClient
) -> None:
    workers(concurrency=1)
    watcher = RunWatcher(f"{REF}:killed_once_job", config(block)).start()
    run_id = watcher.run_id
    wait_marks(run_id, "killed_once", 1)
    running_container(client, run_id, "killed_once").kill()

    result = watcher.join(timeout_s=180)
    assert result.status is RunStatus.SUCCESS, watcher.summary()
    assert result.output_for("killed_once") == 2
    first = failures(result.events)[0]
    assert first.attempt == 1 and first.data["failure_class"] == "infrastructure"
    assert "ended without reporting the step's end" in first.message
    assert "exit code 137" in first.message


def test_a_step_over_its_memory_limit_is_reported_out_of_memory_with_the_limit(
    workers: WorkerFactory, block: dict[str, Any]
) -> None:
    workers(concurrency=1)
    kwargs = {**block["container_kwargs"], "mem_limit": "64m", "memswap_limit": "64m"}
    run_config = config(block, container_kwargs=kwargs)
    result = RunWatcher(f"{REF}:hog_job", run_config).start().join(timeout_s=180)

    assert result.status is RunStatus.FAILURE
    failure = failures(result.events)[-1]
    assert failure.data["failure_class"] == "infrastructure"
    assert "out of memory (limit 64 MiB)" in failure.message


def test_kill_9_of_the_supervising_worker_leaves_no_container_and_the_run_succeeds(
    workers: WorkerFactory, block: dict[str, Any], client: docker.DockerClient
) -> None:
    doomed = workers(concurrency=1, hostname="doomed")
    watcher = RunWatcher(f"{REF}:killed_once_job", config(block)).start()
    run_id = watcher.run_id
    wait_marks(run_id, "killed_once", 1)
    first = running_container(client, run_id, "killed_once")
    workers(concurrency=1, hostname="spare")
    for pid in doomed.group_pids():
        os.kill(pid, signal.SIGKILL)

    result = watcher.join(timeout_s=180)
    assert result.status is RunStatus.SUCCESS, watcher.summary()
    assert result.output_for("killed_once") == 2
    lost = failures(result.events)[0]
    assert lost.attempt == 1 and "heartbeat" in lost.message
    # The retry stopped the orphaned container of attempt 1 before starting its own.
    assert no_containers_left(client, run_id)
    with pytest.raises(docker.errors.NotFound):
        first.reload()


def test_a_redelivered_message_of_a_running_attempt_starts_no_second_container(
    workers: WorkerFactory, block: dict[str, Any], client: docker.DockerClient, redis_url: str
) -> None:
    from tests.integration.test_celery_failures import publish_again

    workers(concurrency=2)
    reference = f"{REF}:held_job"
    watcher = RunWatcher(reference, config(block)).start()
    start = watcher.event(EventKind.STEP_START, "held", timeout_s=60)
    wait_marks(start.run_id, "held", 1)

    publish_again(redis_url, start, reference)
    watcher.wait_for(
        lambda _: any(
            e.kind is EventKind.STEP_HEARTBEAT and e.step_key == "held"
            for e in stream_events(redis_url, start.run_id)
        ),
        30.0,
        "heartbeats",
    )
    assert len(containers_of(client, start.run_id)) == 1
    open_gate(start.run_id, "go")
    result = watcher.join(timeout_s=120)

    assert result.status is RunStatus.SUCCESS
    assert len(marks(result.run_id, "held")) == 1
    successes = [
        e for e in stream_events(redis_url, result.run_id) if e.kind is EventKind.STEP_SUCCESS
    ]
    assert len(successes) == 1


def test_cancel_stops_running_containers_within_the_grace_period(
    workers: WorkerFactory, block: dict[str, Any], client: docker.DockerClient, redis_url: str
) -> None:
    workers(concurrency=1)
    watcher = RunWatcher(f"{REF}:held_job", config(block)).start()
    run_id = watcher.run_id
    wait_marks(run_id, "held", 1)
    running_container(client, run_id, "held")

    started = time.monotonic()
    RunHandle(run_id, Instance.from_env(), redis_url).cancel()
    result = watcher.join(timeout_s=60)

    assert result.status is RunStatus.CANCELED
    assert time.monotonic() - started < STOP_TIMEOUT_S + 3.0
    failure = failures(result.events)[-1]
    assert failure.data["failure_class"] == "cancelled"
    assert no_containers_left(client, run_id)


def test_keep_containers_keeps_ended_containers(
    workers: WorkerFactory, block: dict[str, Any], client: docker.DockerClient
) -> None:
    workers(concurrency=1)
    run_config = config(block, keep_containers=True)
    result = RunWatcher(f"{REF}:sum_job", run_config).start().join(timeout_s=180)

    assert result.status is RunStatus.SUCCESS
    kept = containers_of(client, result.run_id)
    assert sorted(c["Labels"][STEP_LABEL] for c in kept) == ["numbers", "total"]
    assert {c["State"] for c in kept} == {"exited"}

    # The sweep removes them: their run has finished.
    swept = subprocess.run(
        [sys.executable, "-m", "workers.docker.sweep", "sweep"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert swept.returncode == 0, swept.stderr
    assert "removed 2 container(s)" in swept.stdout
    assert containers_of(client, result.run_id) == []


def test_a_missing_image_fails_the_step_naming_the_image(
    workers: WorkerFactory, block: dict[str, Any]
) -> None:
    workers(concurrency=1)
    run_config = config(block, image="coreexec-no-such-image:never")
    result = RunWatcher(f"{REF}:sum_job", run_config).start().join(timeout_s=120)

    assert result.status is RunStatus.FAILURE
    assert "'coreexec-no-such-image:never'" in failures(result.events)[0].message


def test_an_unreachable_daemon_fails_the_step_naming_the_socket(
    workers: WorkerFactory, block: dict[str, Any], tmp_path: Path
) -> None:
    workers(concurrency=1)
    socket = f"unix://{tmp_path}/no-dockerd.sock"
    result = RunWatcher(f"{REF}:sum_job", config(block, docker_host=socket)).start().join()

    assert result.status is RunStatus.FAILURE
    assert socket in failures(result.events)[0].message


def test_the_last_lines_of_a_failed_container_are_in_the_run_events(
    workers: WorkerFactory, block: dict[str, Any]
) -> None:
    workers(concurrency=1)
    result = RunWatcher(f"{REF}:noisy_job", config(block)).start().join(timeout_s=120)

    assert result.status is RunStatus.FAILURE
    logs = [e for e in result.events if e.kind is EventKind.STEP_LOG and "logs" in e.data]
    assert logs and "the last words of noisy_failure" in logs[-1].data["logs"]
    assert "noisy line 30" in logs[-1].message
    assert failures(result.events)[-1].data["error"]["type"] == "ValueError"


def test_docker_inspect_shows_no_run_config_value_and_no_registry_password(
    workers: WorkerFactory,
    block: dict[str, Any],
    client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = "registry-password-" + os.urandom(6).hex()
    secret = "run-config-secret-" + os.urandom(6).hex()
    workers(concurrency=1, env={"STEP_REGISTRY_PASSWORD": password})
    registry = {
        "url": "registry.invalid",
        "username": "ci",
        "password_env": "STEP_REGISTRY_PASSWORD",
    }
    run_config = config(block, keep_containers=True, registry=registry)
    run_config["steps"] = {"use_secret": {"config": {"api_key": secret}}}
    result = RunWatcher(f"{REF}:secret_job", run_config).start().join(timeout_s=120)

    assert result.status is RunStatus.SUCCESS, result.events[-3:]
    assert result.output_for("use_secret") == len(secret)
    (container,) = containers_of(client, result.run_id)
    shown = json.dumps(client.api.inspect_container(container["Id"]))
    assert secret not in shown and password not in shown
    assert result.run_id in shown  # identifiers are there
