"""Which Kubernetes settings a step gets: the run's ``k8s`` block with the job's and the
step's tag ``coreexec-k8s/config`` over it, checked before a run starts.

No import of the ``kubernetes`` client here, so the executors can check a run's steps
in processes that never launch a Job.
"""

from __future__ import annotations

from collections.abc import Iterable

from coreexec.attempt_runner import PreparedAttempt
from coreexec.errors import ConfigError
from coreexec.job import JobDefinition
from coreexec.plan import PlannedStep
from workers.k8s.config import K8sConfig, parse_k8s_config
from workers.k8s.manifest import base_overrides
from workers.k8s.overrides import K8sOverrides, overrides_for
from workers.registry import K8S


def merged_overrides(config: K8sConfig, job: JobDefinition, step: PlannedStep) -> K8sOverrides:
    """The executor's block, then the job's tag, then the step's tag (deep merge); a
    ConfigError naming the step when no image results."""
    tags = overrides_for(job.tags, step.tags, job=job.name, step=step.key)
    overrides = base_overrides(config).merged(tags)
    if not overrides.container_config.get("image"):
        raise ConfigError(
            f"step {step.key!r} runs as a Kubernetes Job but no image is set: give "
            "the executor's k8s.job_image or the tag coreexec-k8s/config "
            '\'{"container_config": {"image": "..."}}\'',
            path="k8s.job_image",
        )
    return overrides


def check_steps(
    job: JobDefinition, steps: Iterable[PlannedStep], config: K8sConfig, k8s_steps: set[str]
) -> None:
    """Before a run: every tag parses, and every step that runs as a Job has an image."""
    for step in steps:
        if step.key in k8s_steps:
            merged_overrides(config, job, step)
        else:
            overrides_for(job.tags, step.tags, job=job.name, step=step.key)


def k8s_config_of(prepared: PreparedAttempt) -> tuple[K8sConfig, K8sOverrides]:
    """The run's ``k8s`` block and the job's and step's tags merged over it."""
    raw = prepared.info.settings.launcher_config.get(K8S)
    config = parse_k8s_config(raw, path="k8s")
    return config, merged_overrides(config, prepared.job, prepared.step)
