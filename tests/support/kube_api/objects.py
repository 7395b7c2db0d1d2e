"""Validation and defaulting of the objects the test API server accepts.

The checks are the ones a launcher can get wrong: names (DNS-1123), label keys and
values, annotations, a Job's restartPolicy, containers with a name and an image, numeric
fields in range, resource quantities. Failures are ``422 Invalid`` with one cause per
field, as the real server answers. Defaults are filled as the real server fills them, so
clients read back the shapes they would get from a cluster.
"""

from __future__ import annotations

import random
import re
import string
from decimal import Decimal, InvalidOperation
from typing import Any

from tests.support.kube_api.errors import invalid
from tests.support.kube_api.store import Obj

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[KMGTPE]i?|[mkMGTPE]|)$")
_SUFFIX = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
Causes = list[tuple[str, str]]

CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
JOB_NAME = "batch.kubernetes.io/job-name"


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes quantity (``48Mi``, ``0.5``, ``100m``, ``1e3``) as a number."""
    match = _QUANTITY.match(str(value))
    if match is None:
        raise ValueError(f"quantities must match the regular expression {_QUANTITY.pattern!r}")
    number, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as exc:
        raise ValueError(f"{value!r} is not a number") from exc
    if suffix[:1] in ("e", "E"):
        return base * Decimal(10) ** int(suffix[1:])
    return base * Decimal(_SUFFIX[suffix])


def _check_name(path: str, name: Any, causes: Causes, pattern: re.Pattern[str], limit: int) -> None:
    if not isinstance(name, str) or not name:
        causes.append((path, "Required value: name or generateName is required"))
    elif len(name) > limit:
        causes.append((path, f'Invalid value: "{name}": must be no more than {limit} characters'))
    elif not pattern.match(name):
        causes.append(
            (
                path,
                f'Invalid value: "{name}": a lowercase RFC 1123 name must consist of lower case '
                "alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character",
            )
        )


def _check_key(path: str, key: str, causes: Causes) -> None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        causes.append((path, f'Invalid value: "{key}": prefix part must be a DNS-1123 subdomain'))
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        causes.append(
            (
                path,
                f'Invalid value: "{key}": name part must consist of alphanumeric characters, '
                "'-', '_' or '.', must start and end with an alphanumeric character, and be "
                "no more than 63 characters",
            )
        )


def check_metadata(meta: Any, path: str, causes: Causes, *, name_limit: int = 253) -> None:
    """Labels, annotations and (when ``path`` is top level) the name."""
    if not isinstance(meta, dict):
        causes.append((path, "Required value"))
        return
    if path == "metadata":
        _check_name("metadata.name", meta.get("name"), causes, _DNS1123_SUBDOMAIN, name_limit)
    for key, value in (meta.get("labels") or {}).items():
        _check_key(f"{path}.labels", key, causes)
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(
                (
                    f"{path}.labels",
                    f'Invalid value: "{value}": a valid label must be an empty string or consist '
                    "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                    "alphanumeric character, no more than 63 characters",
                )
            )
    annotations = meta.get("annotations") or {}
    for key, value in annotations.items():
        _check_key(f"{path}.annotations", key, causes)
        if not isinstance(value, str):
            causes.append((f"{path}.annotations", f"Invalid value: {key}: must be a string"))
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > 256 * 1024:
        causes.append((f"{path}.annotations", "Too long: must have at most 262144 bytes"))


def _check_resources(path: str, resources: Any, causes: Causes) -> None:
    for section in ("limits", "requests"):
        for name, value in ((resources or {}).get(section) or {}).items():
            try:
                parse_quantity(value)
            except ValueError as exc:
                causes.append((f"{path}.{section}[{name}]", f'Invalid value: "{value}": {exc}'))


def check_pod_spec(spec: Any, path: str, causes: Causes) -> None:
    """Containers with names and images, resources, grace period."""
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not containers:
        causes.append((f"{path}.containers", "Required value"))
        return
    for index, container in enumerate(containers):
        where = f"{path}.containers[{index}]"
        _check_name(f"{where}.name", container.get("name"), causes, _DNS1123_LABEL, 63)
        if not container.get("image"):
            causes.append((f"{where}.image", "Required value"))
        _check_resources(f"{where}.resources", container.get("resources"), causes)
        for env in container.get("env") or []:
            if not env.get("name"):
                causes.append((f"{where}.env[].name", "Required value"))
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or grace < 0):
        causes.append(
            (f"{path}.terminationGracePeriodSeconds", "must be greater than or equal to 0")
        )


def validate_job(job: Obj) -> None:
    """Raise 422 Invalid for a Job the real API server would reject."""
    causes: Causes = []
    meta = job.get("metadata") or {}
    # The Job's name becomes the job-name label of its pods, so 63 characters at most.
    check_metadata(meta, "metadata", causes, name_limit=63)
    spec = job.get("spec") or {}
    template = spec.get("template") or {}
    check_metadata(template.get("metadata") or {}, "spec.template.metadata", causes)
    pod_spec = template.get("spec") or {}
    check_pod_spec(pod_spec, "spec.template.spec", causes)
    policy = pod_spec.get("restartPolicy")
    if policy not in ("Never", "OnFailure"):
        message = (
            'Required value: valid values: "OnFailure", "Never"'
            if policy is None
            else f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"'
        )
        causes.append(("spec.template.spec.restartPolicy", message))
    for name, minimum in (("backoffLimit", 0), ("activeDeadlineSeconds", 1)):
        value = spec.get(name)
        if value is not None and (not isinstance(value, int) or value < minimum):
            causes.append((f"spec.{name}", f"Invalid value: {value}: must be >= {minimum}"))
    ttl = spec.get("ttlSecondsAfterFinished")
    if ttl is not None and (not isinstance(ttl, int) or ttl < 0):
        causes.append(("spec.ttlSecondsAfterFinished", f"Invalid value: {ttl}: must be >= 0"))
    if causes:
        raise invalid("Job", "batch", str(meta.get("name", "")), causes)


def generated_name(prefix: str) -> str:
    """``generateName`` expansion: the prefix and five random characters."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return prefix + "".join(random.choice(alphabet) for _ in range(5))


