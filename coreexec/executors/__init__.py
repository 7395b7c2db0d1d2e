"""Executors that run in the coordinating machine: in-process (and, by configuration,
the default). The Celery executors live in ``celery_app``."""

from coreexec.executors.base import (
    DispatchingExecutor,
    Executor,
    ExecutorDefinition,
    ExecutorRequirement,
    InitExecutorContext,
    RetriesConfig,
    executor,
)
from coreexec.executors.in_process import in_process_executor


def default_executor_def() -> ExecutorDefinition:
    """The executor of a job that names none, in a Definitions that names none."""
    return in_process_executor


__all__ = [
    "DispatchingExecutor",
    "Executor",
    "ExecutorDefinition",
    "ExecutorRequirement",
    "InitExecutorContext",
    "RetriesConfig",
    "default_executor_def",
    "executor",
    "in_process_executor",
]
