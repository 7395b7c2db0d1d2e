"""Jobs with ``async def`` steps (``tests.jobs.async_jobs:<name>``).

Each napping step returns where and when it slept: ``entered`` and ``left`` (monotonic
clock, shared by every process of the machine) around its ``await asyncio.sleep``, the
pid and the thread, so a test measures concurrency from what the steps saw. Run tags
steer them: ``sleep_s`` (how long a nap lasts), ``mark_dir`` (the blocking steps write
``<step_key>.entered`` and ``<step_key>.cancelled`` there).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from celery_app import celery_executor
from coreexec import RetryPolicy, StepContext, job, step

WIDTH = 50


class Scale(BaseModel):
    factor: int = 1


def _where(entered: float) -> dict[str, Any]:
    return {
        "entered": entered,
        "left": time.monotonic(),
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "main_thread": threading.current_thread() is threading.main_thread(),
    }


@step
def seed() -> int:
    return 3


@step(config_schema=Scale)
async def nap(context: StepContext, base: int) -> dict[str, Any]:
    index = int(context.step_key.rsplit("_", 1)[1])
    entered = time.monotonic()
    await asyncio.sleep(float(context.run_tags.get("sleep_s", "0.2")))
    assert isinstance(context.config, Scale)
    return {"value": base * index * context.config.factor, **_where(entered)}


@step
def sync_nap(context: StepContext, base: int) -> dict[str, Any]:
    """A sync step that holds its thread (time.sleep) while async steps nap."""
    entered = time.monotonic()
    time.sleep(float(context.run_tags.get("sync_sleep_s", "0.3")))
    return {"value": base, **_where(entered)}


@step
def total(parts: list[dict[str, Any]]) -> int:
    return sum(int(part["value"]) for part in parts)


def _fanout() -> None:
    base = seed()
    total([nap.alias(f"nap_{i}")(base) for i in range(WIDTH)])


async_fanout = job(name="async_fanout")(_fanout)
async_fanout_celery = job(name="async_fanout", executor_def=celery_executor)(_fanout)


@job
def async_beside_sync() -> None:
    base = seed()
    parts = [nap.alias(f"nap_{i}")(base) for i in range(WIDTH)]
    total([*parts, sync_nap(base)])


# -- retries --------------------------------------------------------------------------


@step(retry_policy=RetryPolicy(max_retries=2))
async def flaky(context: StepContext) -> int:
    await asyncio.sleep(0)
    if context.attempt < 3:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return context.attempt


@job
def async_flaky() -> None:
    flaky()


# -- cancellation ---------------------------------------------------------------------


def _mark(context: StepContext, what: str) -> None:
    mark_dir = Path(context.run_tags["mark_dir"])
    (mark_dir / f"{context.step_key}.{what}").write_text(str(os.getpid()))


@step
async def hang(context: StepContext) -> int:
    _mark(context, "entered")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        _mark(context, "cancelled")
        raise
    return 0


@step
def after(value: int) -> int:
    return value


@job
def async_hangers() -> None:
    for i in range(3):
        after.alias(f"after_{i}")(hang.alias(f"hang_{i}")())
