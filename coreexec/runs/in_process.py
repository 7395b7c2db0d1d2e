"""``job.execute_in_process()``: the whole run in this process, outputs in memory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coreexec.executors.in_process import in_process_executor
from coreexec.instance import Instance
from coreexec.io_managers import InMemoryIOManager
from coreexec.job import JobDefinition
from coreexec.result import ExecutionResult
from coreexec.runs.create import create_run
from coreexec.runs.execute import execute_run, raise_for, result_of
from coreexec.tags import TagValue


def execute_in_process(
    job: JobDefinition,
    *,
    run_config: Mapping[str, Any] | None = None,
    raise_on_error: bool = True,
    tags: Mapping[str, TagValue] | None = None,
    instance: Instance | None = None,
) -> ExecutionResult:
    chosen = instance or Instance.ephemeral_instance()
    config = dict(run_config or {})
    # The job's own executor does not apply here, but its config section may be present.
    execution = config.pop("execution", None)
    in_process_config = None
    if execution:
        in_process_config = (execution.get("config") or {}).get("in_process")
    if in_process_config:
        config["execution"] = {"config": in_process_config}
    record = create_run(
        job, run_config=config, tags=tags, instance=chosen, executor_def=in_process_executor
    )
    context = execute_run(
        record.run_id,
        instance=chosen,
        job=job,
        executor_def=in_process_executor,
        io_manager=InMemoryIOManager(),
    )
    result = result_of(context)
    if raise_on_error:
        raise_for(context, result)
    return result
