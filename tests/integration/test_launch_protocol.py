"""The launch protocol without a container engine: the supervisor, the real step
entrypoint (``python -m workers.entrypoint``) run as a child process, and a real Redis.

What a user relies on: the step's outputs are right; its end reaches the run's stream
only once its process has ended; a killed process is an infrastructure failure; a
SIGTERM ends the step as cancelled (the entrypoint's handler); a redelivered message
adopts the running process instead of starting a second one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from coreexec.attempt_runner import AttemptIds, AttemptResult
from coreexec.attempt_runtime import AttemptRuntime
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.io_managers import OutputKey
from coreexec.storage.base import RunRecord, RunStatus
from coreexec.transport import keys
from coreexec.transport.attempts import AttemptClaims
from coreexec.transport.redis_events import RedisEventStream, events_of
from coreexec.transport.run_settings import RunSettings
from tests.jobs.celery_jobs import marks, open_gate
from tests.support.local_launcher import REPO, LocalProcessLauncher
from tests.support.waiting import wait_until
from workers.launcher import LaunchRequest, launch_name
from workers.supervisor import supervise

REF = "tests.jobs.launcher_jobs"
WAIT_S = 30.0


@pytest.fixture
def runtime(redis_url: str, coreexec_home: Path) -> Iterator[AttemptRuntime]:
    yield AttemptRuntime(redis_url)


@pytest.fixture
def local(tmp_path: Path, redis_url: str) -> LocalProcessLauncher:
    return LocalProcessLauncher(tmp_path / "launched", redis_url=redis_url)


def new_run(runtime: AttemptRuntime, job: str) -> str:
    run_id = uuid.uuid4().hex
    record = RunRecord(run_id, job, RunStatus.STARTED, job_reference=f"{REF}:{job}")
    runtime.instance.storage.add_run(record)
    settings = RunSettings(heartbeat_interval_s=0.2)
    runtime.client.hset(keys.run_settings(run_id), mapping=settings.to_hash())
    return run_id


def ids_of(
    runtime: AttemptRuntime, run_id: str, job: str, step: str, number: int = 1
) -> AttemptIds:
    """A new attempt, recorded as issued the way a coordinator records what it sends."""
    ids = AttemptIds(run_id, step, number, uuid.uuid4().hex, f"{REF}:{job}")
    runtime.claims.issue(run_id, [ids.attempt])
    return ids


def events(runtime: AttemptRuntime, run_id: str) -> list[Event]:
    return events_of(RedisEventStream(runtime.client, run_id).history())


def step_events(runtime: AttemptRuntime, run_id: str, kind: EventKind) -> list[Event]:
    return [e for e in events(runtime, run_id) if e.kind is kind]


class Supervising:
    """supervise() in a thread (the test acts on the child process meanwhile)."""

    def __init__(self, runtime: AttemptRuntime, ids: AttemptIds, launcher: object) -> None:
        self.result: AttemptResult | None = None
        self.thread = threading.Thread(target=self._run, args=(runtime, ids, launcher), daemon=True)
        self.thread.start()

    def _run(self, runtime: AttemptRuntime, ids: AttemptIds, launcher: object) -> None:
        self.result = supervise(
            runtime, ids, owner=f"test-{uuid.uuid4().hex[:6]}", choose=lambda r, p: launcher
        )

    def join(self) -> AttemptResult:
        self.thread.join(WAIT_S)
        assert self.result is not None, "the supervisor did not return"
        return self.result


def test_outputs_flow_and_the_end_is_published_after_the_process_exits(
    runtime: AttemptRuntime, local: LocalProcessLauncher
) -> None:
    run_id = new_run(runtime, "sum_job")
    first = supervise(
        runtime, ids_of(runtime, run_id, "sum_job", "numbers"), owner="t", choose=lambda r, p: local
    )
    second = supervise(
        runtime, ids_of(runtime, run_id, "sum_job", "total"), owner="t", choose=lambda r, p: local
    )

    assert (first.status, second.status) == ("success", "success")
    assert runtime.io_manager.load(OutputKey(run_id, "total", "result")) == 6
    kinds = [
        (e.step_key, e.kind)
        for e in events(runtime, run_id)
        if e.kind is not EventKind.STEP_HEARTBEAT
    ]
    total = [kind for key, kind in kinds if key == "total"]
    # Start (the supervisor's claim), then the logs of the ended process, then its end.
    assert total[0] is EventKind.STEP_START
    assert total[-2:] == [EventKind.STEP_OUTPUT, EventKind.STEP_SUCCESS]
    assert total.count(EventKind.STEP_START) == 1
    assert local.launched[-1] == launch_name(second.ids)
    assert len(local.launched) == 2
    # The end reached the stream (where the coordinator frees the step's slots) only
    # after the process had ended: stream ids are the Redis server's milliseconds.
    success = next(
        entry
        for entry in RedisEventStream(runtime.client, run_id).history()
        if entry.event is not None
        and entry.event.kind is EventKind.STEP_SUCCESS
        and entry.event.step_key == "total"
    )
    published_ms = int(success.entry_id.split("-")[0])
    assert published_ms >= int(local.exited_at[launch_name(second.ids)] * 1000)


def test_a_killed_process_is_an_infrastructure_failure(
    runtime: AttemptRuntime, local: LocalProcessLauncher
) -> None:
    run_id = new_run(runtime, "held_job")
    ids = ids_of(runtime, run_id, "held_job", "held")
    running = Supervising(runtime, ids, local)
    wait_until(lambda: len(marks(run_id, "held")) == 1, "the step to start", WAIT_S)
    os.kill(int(marks(run_id, "held")[0]), signal.SIGKILL)

    result = running.join()
    assert result.status == "failure"
    failure = step_events(runtime, run_id, EventKind.STEP_FAILURE)[-1]
    assert failure.data["failure_class"] == "infrastructure"
    assert "ended without reporting the step's end" in failure.message
    assert failure.data["exit_code"] == 128 + signal.SIGKILL


def test_sigterm_ends_the_step_as_cancelled_by_the_entrypoint(
    runtime: AttemptRuntime, local: LocalProcessLauncher
) -> None:
    run_id = new_run(runtime, "held_job")
    ids = ids_of(runtime, run_id, "held_job", "held")
    running = Supervising(runtime, ids, local)
    wait_until(lambda: len(marks(run_id, "held")) == 1, "the step to start", WAIT_S)
    local.terminate(local.find(request_for(runtime, ids)))  # type: ignore[arg-type]

    result = running.join()
    assert result.status == "failure"
    assert local.killed == [], "the step ended by the kill, not SIGTERM"
    failure = step_events(runtime, run_id, EventKind.STEP_FAILURE)[-1]
    assert failure.data["failure_class"] == "cancelled"
    assert failure.data["error"]["type"] == "Cancelled"
    assert "SIGTERM" in failure.data["error"]["message"]


def request_for(runtime: AttemptRuntime, ids: AttemptIds) -> LaunchRequest:
    from coreexec.attempt_runner import PreparedAttempt, prepare_attempt

    prepared = prepare_attempt(runtime, ids, "test")
    assert isinstance(prepared, PreparedAttempt)
    return LaunchRequest(prepared, "test")


def test_a_redelivered_message_adopts_the_running_process(
    runtime: AttemptRuntime, local: LocalProcessLauncher
) -> None:
    run_id = new_run(runtime, "held_job")
    ids = ids_of(runtime, run_id, "held_job", "held")
    first = Supervising(runtime, ids, local)
    wait_until(lambda: len(marks(run_id, "held")) == 1, "the step to start", WAIT_S)
    second = Supervising(runtime, ids, local)  # the same attempt delivered again
    wait_until(
        lambda: any(e.kind is EventKind.STEP_HEARTBEAT for e in events(runtime, run_id)),
        "heartbeats",
        WAIT_S,
    )
    open_gate(run_id, "go")

    results = sorted([first.join().status, second.join().status])
    assert results == ["dropped", "success"]  # one publishes the end, the other finds it done
    assert len(local.launched) == 1
    assert len(marks(run_id, "held")) == 1
    assert len(step_events(runtime, run_id, EventKind.STEP_SUCCESS)) == 1


def test_an_unknown_launcher_fails_the_step_naming_it_and_the_valid_names(
    runtime: AttemptRuntime,
) -> None:
    run_id = new_run(runtime, "unknown_launcher_job")
    result = supervise(
        runtime, ids_of(runtime, run_id, "unknown_launcher_job", "misplaced"), owner="t"
    )

    assert result.status == "failure"
    failure = step_events(runtime, run_id, EventKind.STEP_FAILURE)[-1]
    assert "step 'misplaced'" in failure.message
    assert "'nowhere'" in failure.message and "docker, in_process, k8s" in failure.message
    assert failure.data["retryable"] is False


def entrypoint(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.entrypoint", *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


def test_the_entrypoint_refuses_a_fenced_attempt_and_missing_identifiers(
    runtime: AttemptRuntime, redis_url: str
) -> None:
    run_id = new_run(runtime, "sum_job")
    ids = ids_of(runtime, run_id, "sum_job", "numbers")
    AttemptClaims(redis.Redis.from_url(redis_url)).fence(run_id, [ids.attempt_id], "test")
    args = ["--run-id", run_id, "--step-key", "numbers", "--attempt", "1"]
    args += ["--attempt-id", ids.attempt_id, "--job", ids.job_reference]

    fenced = entrypoint(*args, env={"COREEXEC_REDIS_URL": redis_url})
    assert fenced.returncode == 3
    assert "the coordinator gave it up" in fenced.stderr
    assert not step_events(runtime, run_id, EventKind.STEP_SUCCESS)

    missing = entrypoint("--run-id", run_id, env={"COREEXEC_REDIS_URL": redis_url})
    assert missing.returncode == 2
    assert "missing --step-key (or environment variable COREEXEC_STEP_KEY)" in missing.stderr


def test_the_entrypoint_standalone_runs_from_environment_identifiers(
    runtime: AttemptRuntime, redis_url: str, coreexec_home: Path
) -> None:
    run_id = new_run(runtime, "sum_job")
    ids = ids_of(runtime, run_id, "sum_job", "numbers")
    done = entrypoint(
        "--standalone",
        env={
            "COREEXEC_REDIS_URL": redis_url,
            "COREEXEC_RUN_ID": run_id,
            "COREEXEC_STEP_KEY": "numbers",
            "COREEXEC_ATTEMPT": "1",
            "COREEXEC_ATTEMPT_ID": ids.attempt_id,
            "COREEXEC_JOB": ids.job_reference,
        },
    )
    assert done.returncode == 0, done.stderr
    assert Instance.from_env().io_manager().load(OutputKey(run_id, "numbers", "result")) == [
        1,
        2,
        3,
    ]
    assert len(step_events(runtime, run_id, EventKind.STEP_SUCCESS)) == 1


def test_a_run_with_an_unknown_launcher_is_refused_before_any_step_starts(
    redis_url: str, coreexec_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coreexec import execute_job
    from coreexec.errors import DefinitionError

    monkeypatch.setenv("COREEXEC_BROKER_URL", redis_url)
    with pytest.raises(DefinitionError) as caught:
        execute_job(f"{REF}:unknown_launcher_job", instance=Instance.from_env())
    assert "step 'misplaced'" in str(caught.value)
    assert "valid names: docker, in_process, k8s" in str(caught.value)
