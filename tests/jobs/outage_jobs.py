"""Jobs for the Redis outage tests (``tests.jobs.outage_jobs:<name>``).

``root`` and ``hold`` have priority 5 (queue ``coreexec.high``); ``part_0..2`` and
``join`` stay on ``coreexec.default``, so a test that starts no worker for that queue
before the outage has attempts that are queued and unclaimed while Redis is down.
``hold`` runs until the gate file ``$COREEXEC_HOME/gates/hold`` exists. Every execution
of a step is counted in ``$COREEXEC_HOME/marks/<step_key>`` (see
:mod:`tests.jobs.submission_jobs`).
"""

from __future__ import annotations

from coreexec import StepContext, job, step
from coreexec.executors import ExecutorDefinition
from tests.jobs.submission_jobs import _mark, _wait_for_gate

HIGH = {"coreexec/priority": 5}


@step(tags=HIGH)
def root() -> int:
    _mark("root")
    return 1


@step(tags=HIGH)
def hold(value: int) -> int:
    _wait_for_gate("hold")
    _mark("hold")
    return value


@step
def join(held: int, parts: list[int]) -> int:
    _mark("join")
    return held + sum(parts)


@step
def marked_part(context: StepContext, value: int) -> int:
    _mark(context.step_key)
    return value


def _executor(**extra: float) -> ExecutorDefinition:
    from celery_app import celery_executor

    return celery_executor.configured(
        {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 3.0, "queued_timeout_s": 60.0, **extra}
    )


def _body() -> None:
    value = root()
    join(hold(value), [marked_part.alias(f"part_{i}")(value) for i in range(3)])


outage = job(name="outage", executor_def=_executor())(_body)
"""Rides out outages shorter than the default tolerance (60 s)."""

outage_short_tolerance = job(
    name="outage_short_tolerance", executor_def=_executor(redis_outage_tolerance_s=1.0)
)(_body)
"""Fails in an outage longer than 1 s."""
