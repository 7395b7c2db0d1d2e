"""The Kubernetes manifests under workers/k8s/manifests validate against the official
client's models, and the Role grants exactly what the launcher's API module calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from workers.k8s.api import PERMISSIONS
from workers.k8s.schema import check_json

MANIFESTS = Path(__file__).resolve().parents[2] / "workers" / "k8s" / "manifests"
MODELS = {
    "Deployment": "V1Deployment",
    "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
    "ConfigMap": "V1ConfigMap",
    "Secret": "V1Secret",
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


@pytest.mark.parametrize(("where", "doc"), documents(), ids=[w for w, _ in documents()])
def test_every_manifest_is_valid_for_the_clients_model_of_its_kind(
    where: str, doc: dict[str, Any]
) -> None:
    model = MODELS[doc["kind"]]
    assert check_json(doc, model, doc["kind"]) == []
    # The client's own deserialisation also checks required fields and value types.
    built = client.ApiClient()._ApiClient__deserialize(doc, model)  # type: ignore[attr-defined]
    assert built.metadata.name == doc["metadata"]["name"]
    assert doc["metadata"]["namespace"] == "coreexec"


def test_the_manifests_hold_workers_per_band_a_coordinator_rbac_and_settings() -> None:
    names = {where.split(":", 1)[1] for where, _ in documents()}
    assert {
        "Deployment/coreexec-worker-high",
        "Deployment/coreexec-worker-default",
        "Deployment/coreexec-worker-low",
        "Deployment/coreexec-coordinator",
        "ServiceAccount/coreexec-launcher",
        "Role/coreexec-launcher",
        "RoleBinding/coreexec-launcher",
        "ConfigMap/coreexec-settings",
        "Secret/coreexec-broker",
    } <= names


def test_the_role_grants_exactly_the_calls_of_the_launchers_api_module() -> None:
    role = next(doc for _, doc in documents() if doc["kind"] == "Role")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == PERMISSIONS


def test_the_checker_names_a_snake_case_key_and_a_wrong_type() -> None:
    problems = check_json(
        {"image_pull_policy": "Never", "ports": [{"containerPort": "http"}]},
        "V1Container",
        "container_config",
    )
    assert problems == [
        "container_config.image_pull_policy: not a field of V1Container "
        "(Kubernetes JSON is camelCase: 'imagePullPolicy')",
        "container_config.ports[0].containerPort: expected int, got str",
    ]
