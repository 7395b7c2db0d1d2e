"""The ``docker`` config block and the per-step tag ``coreexec-docker/config``.

Precedence: the executor's ``docker`` block, then the step's tag (``image`` replaces,
``container_kwargs`` are merged key by key, ``env_vars`` are added, a name given twice
taking the step's value). The block travels to workers in the run's settings hash
(never in a message); the registry password does not travel at all, only the name of
the environment variable the worker reads it from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from coreexec.errors import ConfigError, DefinitionError
from coreexec.plan import PlannedStep
from coreexec.run_config import validation_error
from workers.launch_config import EnvVars, merge_env_vars

DOCKER_CONFIG_TAG = "coreexec-docker/config"
"""Per-step overrides, JSON: ``{"image": ..., "container_kwargs": {...}, "env_vars": [...]}``."""

DEFAULT_COMMAND = ("coreexec-step",)
"""The step entrypoint as installed in the worker image (``python -m workers.entrypoint``)."""

RESERVED_KWARGS = frozenset({"image", "command", "name", "environment", "detach"})
"""Set by the launcher itself; ``container_kwargs`` may not give them (``labels`` may be
given: the launcher's ``coreexec.*`` labels are added to them)."""


class RegistryConfig(BaseModel):
    """A registry to log in to before pulling; the password comes from the worker's
    environment variable ``password_env``, so no message or settings hash holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1)
    username: str = Field(min_length=1)
    password_env: str = Field(min_length=1)
    """Name of the environment variable (on the worker) holding the password."""


def check_container_kwargs(value: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse keys the launcher sets, and keys the Docker SDK does not know (when the
    SDK is installed here)."""
    reserved = sorted(RESERVED_KWARGS & set(value))
    if reserved:
        raise ValueError(f"key {reserved[0]!r} is set by the launcher; remove it")
    try:
        from docker.models.containers import RUN_CREATE_KWARGS, RUN_HOST_CONFIG_KWARGS
    except ImportError:  # pragma: no cover - the docker extra is not installed here
        return dict(value)
    known = set(RUN_CREATE_KWARGS) | set(RUN_HOST_CONFIG_KWARGS) | {"ports", "volumes"}
    unknown = sorted(set(value) - known - {"network", "networking_config"})
    if unknown:
        raise ValueError(
            f"key {unknown[0]!r} is not an argument of the Docker SDK's containers.create"
        )
    return dict(value)


ContainerKwargs = Annotated[dict[str, Any], AfterValidator(check_container_kwargs)]
"""The type of a ``container_kwargs`` field."""


class DockerConfig(BaseModel):
    """The ``docker`` block of ``celery_docker_executor`` and ``docker_executor``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = None
    """The step image (with coreexec installed); a step's tag may name another."""
    registry: RegistryConfig | None = None
    env_vars: EnvVars = Field(default_factory=list)
    """``NAME`` (forwarded from the supervising worker's environment) or ``NAME=value``.
    ``docker inspect`` shows them: put secrets in ``settings_file`` instead."""
    network: str | None = None
    """Network of the container (``host``, ``none`` or a network's name)."""
    networks: list[str] = Field(default_factory=list)
    """More networks the container joins after it is created."""
    volumes: list[str] | dict[str, dict[str, str]] = Field(default_factory=list)
    """As the Docker SDK takes them: ``["/host:/ctr:ro"]`` or ``{"/host": {...}}``."""
    container_kwargs: ContainerKwargs = Field(default_factory=dict)
    """More arguments of the SDK's ``containers.create`` (``mem_limit``, ``user``, ...)."""
    keep_containers: bool = False
    """Keep ended containers (for debugging); ``coreexec-containers sweep`` removes them."""
    stop_timeout_s: float = Field(default=10.0, ge=0)
    """Grace between SIGTERM and SIGKILL when a step is cancelled or superseded."""
    settings_file: str | None = None
    """A file of ``NAME=value`` lines on the worker host, mounted read-only as the
    entrypoint's settings (not shown by ``docker inspect``). Without it the launcher
    passes the worker's ``COREEXEC_REDIS_URL`` and ``COREEXEC_HOME`` in the environment."""
    docker_host: str | None = None
    """The daemon's socket (default: ``DOCKER_HOST``, else ``unix:///var/run/docker.sock``)."""
    command: list[str] = Field(default_factory=lambda: list(DEFAULT_COMMAND))
    """How the image starts the step entrypoint; the attempt's identifiers follow."""
    log_lines: int = Field(default=50, ge=0)
    """Lines of a container's output saved into the run's events at its end."""

    def for_step(self, step: PlannedStep) -> DockerConfig:
        """This config with the step's ``coreexec-docker/config`` tag over it."""
        override = step_override(step)
        if override is None:
            return self
        env = merge_env_vars(self.env_vars, override.env_vars)
        return self.model_copy(
            update={
                "image": override.image or self.image,
                "container_kwargs": {**self.container_kwargs, **override.container_kwargs},
                "env_vars": env,
            }
        )


class StepDockerConfig(BaseModel):
    """What the tag ``coreexec-docker/config`` may set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = None
    container_kwargs: ContainerKwargs = Field(default_factory=dict)
    env_vars: EnvVars = Field(default_factory=list)


def step_override(step: PlannedStep) -> StepDockerConfig | None:
    """The step's tag parsed; a DefinitionError naming the step and the field."""
    raw = step.tags.get(DOCKER_CONFIG_TAG)
    if raw is None:
        return None
    owner = f"step {step.key!r}: tag {DOCKER_CONFIG_TAG}"
    try:
        loaded = json.loads(raw)
    except ValueError as exc:
        raise DefinitionError(f"{owner} is not JSON ({exc})") from exc
    try:
        return StepDockerConfig.model_validate(loaded)
    except ValidationError as exc:
        raise DefinitionError(str(validation_error(owner, exc))) from exc


def parse_docker_config(raw: Mapping[str, Any] | None, *, path: str) -> DockerConfig:
    """A ``docker`` block from JSON (the run's settings); errors name ``path``."""
    try:
        return DockerConfig.model_validate(dict(raw or {}))
    except ValidationError as exc:
        raise validation_error(path, exc) from exc


def check_steps(steps: list[PlannedStep], config: DockerConfig, docker_steps: set[str]) -> None:
    """Before a run: every step's tag parses, and every container step has an image."""
    for step in steps:
        merged = config.for_step(step)
        if step.key in docker_steps and not merged.image:
            raise ConfigError(
                f"step {step.key!r} runs in a container but no image is set: give the "
                f"executor's docker.image or the step's tag {DOCKER_CONFIG_TAG} "
                '\'{"image": "..."}\'',
                path="docker.image",
            )
