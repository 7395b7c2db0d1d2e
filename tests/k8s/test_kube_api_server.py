"""The test API server, driven through the real ``kubernetes`` client and its kubeconfig.

These pin down the behaviour the Kubernetes launcher relies on: shapes and versions of
objects, 409/404/422 Status errors, watch resume and 410 Gone, delete propagation, the
Job controller's pod and events, the kubelet's phases, failures and logs.
"""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.support.kube_api import LocalProcessBackend, TestCluster
from tests.support.kube_api.waits import wait_for

# The test API server itself is what these pin down.
pytestmark = pytest.mark.k8s_test_server

NS = "default"
PY = sys.executable


def job_manifest(name: str, code: str = "print('hello')", **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "python:3.11",
        "command": [PY, "-c", textwrap.dedent(code)],
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"coreexec.io/run-id": "r1"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"coreexec.io/step": "s1"}},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
            **spec,
        },
    }


@pytest.fixture
def batch(kube_client: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(kube_client)


@pytest.fixture
def core(kube_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_client)


def pods_of(core: client.CoreV1Api, job: str, condition: Any, **kw: Any) -> list[Any]:
    return wait_for(core.list_namespaced_pod, condition, NS, label_selector=f"job-name={job}", **kw)


def phase_is(*phases: str) -> Any:
    return lambda pods: len(pods) == 1 and pods[0].status.phase in phases


def job_has(batch: client.BatchV1Api, name: str, condition_type: str) -> Any:
    def done(jobs: list[Any]) -> bool:
        conds = (jobs[0].status.conditions or []) if jobs else []
        return any(c.type == condition_type and c.status == "True" for c in conds)

    return wait_for(batch.list_namespaced_job, done, NS, field_selector=f"metadata.name={name}")[0]


def events_for(core: client.CoreV1Api, kind: str, name: str) -> list[Any]:
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    return core.list_namespaced_event(NS, field_selector=selector).items


def test_a_job_runs_its_pod_to_success_with_controller_labels_logs_and_versions(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    created = batch.create_namespaced_job(NS, job_manifest("ok", "print('hello from the pod')"))
    assert created.kind == "Job" and created.api_version == "batch/v1"
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert int(created.metadata.resource_version) > 0
    assert created.spec.backoff_limit == 0 and created.spec.completions == 1

    pod = pods_of(core, "ok", phase_is("Succeeded"))[0]
    labels = pod.metadata.labels
    assert labels["coreexec.io/step"] == "s1"
    assert labels["job-name"] == labels["batch.kubernetes.io/job-name"] == "ok"
    assert labels["controller-uid"] == created.metadata.uid
    owner = pod.metadata.owner_references[0]
    assert (owner.kind, owner.uid, owner.controller) == ("Job", created.metadata.uid, True)
    scheduled = {c.type: c.status for c in pod.status.conditions}
    assert scheduled["PodScheduled"] == "True" and pod.spec.node_name
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")

    log = core.read_namespaced_pod_log(pod.metadata.name, NS)
    assert log == "hello from the pod\n"
    done = job_has(batch, "ok", "Complete")
    assert done.status.succeeded == 1 and done.status.completion_time is not None
    listing = core.list_namespaced_pod(NS)
    assert int(listing.metadata.resource_version) >= int(pod.metadata.resource_version)
    reasons = [e.reason for e in events_for(core, "Job", "ok")]
    assert "SuccessfulCreate" in reasons and "Completed" in reasons


def test_errors_are_status_objects_409_404_422_and_401(
    batch: client.BatchV1Api, kube_cluster: TestCluster
) -> None:
    batch.create_namespaced_job(NS, job_manifest("dup"))
    with pytest.raises(client.ApiException) as conflict:
        batch.create_namespaced_job(NS, job_manifest("dup"))
    body = json.loads(conflict.value.body)
    assert conflict.value.status == 409
    assert (body["kind"], body["reason"], body["details"]["name"]) == (
        "Status",
        "AlreadyExists",
        "dup",
    )
    with pytest.raises(client.ApiException) as missing:
        batch.read_namespaced_job("nope", NS)
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["message"] == 'jobs.batch "nope" not found'

    bad = job_manifest("x" * 64)
    bad["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    bad["metadata"]["labels"]["coreexec.io/step"] = "not a valid value!"
    with pytest.raises(client.ApiException) as invalid:
        batch.create_namespaced_job(NS, bad)
    fields = {c["field"] for c in json.loads(invalid.value.body)["details"]["causes"]}
    assert invalid.value.status == 422
    assert fields == {"metadata.name", "metadata.labels", "spec.template.spec.restartPolicy"}

    anonymous = client.Configuration()
    anonymous.host = kube_cluster.url
    with client.ApiClient(anonymous) as api_client, pytest.raises(client.ApiException) as denied:
        client.BatchV1Api(api_client).list_namespaced_job(NS)
    assert denied.value.status == 401


def test_a_watch_resumes_from_a_version_and_gets_410_once_it_is_compacted(
    batch: client.BatchV1Api, core: client.CoreV1Api, kube_cluster: TestCluster
) -> None:
    start = core.list_namespaced_pod(NS).metadata.resource_version
    batch.create_namespaced_job(NS, job_manifest("w1"))
    pods_of(core, "w1", phase_is("Succeeded"))

    resumed = watch.Watch().stream(
        core.list_namespaced_pod, NS, resource_version=start, timeout_seconds=1
    )
    seen = [(e["type"], e["object"].status.phase) for e in resumed]
    assert seen[0] == ("ADDED", "Pending") and seen[-1] == ("MODIFIED", "Succeeded")

    kube_cluster.store.compact()
    with pytest.raises(client.ApiException) as gone:
        list(
            watch.Watch().stream(
                core.list_namespaced_pod, NS, resource_version=start, timeout_seconds=1
            )
        )
    assert gone.value.status == 410

    relisted = core.list_namespaced_pod(NS)
    assert [p.status.phase for p in relisted.items] == ["Succeeded"]
    batch.create_namespaced_job(NS, job_manifest("w2"))
    after = watch.Watch().stream(
        core.list_namespaced_pod,
        NS,
        label_selector="job-name=w2",
        resource_version=relisted.metadata.resource_version,
        timeout_seconds=5,
    )
    phases: list[str] = []
    with contextlib.closing(after):
        for event in after:
            phases.append(event["object"].status.phase)
            if phases[-1] == "Succeeded":
                break
    assert phases[-1:] == ["Succeeded"], "the watch from the re-listed version missed the pod"


def test_a_watch_without_events_ends_after_timeout_seconds_with_a_bookmark(
    core: client.CoreV1Api,
) -> None:
    version = core.list_namespaced_pod(NS).metadata.resource_version
    events = list(
        watch.Watch().stream(
            core.list_namespaced_pod,
            NS,
            resource_version=version,
            timeout_seconds=1,
            allow_watch_bookmarks=True,
            deserialize=False,
        )
    )
    assert [e["type"] for e in events] == ["BOOKMARK"]


@pytest.mark.parametrize("policy", ["Foreground", "Background"])
def test_delete_with_propagation_removes_the_job_and_its_running_pod(
    batch: client.BatchV1Api, core: client.CoreV1Api, policy: str
) -> None:
    code = """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (print('got SIGTERM', flush=True), sys.exit(0)))
        print('running', flush=True)
        time.sleep(120)
    """
    batch.create_namespaced_job(NS, job_manifest("del", code))
    pod = pods_of(core, "del", phase_is("Running"))[0]
    batch.delete_namespaced_job("del", NS, propagation_policy=policy)
    pods_of(core, "del", lambda pods: not pods)
    wait_for(batch.list_namespaced_job, lambda jobs: not jobs, NS)
    events = events_for(core, "Pod", pod.metadata.name)
    assert "Killing" in [e.reason for e in events]


def test_delete_without_a_policy_orphans_the_pod_with_the_servers_warning(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    batch.create_namespaced_job(NS, job_manifest("orph", "import time; time.sleep(120)"))
    pods_of(core, "orph", phase_is("Running"))
    response = batch.delete_namespaced_job("orph", NS, _preload_content=False)
    assert json.loads(response.data)["status"] == "Success"  # reading it frees the connection
    assert "child pods are preserved by default" in response.headers["Warning"]
    pod = core.list_namespaced_pod(NS, label_selector="job-name=orph").items[0]
    assert pod.status.phase == "Running" and not pod.metadata.owner_references
    core.delete_namespaced_pod(pod.metadata.name, NS, grace_period_seconds=0)
    pods_of(core, "orph", lambda pods: not pods)


def test_a_dropped_pod_creation_is_a_failed_create_warning_and_no_pod(
    batch: client.BatchV1Api, core: client.CoreV1Api, kube_cluster: TestCluster
) -> None:
    manifest = job_manifest("nosa")
    manifest["spec"]["template"]["spec"]["serviceAccountName"] = "missing"
    batch.create_namespaced_job(NS, manifest)
    selector = "involvedObject.kind=Job,involvedObject.name=nosa,type=Warning"
    events = wait_for(core.list_namespaced_event, bool, NS, field_selector=selector)
    assert events[0].reason == "FailedCreate"
    assert events[0].message == (
        'Error creating: pods "nosa-" is forbidden: error looking up service account '
        'default/missing: serviceaccount "missing" not found'
    )
    assert core.list_namespaced_pod(NS, label_selector="job-name=nosa").items == []


def test_an_unschedulable_pod_stays_pending_with_the_schedulers_reason_until_cleared(
    batch: client.BatchV1Api, core: client.CoreV1Api, kube_cluster: TestCluster
) -> None:
    reason = "0/1 nodes are available: 1 Insufficient memory."
    kube_cluster.kubelet.unschedulable = reason

    def unschedulable(pods: list[Any]) -> bool:
        conds = (pods[0].status.conditions or []) if pods else []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conds)

    batch.create_namespaced_job(NS, job_manifest("pend"))
    pod = pods_of(core, "pend", unschedulable)[0]
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    warnings = [e for e in events_for(core, "Pod", pod.metadata.name) if e.type == "Warning"]
    assert [(e.reason, e.message) for e in warnings] == [("FailedScheduling", reason)]
    kube_cluster.kubelet.unschedulable = None
    pods_of(core, "pend", phase_is("Succeeded"))


def test_a_node_selector_no_node_matches_is_unschedulable_as_the_scheduler_says(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    manifest = job_manifest("nomatch")
    manifest["spec"]["template"]["spec"]["nodeSelector"] = {"pool": "absent"}
    batch.create_namespaced_job(NS, manifest)

    def unschedulable(pods: list[Any]) -> bool:
        conds = (pods[0].status.conditions or []) if pods else []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conds)

    pod = pods_of(core, "nomatch", unschedulable)[0]
    (cond,) = pod.status.conditions
    assert (cond.status, pod.status.phase, pod.spec.node_name) == ("False", "Pending", None)
    assert cond.message == (
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
        "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    )
    warnings = [e for e in events_for(core, "Pod", pod.metadata.name) if e.type == "Warning"]
    assert [(e.reason, e.message, e.source.component) for e in warnings] == [
        ("FailedScheduling", cond.message, "default-scheduler")
    ]
    # A selector the node's well-known labels satisfy schedules.
    fitting = job_manifest("fits")
    fitting["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/os": "linux"}
    batch.create_namespaced_job(NS, fitting)
    pods_of(core, "fits", phase_is("Succeeded"))


def test_an_image_the_backend_does_not_have_cannot_be_pulled(tmp_path: Any) -> None:
    backend = LocalProcessBackend(entrypoints={"python:3.11": [PY]}, images={"python:3.11"})
    with TestCluster(tmp_path, backend) as cluster:
        api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        with api_client:
            batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
            batch.create_namespaced_job(NS, job_manifest("known"))
            manifest = job_manifest("unknown", container={"image": "registry.invalid/x:1"})
            batch.create_namespaced_job(NS, manifest)

            def pull_failed(pods: list[Any]) -> bool:
                statuses = (pods[0].status.container_statuses or []) if pods else []
                waiting = statuses[0].state.waiting if statuses else None
                return waiting is not None and waiting.reason == "ErrImagePull"

            pod = pods_of(core, "unknown", pull_failed)[0]
            assert "registry.invalid/x:1" in pod.status.container_statuses[0].state.waiting.message
            pods_of(core, "known", phase_is("Succeeded"))


def test_a_namespace_has_a_default_account_admits_content_and_is_deleted_with_it(
    batch: client.BatchV1Api, core: client.CoreV1Api, kube_cluster: TestCluster
) -> None:
    with pytest.raises(client.ApiException) as absent:
        batch.create_namespaced_job("nowhere", job_manifest("lost"))
    assert absent.value.status == 404
    assert json.loads(absent.value.body)["message"] == 'namespaces "nowhere" not found'

    created = core.create_namespace({"metadata": {"name": "scratch"}})
    assert created.status.phase == "Active"
    assert created.metadata.labels == {"kubernetes.io/metadata.name": "scratch"}
    accounts = core.list_namespaced_service_account("scratch").items
    assert [a.metadata.name for a in accounts] == ["default"]
    secret = {"metadata": {"name": "settings"}, "stringData": {"TOKEN": "s3cret"}}
    core.create_namespaced_secret("scratch", secret)
    assert core.read_namespaced_secret("settings", "scratch").data == {"TOKEN": "czNjcmV0"}
    env = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "settings", "key": "TOKEN"}}}]
    # It ignores SIGTERM, so the namespace stays Terminating for the grace period.
    code = """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", os.environ["T"], flush=True)
        time.sleep(60)
    """
    stubborn = job_manifest("long", code, container={"env": env})
    stubborn["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 2
    batch.create_namespaced_job("scratch", stubborn)
    (pod,) = wait_for(core.list_namespaced_pod, phase_is("Running"), "scratch")
    follow = core.read_namespaced_pod_log(
        pod.metadata.name, "scratch", follow=True, _preload_content=False
    )
    with contextlib.closing(follow):
        assert next(follow.stream(64)).startswith(b"ignoring SIGTERM s3cret")

    # The answer is the Namespace, finalizers pending (the client would read it as a Status).
    deleting = json.loads(core.delete_namespace("scratch", _preload_content=False).data)
    assert deleting["kind"] == "Namespace" and deleting["status"]["phase"] == "Terminating"
    assert deleting["metadata"]["deletionTimestamp"]
    with pytest.raises(client.ApiException) as refused:
        batch.create_namespaced_job("scratch", job_manifest("late"))
    assert refused.value.status == 403
    assert (
        "unable to create new content in namespace scratch because it is being terminated"
        in (json.loads(refused.value.body)["message"])
    )
    wait_for(core.list_namespace, lambda items: not items, field_selector="metadata.name=scratch")
    with pytest.raises(client.ApiException) as gone:
        core.read_namespace("scratch")
    assert gone.value.status == 404
    assert core.list_pod_for_all_namespaces().items == []
    assert batch.list_job_for_all_namespaces().items == []
    assert "create namespaces" in kube_cluster.requests()


@pytest.mark.parametrize(
    ("policy", "reasons"),
    [("IfNotPresent", ["ErrImagePull", "ImagePullBackOff"]), ("Never", ["ErrImageNeverPull"])],
)
def test_an_image_that_cannot_be_pulled_waits_with_the_kubelets_reasons(
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    kube_cluster: TestCluster,
    policy: str,
    reasons: list[str],
) -> None:
    kube_cluster.kubelet.unpullable_images = {"registry.invalid/nope:1"}
    manifest = job_manifest(
        "img", container={"image": "registry.invalid/nope:1", "imagePullPolicy": policy}
    )
    before = core.list_namespaced_pod(NS).metadata.resource_version
    batch.create_namespaced_job(NS, manifest)
    seen: list[str] = []
    stream = watch.Watch().stream(
        core.list_namespaced_pod, NS, resource_version=before, timeout_seconds=30
    )
    with contextlib.closing(stream):
        for event in stream:
            pod = event["object"]
            statuses = pod.status.container_statuses or []
            waiting = statuses[0].state.waiting if statuses else None
            if waiting is not None and waiting.reason not in seen:
                seen.append(waiting.reason)
            if seen and seen[-1] == reasons[-1]:
                break
    assert seen == ["ContainerCreating", *reasons]
    assert "registry.invalid/nope:1" in pod.status.container_statuses[0].state.waiting.message
    with pytest.raises(client.ApiException) as waiting:
        core.read_namespaced_pod_log(pod.metadata.name, NS)
    assert waiting.value.status == 400 and "is waiting to start" in waiting.value.body


def test_a_missing_secret_is_create_container_config_error(
    batch: client.BatchV1Api, core: client.CoreV1Api, kube_cluster: TestCluster
) -> None:
    kube_cluster.add_secret("present", {"TOKEN": "s3cret"})
    env = [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "K"}}}]
    batch.create_namespaced_job(NS, job_manifest("sec", container={"env": env}))

    def config_error(pods: list[Any]) -> bool:
        statuses = (pods[0].status.container_statuses or []) if pods else []
        waiting = statuses[0].state.waiting if statuses else None
        return waiting is not None and waiting.reason == "CreateContainerConfigError"

    pod = pods_of(core, "sec", config_error)[0]
    assert pod.status.container_statuses[0].state.waiting.message == 'secret "absent" not found'

    ok_env = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "present", "key": "TOKEN"}}}]
    code = "import os; print(os.environ['T'])"
    batch.create_namespaced_job(NS, job_manifest("sec2", code, container={"env": ok_env}))
    pod = pods_of(core, "sec2", phase_is("Succeeded"))[0]
    assert core.read_namespaced_pod_log(pod.metadata.name, NS) == "s3cret\n"