def _default_pull_policy(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    if "@" in name:
        return "IfNotPresent"
    tag = name.split(":", 1)[1] if ":" in name else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def default_pod_spec(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for container in spec["containers"]:
        container.setdefault("imagePullPolicy", _default_pull_policy(container["image"]))
        container.setdefault("resources", {})
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")


def default_job(job: Obj, uid: str) -> None:
    """Fill a new Job's defaults, selector and the controller labels of its template."""
    meta = job["metadata"]
    meta["uid"] = uid
    meta["generation"] = 1
    spec = job["spec"]
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    spec.setdefault("manualSelector", False)
    controller = {CONTROLLER_UID: uid, JOB_NAME: meta["name"]}
    spec["selector"] = {"matchLabels": {CONTROLLER_UID: uid}}
    template_meta = spec["template"].setdefault("metadata", {})
    labels = template_meta.setdefault("labels", {})
    labels.update(controller)
    labels.update({"controller-uid": uid, "job-name": meta["name"]})
    if not meta.get("labels"):
        meta["labels"] = dict(labels)
    default_pod_spec(spec["template"]["spec"])
    job["status"] = {}


def pod_for_job(job: Obj) -> Obj:
    """The pod the Job controller creates from the Job's template."""
    meta = job["metadata"]
    template = job["spec"]["template"]
    pod_meta: Obj = {
        "name": generated_name(meta["name"] + "-"),
        "generateName": meta["name"] + "-",
        "namespace": meta["namespace"],
        "labels": dict(template["metadata"].get("labels") or {}),
        "annotations": dict(template["metadata"].get("annotations") or {}),
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    return {
        "metadata": pod_meta,
        "spec": dict(template["spec"]),
        "status": {"phase": "Pending", "qosClass": _qos_class(template["spec"])},
    }


def _qos_class(spec: Obj) -> str:
    resources = [c.get("resources") or {} for c in spec["containers"]]
    if not any(r.get("limits") or r.get("requests") for r in resources):
        return "BestEffort"
    guaranteed = all(
        r.get("limits", {}).get("cpu") and r.get("limits", {}).get("memory") for r in resources
    )
    return "Guaranteed" if guaranteed else "Burstable"


def short_random(length: int = 5) -> str:
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(length))
