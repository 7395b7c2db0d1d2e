"""What a step container is given: its name, labels, command and environment.

The command holds the attempt's identifiers only; settings reach the entrypoint through
the environment (``env_vars``, and the worker's ``COREEXEC_REDIS_URL`` and
``COREEXEC_HOME`` unless a ``settings_file`` is mounted). ``docker inspect`` shows the
command, the environment and the labels; it does not show the settings file's content.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coreexec.attempt_runner import AttemptIds
from coreexec.instance import HOME_ENV, REDIS_URL_ENV, STORAGE_URL_ENV
from workers.docker.config import DockerConfig
from workers.entrypoint import DEFAULT_SETTINGS_FILE, SETTINGS_FILE_ENV
from workers.launch_config import entrypoint_args, env_var_values
from workers.launcher import launch_name

LABEL_PREFIX = "coreexec."
MANAGED_LABEL = "coreexec.managed"
RUN_LABEL = "coreexec.run_id"
JOB_LABEL = "coreexec.job"
STEP_LABEL = "coreexec.step_key"
ATTEMPT_ID_LABEL = "coreexec.attempt_id"
ATTEMPT_LABEL = "coreexec.attempt"
SUPERVISOR_LABEL = "coreexec.supervisor"


def labels_of(ids: AttemptIds, owner: str) -> dict[str, str]:
    """Labels of an attempt's container: how sweeps and later attempts find it."""
    return {
        MANAGED_LABEL: "1",
        RUN_LABEL: ids.run_id,
        JOB_LABEL: ids.job_reference,
        STEP_LABEL: ids.step_key,
        ATTEMPT_ID_LABEL: ids.attempt_id,
        ATTEMPT_LABEL: str(ids.attempt_number),
        SUPERVISOR_LABEL: owner,
    }


def command_of(config: DockerConfig, ids: AttemptIds) -> list[str]:
    return [*config.command, *entrypoint_args(ids)]


def environment_of(
    config: DockerConfig, *, redis_url: str, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The container's environment: forwarded and literal ``env_vars``, and (without a
    settings file) the settings the entrypoint needs, as this worker has them."""
    env = os.environ if environ is None else environ
    result: dict[str, str] = {}
    if config.settings_file is None:
        result[REDIS_URL_ENV] = redis_url
        for name in (HOME_ENV, STORAGE_URL_ENV):
            if env.get(name):
                result[name] = env[name]
    else:
        result[SETTINGS_FILE_ENV] = DEFAULT_SETTINGS_FILE
    result.update(env_var_values(config.env_vars, env))
    return result


def volumes_of(config: DockerConfig) -> dict[str, dict[str, str]] | list[str]:
    volumes = config.volumes
    if config.settings_file is None:
        return volumes
    mount = f"{os.path.abspath(config.settings_file)}:{DEFAULT_SETTINGS_FILE}:ro"
    if isinstance(volumes, list):
        return [*volumes, mount]
    return {
        **volumes,
        os.path.abspath(config.settings_file): {"bind": DEFAULT_SETTINGS_FILE, "mode": "ro"},
    }


@dataclass(frozen=True)
class ContainerSpec:
    """The arguments of ``containers.create`` for one attempt."""

    name: str
    image: str
    kwargs: Mapping[str, Any]


def spec_of(config: DockerConfig, ids: AttemptIds, *, owner: str, redis_url: str) -> ContainerSpec:
    assert config.image is not None, "check_steps() refuses container steps without an image"
    kwargs: dict[str, Any] = {
        **config.container_kwargs,
        "command": command_of(config, ids),
        "labels": {**config.container_kwargs.get("labels", {}), **labels_of(ids, owner)},
        "environment": environment_of(config, redis_url=redis_url),
        "detach": True,
    }
    volumes = volumes_of(config)
    if volumes:
        kwargs["volumes"] = volumes
    if config.network in ("host", "none"):
        kwargs["network_mode"] = config.network
    elif config.network:
        kwargs["network"] = config.network
    return ContainerSpec(launch_name(ids), config.image, kwargs)
