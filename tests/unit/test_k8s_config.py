"""The ``k8s`` block, the tag ``coreexec-k8s/config`` and the Job they make: precedence,
refused fields, names and labels the API accepts, and what a pod's status means."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from coreexec.attempt_runner import AttemptIds
from coreexec.errors import ConfigError, DefinitionError
from workers.k8s.config import K8sConfig, parse_k8s_config
from workers.k8s.manifest import base_overrides, job_manifest, label_value
from workers.k8s.overrides import K8S_CONFIG_TAG, deep_merge, overrides_for
from workers.k8s.pod_state import blocking_problem, pod_view
from workers.launcher import launch_name

DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
IDS = AttemptIds("run-1", "extract.eu/part 1", 2, "a" * 32, "pkg.jobs:etl")


def tag(**sections: Any) -> dict[str, str]:
    return {K8S_CONFIG_TAG: json.dumps(sections)}


def manifest(config: K8sConfig, job_tags: dict[str, str], step_tags: dict[str, str]) -> Any:
    overrides = base_overrides(config, environ={"FORWARDED": "yes"}).merged(
        overrides_for(job_tags, step_tags, job="etl", step=IDS.step_key)
    )
    return job_manifest(config, overrides, IDS, owner="worker@host")


def test_precedence_is_executor_then_job_tag_then_step_tag_deep_merged() -> None:
    config = K8sConfig(
        job_image="img:1",
        resources={"limits": {"memory": "1Gi", "cpu": "1"}},
        env_vars=["FORWARDED", "LEVEL=executor", "MISSING_HERE"],
        labels={"team": "data"},
    )
    job_tags = tag(container_config={"image": "img:2", "env": [{"name": "LEVEL", "value": "job"}]})
    step_tags = tag(
        container_config={"resources": {"limits": {"memory": "48Mi"}}},
        pod_spec_config={"nodeSelector": {"pool": "big"}},
        job_metadata={"labels": {"team": "ml"}},
    )
    job = manifest(config, job_tags, step_tags)
    container = job["spec"]["template"]["spec"]["containers"][0]

    assert container["image"] == "img:2"
    assert container["resources"] == {"limits": {"memory": "48Mi", "cpu": "1"}}
    assert container["env"] == [
        {"name": "FORWARDED", "value": "yes"},
        {"name": "LEVEL", "value": "job"},
    ]
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "big"}
    assert job["metadata"]["labels"]["team"] == "ml"
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "data"


def test_the_launcher_owns_name_labels_restart_policy_backoff_and_args() -> None:
    job = manifest(K8sConfig(job_image="img:1"), {}, {})
    name = job["metadata"]["name"]
    assert name == launch_name(IDS) and len(name) <= 63 and DNS_1123.match(name)
    labels = job["metadata"]["labels"]
    assert all(LABEL.match(value) and len(value) <= 63 for value in labels.values())
    assert labels["coreexec.io/step"] == "extract.eu_part_1"
    assert job["metadata"]["annotations"]["coreexec.io/step-key"] == IDS.step_key
    assert job["spec"]["backoffLimit"] == 0
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["containers"][0]["args"][:2] == ["--run-id", "run-1"]
    assert spec["containers"][0]["securityContext"]["runAsUser"] == 10001


def test_long_label_values_are_cut_to_63_characters_and_stay_distinct() -> None:
    first, second = label_value("s" * 80 + "1"), label_value("s" * 80 + "2")
    assert len(first) <= 63 and LABEL.match(first) and first != second
    assert label_value("-weird key/") == "weird_key"


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"container_config": {"args": ["x"]}}, "container_config.args is set by the Kubernetes"),
        ({"job_spec_config": {"backoffLimit": 3}}, "job_spec_config.backoffLimit is set by"),
        ({"container_config": {"image_pull_policy": "Never"}}, "camelCase: 'imagePullPolicy'"),
        ({"pod_spec": {}}, "unknown key 'pod_spec'"),
    ],
)
def test_a_bad_tag_names_the_step_and_the_field(sections: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError) as raised:
        overrides_for({}, tag(**sections), job="etl", step="load")
    assert "step 'load': tag coreexec-k8s/config" in str(raised.value)
    assert message in str(raised.value)


def test_a_bad_executor_block_names_the_field() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_k8s_config({"volumes": [{"name": "v", "config_map": {}}]}, path="k8s")
    assert "k8s.volumes" in str(raised.value) and "configMap" in str(raised.value)


def test_lists_of_named_objects_merge_by_name_other_lists_are_replaced() -> None:
    merged = deep_merge(
        {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "args": ["x"]},
        {"env": [{"name": "B", "value": "3"}], "args": ["y"]},
    )
    assert merged == {
        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}],
        "args": ["y"],
    }


def pod(state: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "uid": "u", "creationTimestamp": "2026-12-02T00:00:00Z"},
        "status": {
            "phase": status.pop("phase", "Pending"),
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastTransitionTime": "2026-12-02T00:00:01Z",
                }
            ],
            "containerStatuses": [{"name": "step", "state": state}],
            **status,
        },
    }


def test_pod_status_reads_waiting_reasons_terminations_and_evictions() -> None:
    pulling = pod_view(pod({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off"}}))
    assert blocking_problem(pulling, "img:9") == (
        "image 'img:9' cannot be pulled (ImagePullBackOff): Back-off"
    )
    creating = pod_view(pod({"waiting": {"reason": "ContainerCreating"}}))
    assert blocking_problem(creating, "img:9") is None and creating.scheduled_at is not None
    oom = pod_view(pod({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, phase="Failed"))
    assert oom.ended and oom.terminated is not None and oom.terminated.reason == "OOMKilled"
    evicted = pod_view(pod({}, phase="Failed", reason="Evicted", message="low on memory"))
    assert evicted.ended and evicted.pod_reason == "Evicted"
