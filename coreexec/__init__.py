"""coreexec: run data-pipeline jobs — DAGs of Python steps — in-process, on a process pool
or on a Celery worker fleet, with priorities and global tag-concurrency limits."""

from coreexec.context import StepContext
from coreexec.definitions import Definitions
from coreexec.errors import CoreExecError, Failure, RetryRequested
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.job import JobDefinition, job
from coreexec.plan import ExecutionPlan
from coreexec.reference import load_job
from coreexec.result import ExecutionResult
from coreexec.retry import Backoff, FailureClass, Jitter, RetryPolicy
from coreexec.runs.execute import execute_job
from coreexec.runs.handle import RunHandle
from coreexec.runs.submit import submit_job
from coreexec.step import Out, StepDefinition, step
from coreexec.storage.base import RunStatus

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "CoreExecError",
    "Definitions",
    "Event",
    "EventKind",
    "ExecutionPlan",
    "ExecutionResult",
    "Failure",
    "FailureClass",
    "Instance",
    "Jitter",
    "JobDefinition",
    "Out",
    "RetryPolicy",
    "RetryRequested",
    "RunHandle",
    "RunStatus",
    "StepContext",
    "StepDefinition",
    "execute_job",
    "job",
    "load_job",
    "step",
    "submit_job",
]
