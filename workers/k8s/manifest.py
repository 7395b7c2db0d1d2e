"""The Job of one step attempt: name, labels, annotations, the pod and its container.

One Job per attempt: ``backoffLimit: 0`` (the coordinator, not Kubernetes, retries),
``restartPolicy: Never``, the deterministic name of the attempt (DNS-1123, at most 63
characters), labels to find it by run, job, step and attempt, the full step key and job
reference in annotations (label values are limited to 63 characters of a small alphabet).
The container's args hold the attempt's identifiers only; settings and secrets reach it
through ``env_secrets`` / ``env_config_maps`` and forwarded ``env_vars``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from coreexec.attempt_runner import AttemptIds
from workers.k8s.config import DEFAULT_SECURITY_CONTEXT, K8sConfig
from workers.k8s.overrides import K8sOverrides, deep_merge
from workers.launch_config import entrypoint_args, env_var_values
from workers.launcher import launch_name

LABEL_PREFIX = "coreexec.io/"
RUN_LABEL = "coreexec.io/run-id"
JOB_LABEL = "coreexec.io/job"
STEP_LABEL = "coreexec.io/step"
ATTEMPT_ID_LABEL = "coreexec.io/attempt-id"
MANAGED_LABEL = "app.kubernetes.io/managed-by"
MANAGED_VALUE = "coreexec"
STEP_KEY_ANNOTATION = "coreexec.io/step-key"
RUN_ANNOTATION = "coreexec.io/run-id"
JOB_REFERENCE_ANNOTATION = "coreexec.io/job-reference"
ATTEMPT_ANNOTATION = "coreexec.io/attempt"
SUPERVISOR_ANNOTATION = "coreexec.io/supervisor"
CONTAINER_NAME = "step"

_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")
_EDGE = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


def label_value(text: str) -> str:
    """``text`` as a valid label value: invalid runs become ``_``, at most 63 characters
    (a long value keeps its start and ends with a hash of the whole, so values stay
    distinct)."""
    value = _EDGE.sub("", _INVALID.sub("_", text))
    if len(value) > 63:
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        value = _EDGE.sub("", value[:52]) + "-" + digest
    return value


def labels_of(ids: AttemptIds) -> dict[str, str]:
    """The launcher's labels on the Job and its pod."""
    return {
        MANAGED_LABEL: MANAGED_VALUE,
        RUN_LABEL: label_value(ids.run_id),
        JOB_LABEL: label_value(ids.job_reference.rpartition(":")[2] or ids.job_reference),
        STEP_LABEL: label_value(ids.step_key),
        ATTEMPT_ID_LABEL: label_value(ids.attempt_id),
    }


def annotations_of(ids: AttemptIds, owner: str) -> dict[str, str]:
    return {
        RUN_ANNOTATION: ids.run_id,
        STEP_KEY_ANNOTATION: ids.step_key,
        JOB_REFERENCE_ANNOTATION: ids.job_reference,
        ATTEMPT_ANNOTATION: str(ids.attempt_number),
        SUPERVISOR_ANNOTATION: owner,
    }


def env_of(config: K8sConfig, environ: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """``env_vars`` as container env: ``NAME=value`` literally, ``NAME`` forwarded from
    this process's environment (left out when it is not set here)."""
    return [
        {"name": name, "value": value} for name, value in env_var_values(config.env_vars, environ)
    ]


def base_overrides(config: K8sConfig, environ: Mapping[str, str] | None = None) -> K8sOverrides:
    """The executor's ``k8s`` block as the five sections the tags merge into."""
    container: dict[str, Any] = {
        "imagePullPolicy": config.image_pull_policy,
        "securityContext": dict(config.security_context or DEFAULT_SECURITY_CONTEXT),
    }
    if config.job_image:
        container["image"] = config.job_image
    if config.resources:
        container["resources"] = dict(config.resources)
    env = env_of(config, environ)
    if env:
        container["env"] = env
    env_from = [{"configMapRef": {"name": n}} for n in config.env_config_maps]
    env_from += [{"secretRef": {"name": n}} for n in config.env_secrets]
    if env_from:
        container["envFrom"] = env_from
    if config.volume_mounts:
        container["volumeMounts"] = list(config.volume_mounts)
    pod: dict[str, Any] = {"terminationGracePeriodSeconds": config.termination_grace_period_s}
    optional = {
        "serviceAccountName": config.service_account_name,
        "imagePullSecrets": config.pull_secrets(),
        "volumes": list(config.volumes),
        "nodeSelector": dict(config.node_selector),
        "tolerations": list(config.tolerations),
    }
    pod.update({key: value for key, value in optional.items() if value})
    job_spec: dict[str, Any] = {}
    if config.job_wait_timeout_s is not None:
        job_spec["activeDeadlineSeconds"] = config.job_wait_timeout_s
    if config.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = config.ttl_seconds_after_finished
    labels = {"labels": dict(config.labels)} if config.labels else {}
    return K8sOverrides(container, pod, labels, job_spec, labels)


def job_manifest(
    config: K8sConfig, overrides: K8sOverrides, ids: AttemptIds, *, owner: str
) -> dict[str, Any]:
    """The Job for one attempt: ``overrides`` (already merged over the base) plus what
    the launcher owns, which always wins."""
    name = launch_name(ids)
    labels = labels_of(ids)
    container = deep_merge(
        overrides.container_config,
        {"name": CONTAINER_NAME, "command": list(config.command), "args": entrypoint_args(ids)},
    )
    pod_meta = deep_merge(overrides.pod_template_spec_metadata, {"labels": labels})
    pod_meta = deep_merge(pod_meta, {"annotations": annotations_of(ids, owner)})
    pod_spec = deep_merge(
        overrides.pod_spec_config, {"restartPolicy": "Never", "containers": [container]}
    )
    job_meta = deep_merge(
        overrides.job_metadata,
        {"name": name, "namespace": config.namespace, "labels": labels,
         "annotations": annotations_of(ids, owner)},
    )  # fmt: skip
    spec = deep_merge(
        overrides.job_spec_config,
        {"backoffLimit": 0, "template": {"metadata": pod_meta, "spec": pod_spec}},
    )
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta, "spec": spec}
