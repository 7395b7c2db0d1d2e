"""Jobs for the fleet tests (``tests.jobs.fleet_jobs:<name>``): nothing shared on disk.

Processes of these tests each have their own empty ``$COREEXEC_HOME``, so steps leave
their marks in Redis (``$COREEXEC_REDIS_URL``), under keys of their run:
``fleet:{run}:runs:{step}`` counts executions, ``fleet:{run}:home:{step}`` is the home of
the process that ran it, ``fleet:{run}:pid:{step}`` the pid of a gated step while it
waits, and the step ``gated`` waits until ``fleet:{run}:gate`` exists.
"""

from __future__ import annotations

import os
import time

import redis
from pydantic import BaseModel

from coreexec import Failure, StepContext, job, step
from coreexec.executors import ExecutorDefinition

GATE_POLL_S = 0.02
WIDE_STEPS = 48


def client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["COREEXEC_REDIS_URL"])


def key(run_id: str, what: str, step_key: str = "") -> str:
    return f"fleet:{run_id}:{what}" + (f":{step_key}" if step_key else "")


def _mark(context: StepContext) -> None:
    with client() as redis_client:
        redis_client.incr(key(context.run_id, "runs", context.step_key))
        redis_client.set(key(context.run_id, "home", context.step_key), os.environ["COREEXEC_HOME"])


@step
def source(context: StepContext) -> list[int]:
    _mark(context)
    return [1, 2, 3]


@step
def square(context: StepContext, values: list[int]) -> list[int]:
    _mark(context)
    offset = int(context.step_key.rsplit("_", 1)[1])
    return [value * value + offset for value in values]


@step
def total(context: StepContext, parts: list[list[int]]) -> int:
    _mark(context)
    return sum(map(sum, parts))


@step
def gated(context: StepContext, values: list[int]) -> list[int]:
    _mark(context)
    with client() as redis_client:
        redis_client.set(key(context.run_id, "pid", context.step_key), os.getpid())
        # The step itself waits (the work a coordinator's death must not lose).
        while not redis_client.exists(key(context.run_id, "gate")):
            time.sleep(GATE_POLL_S)
    return [value + 100 for value in values]


class WideConfig(BaseModel):
    fail: bool = False


@step
def root() -> int:
    return 1


@step(config_schema=WideConfig)
def leaf(context: StepContext, value: int) -> int:
    if context.config.fail:
        raise Failure(f"{context.step_key} was told to fail", allow_retries=False)
    return value + 1


@step
def gather(values: list[int]) -> int:
    return sum(values)


def _celery_executor() -> ExecutorDefinition:
    from celery_app import celery_executor

    return celery_executor.configured(
        {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 5.0, "queued_timeout_s": 120.0}
    )


@job(executor_def=_celery_executor())
def fanout() -> None:
    values = source()
    total([square.alias(f"square_{index}")(values) for index in range(3)])


@job(executor_def=_celery_executor())
def gated_fanout() -> None:
    values = gated(source())
    total([square.alias(f"square_{index}")(values) for index in range(2)])


@job(executor_def=_celery_executor())
def wide() -> None:
    """1 + 48 + 1 = 50 steps; with ``fail`` in leaf_7's config, leaf_7 fails."""
    start = root()
    gather([leaf.alias(f"leaf_{index}")(start) for index in range(WIDE_STEPS)])
