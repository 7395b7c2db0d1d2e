"""Jobs tagged for tag-concurrency limits (``tests.jobs.limited_jobs:<name>``)."""

from __future__ import annotations

from coreexec import job, step
from coreexec.executors import in_process_executor


@step(tags={"database": "warehouse"})
def load_rows() -> int:
    return 1


@job(executor_def=in_process_executor)
def warehouse_job() -> None:
    load_rows()
