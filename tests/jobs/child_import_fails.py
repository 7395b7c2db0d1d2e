"""A job whose module imports in the coordinator but fails in any worker process."""

from __future__ import annotations

import multiprocessing

from coreexec import job, step

if multiprocessing.parent_process() is not None:
    raise RuntimeError("imported in a worker process on purpose")


@step
def one() -> int:
    return 1


@job
def job_of_a_module_children_cannot_import() -> None:
    one()
