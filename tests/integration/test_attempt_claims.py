"""Attempt claims on a real Redis: one worker per attempt, its start announced only then."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from coreexec.active_execution import StepAttempt
from coreexec.events import EventKind
from coreexec.redis_clients import redis_client
from coreexec.step_runner import start_event
from coreexec.transport import keys
from coreexec.transport.attempts import AttemptClaims, add_finish_commands
from coreexec.transport.redis_events import RedisEventStream, events_of

pytestmark = pytest.mark.integration

RUN = "run-claims"
ATTEMPT = StepAttempt("load", 1, "attempt-1")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis_client(redis_url)
    yield client
    client.close()


def started(client: redis.Redis) -> list[str]:
    """The attempt ids of the STEP_START events on the run's stream."""
    events = events_of(RedisEventStream(client, RUN).history())
    return [e.attempt_id or "" for e in events if e.kind is EventKind.STEP_START]


def test_the_first_claim_wins_and_alone_announces_the_start(client: redis.Redis) -> None:
    claims = AttemptClaims(client)
    claims.issue(RUN, [ATTEMPT])
    start = start_event(RUN, ATTEMPT.step_key, ATTEMPT)

    first = claims.claim_and_start(RUN, ATTEMPT.attempt_id, "w1@host:10", start)
    second = claims.claim_and_start(RUN, ATTEMPT.attempt_id, "w2@host:20", start)

    assert first.claimed and first.holder == "w1@host:10"
    assert not second.claimed and second.holder == "w1@host:10" and not second.fenced
    assert started(client) == [ATTEMPT.attempt_id]
    assert claims.holder(RUN, ATTEMPT.attempt_id) == "w1@host:10"


def test_a_fenced_attempt_is_neither_claimed_nor_started(client: redis.Redis) -> None:
    claims = AttemptClaims(client)
    claims.issue(RUN, [ATTEMPT])
    assert claims.fence(RUN, [ATTEMPT.attempt_id], "run canceled") == [True]

    late = claims.claim_and_start(
        RUN, ATTEMPT.attempt_id, "w1@host:10", start_event(RUN, ATTEMPT.step_key, ATTEMPT)
    )

    assert not late.claimed and late.fenced
    assert started(client) == []


def test_a_claim_expires_with_its_ttl(client: redis.Redis) -> None:
    claims = AttemptClaims(client, ttl_s=60)
    claims.issue(RUN, [ATTEMPT])
    claims.claim_and_start(
        RUN, ATTEMPT.attempt_id, "w1@host:10", start_event(RUN, ATTEMPT.step_key, ATTEMPT)
    )
    ttl = client.ttl(keys.attempt_claim(RUN, ATTEMPT.attempt_id))
    assert 0 < int(ttl) <= 60


def test_an_attempt_the_coordinator_never_issued_is_refused_and_writes_nothing(
    client: redis.Redis,
) -> None:
    claims = AttemptClaims(client)
    forged = StepAttempt("load", 1, "attempt-forged")

    refused = claims.claim_and_start(
        RUN, forged.attempt_id, "w1@host:10", start_event(RUN, "load", forged)
    )

    assert not refused.claimed and refused.refused == "not issued by the coordinator of the run"
    assert client.keys("*") == []


def test_a_message_naming_another_step_or_attempt_number_is_refused(client: redis.Redis) -> None:
    claims = AttemptClaims(client)
    claims.issue(RUN, [ATTEMPT])
    other_step = StepAttempt("drop_tables", 1, ATTEMPT.attempt_id)
    other_number = StepAttempt("load", 2, ATTEMPT.attempt_id)

    for forged in (other_step, other_number):
        start = start_event(RUN, forged.step_key, forged)
        assert claims.claim_and_start(RUN, forged.attempt_id, "w1@host:10", start).refused
    assert started(client) == []


def test_no_attempt_of_a_finished_run_is_claimed(client: redis.Redis) -> None:
    claims = AttemptClaims(client)
    claims.issue(RUN, [ATTEMPT])
    with client.pipeline(transaction=False) as pipe:
        add_finish_commands(pipe, RUN)
        pipe.execute()

    late = claims.claim_and_start(
        RUN, ATTEMPT.attempt_id, "w1@host:10", start_event(RUN, ATTEMPT.step_key, ATTEMPT)
    )

    assert late.refused == "the run has finished"
    assert started(client) == []
    assert 0 < int(client.ttl(keys.run_issued(RUN))) <= keys.FINISHED_RUN_TTL_S
