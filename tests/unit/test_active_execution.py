"""ActiveExecution: readiness, priority order, failure skipping, retries on a fake clock."""

from __future__ import annotations

import random

from coreexec import ExecutionPlan, RetryPolicy, job, step
from coreexec.active_execution import ActiveExecution, StepState
from coreexec.clock import FakeClock
from coreexec.events import Event, EventKind
from coreexec.retry import Backoff, FailureClass, Jitter
from coreexec.tags import PRIORITY_TAG


@step
def a() -> int:
    return 1


@step(tags={PRIORITY_TAG: -10})
def low(x: int) -> int:
    return x


@step
def mid(x: int) -> int:
    return x


@step(tags={PRIORITY_TAG: 10})
def high(x: int) -> int:
    return x


@step(retry_policy=RetryPolicy(max_retries=3, delay=1.0, backoff=Backoff.EXPONENTIAL))
def flaky(x: int) -> int:
    return x


@step
def sink(values: list[int]) -> int:
    return sum(values)


@job
def fan() -> None:
    root = a()
    sink([low(root), mid(root), high(root), flaky(root)])


def _end(active: ActiveExecution, key: str, kind: EventKind, **data: object) -> list[Event]:
    attempt = active.current_attempt(key)
    assert attempt is not None
    return active.handle(
        Event(
            kind=kind,
            run_id="r",
            timestamp=0.0,
            step_key=key,
            attempt=attempt.number,
            attempt_id=attempt.attempt_id,
            data=data,
        )
    )


def _start_all(active: ActiveExecution) -> list[str]:
    keys = [planned.key for planned in active.ready_in_order()]
    for key in keys:
        active.start_attempt(key)
    return keys


def test_ready_steps_come_out_by_priority_then_plan_order() -> None:
    active = ActiveExecution(ExecutionPlan.from_job(fan), run_id="r", clock=FakeClock())
    assert _start_all(active) == ["a"]
    _end(active, "a", EventKind.STEP_SUCCESS)
    assert [p.key for p in active.ready_in_order()] == ["high", "mid", "flaky", "low"]


def test_taking_fewer_steps_leaves_the_rest_ready() -> None:
    active = ActiveExecution(ExecutionPlan.from_job(fan), run_id="r", clock=FakeClock())
    _start_all(active)
    _end(active, "a", EventKind.STEP_SUCCESS)
    for planned in active.ready_in_order():
        active.start_attempt(planned.key)
        break
    assert active.state_of("high") is StepState.IN_FLIGHT
    assert [p.key for p in active.ready_in_order()] == ["mid", "flaky", "low"]


def test_failure_skips_only_downstream_and_run_completes() -> None:
    active = ActiveExecution(ExecutionPlan.from_job(fan), run_id="r", clock=FakeClock())
    _start_all(active)
    _end(active, "a", EventKind.STEP_SUCCESS)
    _start_all(active)
    derived = _end(active, "mid", EventKind.STEP_FAILURE, failure_class="user_error")
    assert [(e.kind, e.step_key) for e in derived] == [(EventKind.STEP_SKIPPED, "sink")]
    for key in ("high", "low", "flaky"):
        _end(active, key, EventKind.STEP_SUCCESS)
    assert active.is_complete and not active.succeeded
    assert active.state_of("high") is StepState.SUCCEEDED


def test_retry_delays_follow_exponential_backoff_on_fake_clock() -> None:
    clock = FakeClock()
    active = ActiveExecution(ExecutionPlan.from_job(fan), run_id="r", clock=clock)
    _start_all(active)
    _end(active, "a", EventKind.STEP_SUCCESS)
    for key in ("high", "mid", "low"):
        active.start_attempt(key)
        _end(active, key, EventKind.STEP_SUCCESS)
    delays = []
    for attempt_number in (1, 2, 3):
        active.start_attempt("flaky")
        assert active.current_attempt("flaky").number == attempt_number  # type: ignore[union-attr]
        (retry,) = _end(active, "flaky", EventKind.STEP_FAILURE, failure_class="user_error")
        assert retry.kind is EventKind.STEP_UP_FOR_RETRY
        delays.append(retry.data["delay_s"])
        assert not active.has_ready  # not due yet
        clock.advance(retry.data["delay_s"] - 0.001)
        assert not active.has_ready
        clock.advance(0.001)
        assert active.has_ready
    assert delays == [1.0, 2.0, 4.0]
    active.start_attempt("flaky")
    derived = _end(active, "flaky", EventKind.STEP_FAILURE, failure_class="user_error")
    assert active.state_of("flaky") is StepState.FAILED  # max_retries=3 used up
    assert [e.step_key for e in derived] == ["sink"]


def test_linear_backoff_and_jitter_bounds() -> None:
    policy = RetryPolicy(max_retries=5, delay=2.0, backoff=Backoff.LINEAR)
    assert [policy.delay_for(n) for n in (1, 2, 3)] == [2.0, 4.0, 6.0]
    rng = random.Random(7)
    full = RetryPolicy(max_retries=1, delay=2.0, jitter=Jitter.FULL)
    assert all(0.0 <= full.delay_for(1, rng) <= 2.0 for _ in range(100))
    plus_minus = RetryPolicy(max_retries=1, delay=2.0, jitter=Jitter.PLUS_MINUS)
    assert all(0.0 <= plus_minus.delay_for(1, rng) <= 4.0 for _ in range(100))


