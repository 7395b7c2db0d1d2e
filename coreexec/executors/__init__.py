"""Executors that run in the coordinating machine: in-process, multiprocess, and the
default that picks between them. The Celery executors live in ``celery_app``."""

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
from coreexec.executors.multi_or_in_process import multi_or_in_process_executor
from coreexec.executors.multiprocess import multiprocess_executor


def default_executor_def() -> ExecutorDefinition:
    """The executor of a job that names none, in a Definitions that names none:
    ``multi_or_in_process_executor`` (multiprocess unless the run config says
    ``{"execution": {"config": {"in_process": {}}}}``)."""
    return multi_or_in_process_executor


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
    "multi_or_in_process_executor",
    "multiprocess_executor",
]
