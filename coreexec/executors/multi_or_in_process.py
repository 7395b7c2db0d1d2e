"""The default executor: multiprocess unless the run config selects in-process.

Run config selects and configures it::

    execution:
      config:
        multiprocess: {max_concurrent: 4}   # the default when neither is given
        # or
        in_process: {}
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError

from coreexec.executors.base import (
    OUT_OF_PROCESS_REQUIREMENTS,
    Executor,
    ExecutorDefinition,
    ExecutorRequirement,
    InitExecutorContext,
)
from coreexec.executors.in_process import InProcessConfig, in_process_executor
from coreexec.executors.multiprocess import MultiprocessConfig, MultiprocessExecutor
from coreexec.executors.one_of import OneOfConfig

_SELECTORS = ("multiprocess", "in_process")


def _refuse_misplaced(value: dict[str, Any]) -> None:
    """A multiprocess setting given straight under ``execution.config`` belongs under
    ``multiprocess:`` for this executor; say so rather than "extra inputs"."""
    misplaced = [
        key for key in value if key not in _SELECTORS and key in MultiprocessConfig.model_fields
    ]
    if misplaced:
        key = misplaced[0]
        message = (
            f"{key}: the default executor (multi_or_in_process) takes its settings under "
            f"multiprocess: (or in_process:), e.g. execution: {{config: {{multiprocess: "
            f"{{{key}: ...}}}}}}; straight under execution.config they belong to "
            "multiprocess_executor"
        )
        # Braces in a custom error's template are left as they are when it has no context.
        raise PydanticCustomError("misplaced_key", message)


class MultiOrInProcessConfig(OneOfConfig):
    """``{multiprocess: {...}}`` (the default) or ``{in_process: {...}}``."""

    choices = _SELECTORS

    multiprocess: MultiprocessConfig | None = None
    in_process: InProcessConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _misplaced(cls, value: Any) -> Any:
        if isinstance(value, dict):
            _refuse_misplaced(value)
        return value


def _requirements(config: BaseModel | None) -> frozenset[ExecutorRequirement]:
    if isinstance(config, MultiOrInProcessConfig) and config.in_process is not None:
        return frozenset()
    return OUT_OF_PROCESS_REQUIREMENTS


def _create(context: InitExecutorContext) -> Executor:
    config = context.config_as(MultiOrInProcessConfig)
    if config.in_process is not None:
        chosen = InitExecutorContext(
            job=context.job, config=config.in_process, instance=context.instance
        )
        return in_process_executor.create(chosen)
    return MultiprocessExecutor(config.multiprocess or MultiprocessConfig())


multi_or_in_process_executor = ExecutorDefinition(
    name="multi_or_in_process",
    factory=_create,
    config_schema=MultiOrInProcessConfig,
    requirements=OUT_OF_PROCESS_REQUIREMENTS,
    requirements_fn=_requirements,
    description=(
        "The default executor: the multiprocess executor, or the in-process one when the "
        "run config says {execution: {config: {in_process: {}}}}."
    ),
    requirement_hint=(
        "or run this job in the coordinating process: pass run config "
        "{'execution': {'config': {'in_process': {}}}} or call job.execute_in_process()"
    ),
)
"""Multiprocess by default; ``{"in_process": {}}`` in the run config runs every step here."""