def _until_the_retry_is_due(active: ActiveExecution, clock: FakeClock) -> None:
    """Move the clock to the time of the next retry, if one is waiting."""
    due = active.next_retry_at
    if due is not None:
        clock.sleep(max(0.0, due - clock.now()))


def test_retry_policy_can_choose_failure_classes() -> None:
    @step(
        retry_policy=RetryPolicy(max_retries=2, retry_on=frozenset({FailureClass.INFRASTRUCTURE}))
    )
    def only_infra() -> int:
        return 1

    @job
    def one() -> None:
        only_infra()

    clock = FakeClock()
    active = ActiveExecution(ExecutionPlan.from_job(one), run_id="r", clock=clock)
    _start_all(active)
    (retry,) = _end(active, "only_infra", EventKind.STEP_FAILURE, failure_class="infrastructure")
    assert retry.kind is EventKind.STEP_UP_FOR_RETRY
    _until_the_retry_is_due(active, clock)
    _start_all(active)
    _end(active, "only_infra", EventKind.STEP_FAILURE, failure_class="user_error")
    assert active.state_of("only_infra") is StepState.FAILED


def test_attempts_that_never_started_do_not_use_up_the_retries() -> None:
    @step(retry_policy=RetryPolicy(max_retries=1))
    def pod() -> int:
        return 1

    @job
    def one() -> None:
        pod()

    def fail(active: ActiveExecution, **data: object) -> list[Event]:
        _until_the_retry_is_due(active, clock)
        _start_all(active)
        return _end(active, "pod", EventKind.STEP_FAILURE, failure_class="infrastructure", **data)

    clock = FakeClock()
    active = ActiveExecution(ExecutionPlan.from_job(one), run_id="r", clock=clock)
    # Never started (the pod was not scheduled): retried, and the step keeps its retry.
    (retry,) = fail(active, not_started=True)
    assert retry.kind is EventKind.STEP_UP_FOR_RETRY
    # Attempt 2 ran and failed: its one retry is still there.
    (retry,) = fail(active)
    assert retry.kind is EventKind.STEP_UP_FOR_RETRY
    # Attempt 3 ran and failed: the retry is used up.
    fail(active)
    assert active.state_of("pod") is StepState.FAILED

    # Attempts that never start have a budget of their own: they are not retried forever.
    again = ActiveExecution(ExecutionPlan.from_job(one), run_id="r", clock=clock)
    (retry,) = fail(again, not_started=True)
    assert retry.kind is EventKind.STEP_UP_FOR_RETRY
    fail(again, not_started=True)
    assert again.state_of("pod") is StepState.FAILED


def test_stale_and_duplicate_events_change_nothing() -> None:
    active = ActiveExecution(ExecutionPlan.from_job(fan), run_id="r", clock=FakeClock())
    _start_all(active)
    attempt = active.current_attempt("a")
    assert attempt is not None
    success = Event(EventKind.STEP_SUCCESS, "r", 0.0, "a", 1, attempt.attempt_id)
    active.handle(success)
    ready_before = [p.key for p in active.ready_in_order()]
    assert active.handle(success) == []
    stranger = Event(EventKind.STEP_FAILURE, "r", 0.0, "a", 1, "some-other-attempt")
    assert active.handle(stranger) == []
    assert active.state_of("a") is StepState.SUCCEEDED
    assert [p.key for p in active.ready_in_order()] == ready_before


def test_retry_requested_honours_max_retries_and_disabled_retries() -> None:
    active = ActiveExecution(ExecutionPlan.from_job(fan), run_id="r", clock=FakeClock())
    _start_all(active)
    (retry,) = _end(active, "a", EventKind.STEP_RETRY_REQUESTED, max_retries=1, seconds_to_wait=5)
    assert retry.data["delay_s"] == 5
    off = ActiveExecution(
        ExecutionPlan.from_job(fan), run_id="r", clock=FakeClock(), retries_enabled=False
    )
    _start_all(off)
    derived = _end(off, "a", EventKind.STEP_RETRY_REQUESTED, max_retries=3, seconds_to_wait=0)
    assert derived[0].kind is EventKind.STEP_FAILURE
    assert "disabled" in derived[0].message
    assert off.state_of("a") is StepState.FAILED


def test_cancel_skips_everything_not_in_flight() -> None:
    active = ActiveExecution(ExecutionPlan.from_job(fan), run_id="r", clock=FakeClock())
    _start_all(active)
    skipped = active.cancel()
    assert {e.step_key for e in skipped} == {"low", "mid", "high", "flaky", "sink"}
    assert not active.is_complete  # 'a' is still in flight
    attempt = active.current_attempt("a")
    assert attempt is not None
    active.fail_attempt(attempt.attempt_id, FailureClass.CANCELLED, "canceled")
    assert active.is_complete


def test_resume_starts_after_succeeded_steps() -> None:
    active = ActiveExecution(
        ExecutionPlan.from_job(fan), run_id="r", clock=FakeClock(), already_succeeded={"a", "mid"}
    )
    assert [p.key for p in active.ready_in_order()] == ["high", "flaky", "low"]
