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

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from coreexec.executors.base import (
    Executor,
    ExecutorDefinition,
    ExecutorRequirement,
    InitExecutorContext,
)
from coreexec.executors.in_process import InProcessConfig, in_process_executor
from coreexec.executors.multiprocess import (
    MULTIPROCESS_REQUIREMENTS,
    MultiprocessConfig,
    MultiprocessExecutor,
)

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


class MultiOrInProcessConfig(BaseModel):
    """``{multiprocess: {...}}`` (the default) or ``{in_process: {...}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    multiprocess: MultiprocessConfig | None = None
    in_process: InProcessConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _selected(cls, value: Any) -> Any:
        # ``in_process:`` with nothing after it (None in YAML) selects it with defaults.
        if isinstance(value, dict):
            _refuse_misplaced(value)
            return {key: ({} if item is None else item) for key, item in value.items()}
        return value

    @model_validator(mode="after")
    def _one_of(self) -> MultiOrInProcessConfig:
        if self.multiprocess is not None and self.in_process is not None:
            raise ValueError("give either multiprocess: {...} or in_process: {...}, not both")
        return self


def _requirements(config: BaseModel | None) -> frozenset[ExecutorRequirement]:
    if isinstance(config, MultiOrInProcessConfig) and config.in_process is not None:
        return frozenset()
    return MULTIPROCESS_REQUIREMENTS


def _create(context: InitExecutorContext) -> Executor:
    config = context.config
    assert isinstance(config, MultiOrInProcessConfig)
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
    requirements=MULTIPROCESS_REQUIREMENTS,
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
