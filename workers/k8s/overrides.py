"""Per-job and per-step Kubernetes overrides: the tag ``coreexec-k8s/config``.

The tag's value is JSON with up to five sections, each Kubernetes JSON (camelCase)::

    {"container_config": {...},            # merged into the step's container
     "pod_spec_config": {...},             # into the pod's spec
     "pod_template_spec_metadata": {...},  # into the pod's metadata
     "job_spec_config": {...},             # into the Job's spec
     "job_metadata": {...}}                # into the Job's metadata

Precedence, lowest first: the executor's ``k8s`` block, the job's tag, the step's tag.
Merging is deep: mappings merge key by key, lists of objects that have a ``name``
(``env``, ``volumes``, ``volumeMounts``, ``imagePullSecrets``) merge by name, any other
list or value is replaced by the later one. So a step's ``container_config.resources``
wins over the executor's ``resources``, and a step's ``env`` entry replaces the one of
the same name. Fields the launcher owns (the container's ``name``/``command``/``args``,
``restartPolicy``, ``backoffLimit``, the Job's ``name``...) are refused, naming the step
and the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coreexec.errors import DefinitionError
from workers.k8s.schema import check_json

K8S_CONFIG_TAG = "coreexec-k8s/config"

SECTIONS: dict[str, str] = {
    "container_config": "V1Container",
    "pod_spec_config": "V1PodSpec",
    "pod_template_spec_metadata": "V1ObjectMeta",
    "job_spec_config": "V1JobSpec",
    "job_metadata": "V1ObjectMeta",
}
RESERVED: dict[str, frozenset[str]] = {
    "container_config": frozenset({"name", "command", "args"}),
    "pod_spec_config": frozenset({"containers", "restartPolicy"}),
    "pod_template_spec_metadata": frozenset({"name", "namespace", "generateName"}),
    "job_spec_config": frozenset(
        {"backoffLimit", "template", "selector", "completions", "parallelism", "manualSelector"}
    ),
    "job_metadata": frozenset({"name", "namespace", "generateName"}),
}


@dataclass(frozen=True)
class K8sOverrides:
    """The five sections, each a Kubernetes JSON mapping."""

    container_config: Mapping[str, Any] = field(default_factory=dict)
    pod_spec_config: Mapping[str, Any] = field(default_factory=dict)
    pod_template_spec_metadata: Mapping[str, Any] = field(default_factory=dict)
    job_spec_config: Mapping[str, Any] = field(default_factory=dict)
    job_metadata: Mapping[str, Any] = field(default_factory=dict)

    def merged(self, later: K8sOverrides) -> K8sOverrides:
        """These overrides with ``later`` over them (deep merge)."""
        return K8sOverrides(
            **{name: deep_merge(getattr(self, name), getattr(later, name)) for name in SECTIONS}
        )


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, Mapping) and "name" in i for i in items)


def deep_merge(base: Any, later: Any) -> Any:
    """``later`` over ``base``; see the module docstring for lists."""
    if isinstance(base, Mapping) and isinstance(later, Mapping):
        result = dict(base)
        for key, value in later.items():
            result[key] = deep_merge(base[key], value) if key in base else value
        return result
    if isinstance(base, list) and isinstance(later, list) and _named(base) and _named(later):
        by_name = {item["name"]: item for item in base}
        for item in later:
            name = item["name"]
            by_name[name] = deep_merge(by_name[name], item) if name in by_name else item
        return list(by_name.values())
    return later


def parse_overrides(raw: str | None, owner: str) -> K8sOverrides:
    """A tag's value parsed and checked; DefinitionError naming ``owner`` and the field."""
    if raw is None:
        return K8sOverrides()
    where = f"{owner}: tag {K8S_CONFIG_TAG}"
    try:
        loaded = json.loads(raw)
    except ValueError as exc:
        raise DefinitionError(f"{where} is not JSON ({exc})") from exc
    if not isinstance(loaded, Mapping):
        raise DefinitionError(f"{where} must be a JSON object with keys {', '.join(SECTIONS)}")
    unknown = sorted(set(loaded) - set(SECTIONS))
    if unknown:
        raise DefinitionError(
            f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(SECTIONS)}"
        )
    for section, value in loaded.items():
        check_section(section, value, where)
    return K8sOverrides(**{k: dict(v) for k, v in loaded.items()})


def check_section(section: str, value: Any, where: str) -> None:
    """Refuse launcher-owned fields and keys the section's Kubernetes type lacks."""
    if not isinstance(value, Mapping):
        raise DefinitionError(f"{where}: {section} must be an object (Kubernetes JSON)")
    owned = sorted(RESERVED[section] & set(value))
    if owned:
        raise DefinitionError(
            f"{where}: {section}.{owned[0]} is set by the Kubernetes launcher; remove it"
        )
    problems = check_json(value, SECTIONS[section], section)
    if problems:
        raise DefinitionError(f"{where}: {problems[0]}")


def overrides_for(
    job_tags: Mapping[str, str], step_tags: Mapping[str, str], *, job: str, step: str
) -> K8sOverrides:
    """The job's tag with the step's tag over it."""
    job_level = parse_overrides(job_tags.get(K8S_CONFIG_TAG), f"job {job!r}")
    step_level = parse_overrides(step_tags.get(K8S_CONFIG_TAG), f"step {step!r}")
    return job_level.merged(step_level)
