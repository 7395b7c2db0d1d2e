"""Executors that run in the coordinating machine: in-process, multiprocess, and the
default that picks between them; ``dask_executor`` (imported on first use, it needs the
``dask`` extra). The Celery executors live in ``celery_app``."""

from typing import Any

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


def __getattr__(name: str) -> Any:
    # Dask is an optional extra: only ``from coreexec.executors import dask_executor``
    # imports it.
    if name == "dask_executor":
        from coreexec.executors.dask import dask_executor

        return dask_executor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
