"""Creating a run: check its job, config and executor, and store its record (QUEUED)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from coreexec.errors import (
    RequirementError,
)
from coreexec.executors import default_executor_def
from coreexec.executors.base import (
    ExecutorDefinition,
    ExecutorRequirement,
)
from coreexec.instance import Instance
from coreexec.job import JobDefinition
from coreexec.reference import infer_reference, load_job
from coreexec.run_config import check_run_config, execution_config
from coreexec.storage.base import RunRecord, RunStatus
from coreexec.tags import IO_URL_TAG, TagValue, normalize_tags


def resolve_executor_def(job: JobDefinition) -> ExecutorDefinition:
    """The job's executor, else its Definitions' (set on load), else the default."""
    if job.executor_def is not None:
        return job.executor_def
    return default_executor_def()


def check_requirements(
    executor_def: ExecutorDefinition,
    job: JobDefinition,
    reference: str | None,
    instance: Instance,
    config: BaseModel | None = None,
) -> None:
    """Fail before the run starts when the executor cannot run this job here."""
    needs = executor_def.requirements_for(config)
    hint = f"; {executor_def.requirement_hint}" if executor_def.requirement_hint else ""
    if ExecutorRequirement.RECONSTRUCTABLE_JOB in needs and reference is None:
        raise RequirementError(
            f"executor {executor_def.name!r} loads job {job.name!r} in other processes, so the "
            "job must be reachable as 'package.module:attribute': define it at module level "
            "in an importable module (not in __main__ or inside a function) and run it by "
            "reference, e.g. `coreexec run mypkg.jobs:my_job`" + hint
        )
    if ExecutorRequirement.NON_EPHEMERAL_INSTANCE in needs and instance.ephemeral:
        raise RequirementError(
            f"executor {executor_def.name!r} needs run storage other processes can reach, "
            "but the instance is ephemeral; use Instance.from_env() (COREEXEC_HOME) or "
            "execute_in_process() for a run that stays in this process" + hint
        )
    if ExecutorRequirement.PERSISTENT_OUTPUTS in needs and instance.ephemeral:
        raise RequirementError(
            f"executor {executor_def.name!r} passes outputs between processes through files "
            "under COREEXEC_HOME or at COREEXEC_IO_URL; use a durable instance "
            "(Instance.from_env())" + hint
        )


def run_io_url(instance: Instance, exec_config: BaseModel | None) -> str | None:
    """Where a new run's outputs go: the executor config's ``io_url``, else the
    instance's (None: files under the instance's home)."""
    io_url = getattr(exec_config, "io_url", None)
    return io_url if isinstance(io_url, str) and io_url else instance.io_url


def _resolve_job(job: JobDefinition | str) -> JobDefinition:
    return load_job(job) if isinstance(job, str) else job


def create_run(
    job: JobDefinition | str,
    *,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, TagValue] | None = None,
    instance: Instance,
    executor_def: ExecutorDefinition | None = None,
) -> RunRecord:
    """Validate everything and store a QUEUED run; nothing runs yet.

    Raises ConfigError, JobReferenceError, RequirementError before any record is made.
    """
    definition = _resolve_job(job)
    config = check_run_config(definition, run_config)
    chosen = executor_def or resolve_executor_def(definition)
    exec_config = chosen.resolve_config(execution_config(config))
    reference = definition.reference or infer_reference(definition)
    check_requirements(chosen, definition, reference, instance, exec_config)
    now = time.time()
    run_tags = {**definition.tags, **normalize_tags(tags, owner="run tags")}
    io_url = run_io_url(instance, exec_config)
    if io_url:
        run_tags[IO_URL_TAG] = io_url
    record = RunRecord(
        run_id=uuid.uuid4().hex,
        job_name=definition.name,
        status=RunStatus.QUEUED,
        job_reference=reference,
        tags=run_tags,
        run_config=config,
        created_at=now,
        updated_at=now,
    )
    instance.storage.add_run(record)
    return record