def test_an_evicted_pod_fails_with_reason_evicted(
    batch: client.BatchV1Api, core: client.CoreV1Api, kube_cluster: TestCluster
) -> None:
    batch.create_namespaced_job(NS, job_manifest("ev", "import time; time.sleep(120)"))
    pod = pods_of(core, "ev", phase_is("Running"))[0]
    kube_cluster.kubelet.evict(NS, pod.metadata.name)
    pod = pods_of(core, "ev", phase_is("Failed"))[0]
    assert pod.status.reason == "Evicted" and "low on resource" in pod.status.message
    assert job_has(batch, "ev", "Failed").status.failed == 1


def test_active_deadline_fails_the_job_and_removes_its_pod(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    manifest = job_manifest("dl", "import time; time.sleep(120)", activeDeadlineSeconds=1)
    batch.create_namespaced_job(NS, manifest)
    failed = job_has(batch, "dl", "Failed")
    assert [c.reason for c in failed.status.conditions if c.type == "Failed"] == [
        "DeadlineExceeded"
    ]
    pods_of(core, "dl", lambda pods: not pods)


def test_ttl_after_finished_deletes_a_finished_job_and_its_pod(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    batch.create_namespaced_job(NS, job_manifest("ttl", ttlSecondsAfterFinished=0))
    wait_for(
        batch.list_namespaced_job, lambda jobs: not jobs, NS, field_selector="metadata.name=ttl"
    )
    pods_of(core, "ttl", lambda pods: not pods)


def test_logs_follow_streams_until_the_container_ends_and_tail_lines_cuts(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    code = """
        import time
        for i in range(3):
            print(f'line {i}', flush=True)
            time.sleep(0.2)
    """
    batch.create_namespaced_job(NS, job_manifest("logs", code))
    pod = pods_of(core, "logs", phase_is("Running", "Succeeded"))[0]
    stream = core.read_namespaced_pod_log(
        pod.metadata.name, NS, follow=True, _preload_content=False
    )
    assert stream.data.decode() == "line 0\nline 1\nline 2\n"
    tail = core.read_namespaced_pod_log(pod.metadata.name, NS, tail_lines=1)
    assert tail == "line 2\n"


def test_pods_and_events_filter_by_label_and_field_selectors(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    batch.create_namespaced_job(NS, job_manifest("sel-a"))
    batch.create_namespaced_job(NS, job_manifest("sel-b", "import sys; sys.exit(2)"))
    pods_of(core, "sel-a", phase_is("Succeeded"))
    pods_of(core, "sel-b", phase_is("Failed"))
    chosen = core.list_namespaced_pod(NS, label_selector="job-name in (sel-b),coreexec.io/step")
    assert [p.metadata.labels["job-name"] for p in chosen.items] == ["sel-b"]
    failed = core.list_namespaced_pod(NS, field_selector="status.phase=Failed")
    assert [p.metadata.labels["job-name"] for p in failed.items] == ["sel-b"]
    by_run = batch.list_namespaced_job(NS, label_selector="coreexec.io/run-id=r1")
    assert sorted(j.metadata.name for j in by_run.items) == ["sel-a", "sel-b"]
    with pytest.raises(client.ApiException) as bad:
        core.list_namespaced_event(NS, field_selector="involvedObject.colour=red")
    assert bad.value.status == 400
