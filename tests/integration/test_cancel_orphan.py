"""Cancelling a run whose coordinator died, against a real Redis.

The run is set up as a dead coordinator leaves it: STARTED, two attempts queued, one of
them claimed by a worker, the coordinator's heartbeat gone but its ``seen`` record kept.
The cancel must fence the unclaimed attempt and hand the claimed one to the run
launcher's ``terminate_attempts``; when the launcher cannot, the message says so and the
run is CANCELED all the same.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from coreexec.active_execution import StepAttempt
from coreexec.errors import BrokerConnectionError
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.redis_clients import redis_client
from coreexec.runs.cancel import request_cancel
from coreexec.runs.create import create_run
from coreexec.runs.launcher import AttemptTerminator
from coreexec.step_runner import start_event
from coreexec.storage.base import RunStatus
from coreexec.transport import keys
from coreexec.transport.attempts import AttemptClaims
from coreexec.transport.coordinator_heartbeat import CoordinatorInfo

CHAIN = "tests.jobs.submission_jobs:gated_chain"


@dataclass
class RecordingTerminator:
    """A run launcher's terminating side that records what it was asked to stop."""

    asked: list[tuple[str, list[str]]] = field(default_factory=list)
    error: str | None = None

    def terminate_attempts(self, run_id: str, attempt_ids: Sequence[str]) -> None:
        if self.error is not None:
            raise BrokerConnectionError(self.error, url="redis://nowhere")
        self.asked.append((run_id, list(attempt_ids)))


@dataclass(frozen=True)
class OrphanedRun:
    run_id: str
    running: str
    queued: str


def _queued(run_id: str, step_key: str, attempt_id: str) -> Event:
    return Event(
        kind=EventKind.STEP_QUEUED,
        run_id=run_id,
        timestamp=time.time(),
        step_key=step_key,
        attempt=1,
        attempt_id=attempt_id,
    )


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis_client(redis_url)


@pytest.fixture
def orphaned(env: Path, client: redis.Redis) -> OrphanedRun:
    instance = Instance.from_env()
    run_id = create_run(CHAIN, instance=instance).run_id
    assert instance.storage.set_status(run_id, RunStatus.STARTED, expected=(RunStatus.QUEUED,))
    running, queued = "attempt-running", "attempt-queued"
    instance.storage.append_events(
        run_id, [_queued(run_id, "first", running), _queued(run_id, "gated", queued)]
    )
    claims = AttemptClaims(client)
    claims.issue(run_id, [StepAttempt("first", 1, running), StepAttempt("gated", 1, queued)])
    start = start_event(run_id, "first", StepAttempt("first", 1, running))
    assert claims.claim_and_start(run_id, running, "worker-1:123", start).claimed
    # What a coordinator that ran and died leaves: no heartbeat, only the record it ran.
    gone = CoordinatorInfo(host="elsewhere", pid=1, started_at=time.time(), owner="coord@x")
    client.set(keys.run_coordinator_seen(run_id), gone.to_json())
    return OrphanedRun(run_id, running, queued)


def test_the_attempt_a_worker_took_is_terminated_and_the_queued_one_fenced(
    env: Path, redis_url: str, client: redis.Redis, orphaned: OrphanedRun
) -> None:
    terminator = RecordingTerminator()
    assert isinstance(terminator, AttemptTerminator)

    outcome = request_cancel(
        Instance.from_env(), orphaned.run_id, redis_url, find_terminator=lambda: terminator
    )

    assert outcome.after is RunStatus.CANCELED
    assert "steps a worker had taken (first) were told to stop" in outcome.message
    assert terminator.asked == [(orphaned.run_id, [orphaned.running])]
    claims = AttemptClaims(client)
    late = start_event(orphaned.run_id, "gated", StepAttempt("gated", 1, orphaned.queued))
    assert claims.claim_and_start(orphaned.run_id, orphaned.queued, "worker-2:9", late).fenced


def test_a_launcher_that_cannot_terminate_is_named_and_the_run_still_ends_canceled(
    env: Path, redis_url: str, orphaned: OrphanedRun
) -> None:
    outcome = request_cancel(
        Instance.from_env(), orphaned.run_id, redis_url, find_terminator=lambda: None
    )

    assert outcome.after is RunStatus.CANCELED
    assert (
        "steps a worker had taken (first) are not stopped: the run launcher cannot "
        "terminate attempts" in outcome.message
    )


def test_a_broker_that_is_down_is_named_and_the_run_still_ends_canceled(
    env: Path, redis_url: str, orphaned: OrphanedRun
) -> None:
    terminator = RecordingTerminator(error="cannot reach the broker at redis://nowhere")

    outcome = request_cancel(
        Instance.from_env(), orphaned.run_id, redis_url, find_terminator=lambda: terminator
    )

    assert outcome.after is RunStatus.CANCELED
    assert "are not stopped: cannot reach the broker at redis://nowhere" in outcome.message
    stored = Instance.from_env().storage.get_run(orphaned.run_id)
    assert stored.status is RunStatus.CANCELED
