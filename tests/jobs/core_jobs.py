"""Jobs the core tests load by reference (``tests.jobs.core_jobs:<name>``)."""

from __future__ import annotations

from pydantic import BaseModel

from coreexec import Definitions, StepContext, job, step


class ScaleConfig(BaseModel):
    factor: int = 2


@step
def numbers() -> list[int]:
    return [1, 2, 3]


@step(config_schema=ScaleConfig)
def scale(context: StepContext, values: list[int]) -> list[int]:
    config = context.config
    assert isinstance(config, ScaleConfig)
    context.log.info("scaling by %d", config.factor)
    return [value * config.factor for value in values]


@step
def total(values: list[int]) -> int:
    return sum(values)


@job
def scale_job() -> None:
    total(scale(numbers()))


@step
def broken() -> int:
    raise ValueError("broken on purpose")


@job
def broken_job() -> None:
    total(scale(numbers()))
    broken()


defs = Definitions(jobs=[scale_job, broken_job])

not_a_job = 42
