"""The ``k8s`` config block of ``celery_k8s_job_executor`` and ``k8s_job_executor``.

Every dict here is Kubernetes JSON as in a manifest (camelCase: ``imagePullPolicy``,
``runAsUser``, ``mountPath``), checked against the official client's models so a
snake_case or misspelt key is an error naming the field. Per-step and per-job overrides
come from the tag ``coreexec-k8s/config`` (:mod:`workers.k8s.overrides`). The block
travels to workers in the run's settings (never in a message); secrets never travel in
it: the pod gets them from ``env_secrets`` (Secrets the cluster holds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coreexec.run_config import validation_error
from workers.k8s.schema import check_json
from workers.launch_config import EnvVars

DEFAULT_COMMAND = ("coreexec-step",)
"""The step entrypoint as installed in the step image (``python -m workers.entrypoint``)."""

DEFAULT_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
"""The step container's securityContext unless ``security_context`` replaces it."""


def _checked(value: Any, type_name: str, field: str) -> Any:
    problems = check_json(value, type_name, field)
    if problems:
        raise ValueError("; ".join(problems))
    return value


class K8sConfig(BaseModel):
    """What the Kubernetes launcher needs to run a step attempt as a Job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_image: str | None = None
    """The step image (coreexec and the job's code installed); a tag may name another."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str | dict[str, str]] = Field(default_factory=list)
    """Secret names (or ``{"name": ...}``) for pulling the image."""
    service_account_name: str | None = None
    namespace: str = "default"
    env_config_maps: list[str] = Field(default_factory=list)
    """ConfigMaps whose keys become the pod's environment (``envFrom``)."""
    env_secrets: list[str] = Field(default_factory=list)
    """Secrets whose keys become the pod's environment (``envFrom``), e.g. the Redis URL."""
    env_vars: EnvVars = Field(default_factory=list)
    """``NAME`` (forwarded from the launching worker's environment) or ``NAME=value``;
    ``kubectl describe`` shows them: put secrets in ``env_secrets``."""
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    """Added to the Job and its pod (the launcher's own ``coreexec.io/*`` labels win)."""
    resources: dict[str, Any] = Field(default_factory=dict)
    """The container's ``resources``; a step's ``container_config.resources`` wins."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    security_context: dict[str, Any] | None = None
    """The container's securityContext; None means DEFAULT_SECURITY_CONTEXT (non-root)."""
    termination_grace_period_s: int = Field(default=30, ge=0)
    keep_jobs: bool = False
    """Keep ended Jobs (debugging); the TTL and ``coreexec-k8s sweep`` still remove them."""
    schedule_timeout_s: float = Field(default=300.0, gt=0)
    """From the pod's creation to its PodScheduled condition."""
    start_timeout_s: float = Field(default=300.0, gt=0)
    """From the pod's scheduling to its container running."""
    job_wait_timeout_s: int | None = Field(default=86400, gt=0)
    """The Job's activeDeadlineSeconds; its expiry is a ``timeout`` failure."""
    ttl_seconds_after_finished: int | None = Field(default=3600, ge=0)
    """The Job's TTL after it ends, the backstop of the launcher's own cleanup."""
    load_incluster_config: bool | None = None
    """True: the pod's service account; False: a kubeconfig; None: in-cluster when
    KUBERNETES_SERVICE_HOST is set, else the kubeconfig."""
    kubeconfig_file: str | None = None
    context: str | None = None
    command: list[str] = Field(default_factory=lambda: list(DEFAULT_COMMAND))
    """How the image starts the step entrypoint; the attempt's identifiers follow as args."""
    log_lines: int = Field(default=50, ge=0)
    """Lines of the pod's log saved into the run's events at its end."""
    request_timeout_s: float = Field(default=30.0, gt=0)
    """Timeout of one API request (not of a watch)."""
    api_retries: int = Field(default=5, ge=0)
    """Retries of an API request that got 429, a 5xx or no answer (backoff, jitter)."""
    pod_creations_per_s: float = Field(default=10.0, gt=0)
    """Jobs this process creates per second at most (each Job makes one pod)."""

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _checked(value, "List[V1Volume]", "volumes")  # type: ignore[no-any-return]

    @field_validator("volume_mounts")
    @classmethod
    def _mounts(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _checked(value, "List[V1VolumeMount]", "volume_mounts")  # type: ignore[no-any-return]

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _checked(value, "V1ResourceRequirements", "resources")  # type: ignore[no-any-return]

    @field_validator("tolerations")
    @classmethod
    def _tolerations(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _checked(value, "List[V1Toleration]", "tolerations")  # type: ignore[no-any-return]

    @field_validator("security_context")
    @classmethod
    def _security(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        return _checked(value, "V1SecurityContext", "security_context")  # type: ignore[no-any-return]

    def pull_secrets(self) -> list[dict[str, str]]:
        return [{"name": s} if isinstance(s, str) else dict(s) for s in self.image_pull_secrets]


def parse_k8s_config(raw: Mapping[str, Any] | None, *, path: str) -> K8sConfig:
    """A ``k8s`` block from JSON (the run's settings); errors name ``path``."""
    try:
        return K8sConfig.model_validate(dict(raw or {}))
    except ValidationError as exc:
        raise validation_error(path, exc) from exc
