"""The ``k8s`` launcher through the supervisor, the real step entrypoint in the pods, a
real Redis and the test API server (pods run as local processes by the kubelet stand-in),
or a real cluster under ``--k8s-cluster``.

What a user relies on: outputs are right and nothing is left behind; a redelivered
message adopts the Job instead of creating another; every way a pod fails to start or
ends is reported with its reason (image, scheduler, FailedCreate, OOMKilled with the
limit, eviction, deadline); logs land in the run's events; a watch that gets 410 Gone
recovers; cancel leaves no Job and no pod; a Job removed by its TTL after success is a
success.

Each failure is made through the API as it happens on a cluster (an image no registry
has, a nodeSelector no node matches, a service account that does not exist, a memory
limit a step exceeds), so these tests run on a real cluster too. Those that need the test
server's own switches or counters (eviction, 410 Gone, the request log) are marked
``k8s_test_server``; request counts elsewhere are checked where the server keeps them.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coreexec.attempt_runner import AttemptIds, AttemptResult
from coreexec.attempt_runtime import AttemptRuntime
from coreexec.events import Event, EventKind
from coreexec.io_managers import OutputKey
from coreexec.storage.base import RunRecord, RunStatus
from coreexec.transport import keys
from coreexec.transport.redis_events import RedisEventStream, events_of
from coreexec.transport.run_settings import RunSettings
from tests.jobs.celery_jobs import marks, open_gate
from tests.support.kube_target import K8sTarget
from tests.support.waiting import wait_until
from workers.k8s.api import PERMISSIONS
from workers.k8s.launcher import K8sLauncher
from workers.k8s.steps import k8s_config_of
from workers.k8s.sweep import sweep
from workers.launcher import Launch, launch_name
from workers.registry import K8S, launcher_for
from workers.supervisor import supervise

REF = "tests.jobs.k8s_jobs"
WAIT_S = 60.0


@pytest.fixture
def runtime(k8s_env: Path, redis_url: str) -> Iterator[AttemptRuntime]:
    yield AttemptRuntime(redis_url)


class Run:
    """A run record and its settings (the k8s block), attempts supervised one by one."""

    def __init__(self, runtime: AttemptRuntime, job: str, block: dict[str, Any]) -> None:
        self.runtime = runtime
        self.job = job
        self.run_id = uuid.uuid4().hex
        record = RunRecord(self.run_id, job, RunStatus.STARTED, job_reference=f"{REF}:{job}")
        runtime.instance.storage.add_run(record)
        settings = RunSettings(
            heartbeat_interval_s=0.2, default_launcher=K8S, launcher_config={K8S: block}
        )
        runtime.client.hset(keys.run_settings(self.run_id), mapping=settings.to_hash())
        self.launchers: list[Any] = []

    def ids(self, step: str, number: int = 1) -> AttemptIds:
        """A new attempt, recorded as issued the way a coordinator records what it sends."""
        ids = AttemptIds(self.run_id, step, number, uuid.uuid4().hex, f"{REF}:{self.job}")
        self.runtime.claims.issue(self.run_id, [ids.attempt])
        return ids

    def choose(self, runtime: AttemptRuntime, prepared: Any) -> Any:
        launcher = launcher_for(runtime, prepared)
        self.launchers.append(launcher)
        return launcher

    def supervise(self, ids: AttemptIds) -> AttemptResult:
        return supervise(
            self.runtime, ids, owner=f"test-{uuid.uuid4().hex[:6]}", choose=self.choose
        )

    def events(self) -> list[Event]:
        return events_of(RedisEventStream(self.runtime.client, self.run_id).history())

    def failure(self) -> Event:
        found = [e for e in self.events() if e.kind is EventKind.STEP_FAILURE]
        assert len(found) == 1, [e.message for e in self.events()]
        return found[0]


class Background:
    """A call in a thread, joined with a deadline."""

    def __init__(self, func: Callable[[], AttemptResult]) -> None:
        self.result: AttemptResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(func,), daemon=True)
        self.thread.start()

    def _run(self, func: Callable[[], AttemptResult]) -> None:
        try:
            self.result = func()
        except BaseException as exc:
            self.error = exc

    def join(self) -> AttemptResult:
        self.thread.join(WAIT_S)
        assert self.error is None, self.error
        assert self.result is not None, "the supervisor did not return"
        return self.result


def left_behind(cluster: K8sTarget, run_id: str) -> Callable[[], bool]:
    """True once the run has no Job and no pod left in the namespace."""
    return lambda: cluster.jobs_and_pods(run_id) == ([], [])


ABSENT_IMAGE = "registry.invalid/missing:1"
"""No registry serves it (``.invalid`` never resolves)."""
ABSENT_ACCOUNT = "coreexec-absent-account"
NO_SUCH_NODE = {"coreexec.io/test-node-pool": "no-such-pool"}


# -- success and cleanup --------------------------------------------------------------


def test_steps_run_as_jobs_with_outputs_and_leave_no_job_or_pod(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    run = Run(runtime, "sum_job", k8s_block)
    first = run.supervise(run.ids("numbers"))
    second = run.supervise(run.ids("total"))

    assert (first.status, second.status) == ("success", "success"), run.events()[-3:]
    assert runtime.io_manager.load(OutputKey(run.run_id, "total", "result")) == 6
    wait_until(left_behind(pod_cluster, run.run_id), "cleanup", WAIT_S)
    counts = pod_cluster.requests()  # None on a real cluster: nothing there counts them
    if counts is not None:
        assert counts["create jobs"] == 2
        assert counts["watch pods"] >= 1


def test_the_job_carries_the_attempts_name_labels_annotations_and_only_identifiers(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    run = Run(runtime, "sum_job", {**k8s_block, "keep_jobs": True})
    ids = run.ids("numbers")
    assert run.supervise(ids).status == "success"

    job = pod_cluster.read_job(launch_name(ids))
    labels = job["metadata"]["labels"]
    assert labels["coreexec.io/run-id"] == run.run_id
    assert labels["coreexec.io/step"] == "numbers"
    assert labels["coreexec.io/attempt-id"] == ids.attempt_id
    assert labels["coreexec.io/job"] == "sum_job"
    assert job["metadata"]["annotations"]["coreexec.io/step-key"] == "numbers"
    assert job["spec"]["backoffLimit"] == 0
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Never"
    container = pod_spec["containers"][0]
    assert container["args"] == [
        "--run-id", run.run_id, "--step-key", "numbers", "--attempt", "1",
        "--attempt-id", ids.attempt_id, "--job", f"{REF}:sum_job",
    ]  # fmt: skip
    assert "env" not in container  # settings come from the Secret, not the spec
    assert container["envFrom"] == [{"secretRef": {"name": "coreexec-settings"}}]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    assert job["spec"]["activeDeadlineSeconds"] == 86400


# -- adoption ---------------------------------------------------------------------------


def test_a_redelivered_message_adopts_the_job_instead_of_creating_a_second(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    run = Run(runtime, "held_job", k8s_block)
    ids = run.ids("held")
    first = Background(lambda: run.supervise(ids))
    wait_until(lambda: len(marks(run.run_id, "held")) == 1, "the step to start", WAIT_S)
    second = Background(lambda: run.supervise(ids))  # the same message, delivered again
    wait_until(lambda: len(run.launchers) == 2, "the second supervisor", WAIT_S)
    open_gate(run.run_id, "go")

    results = {first.join().status, second.join().status}
    assert results == {"success", "dropped"} or results == {"success"}
    counts = pod_cluster.requests()  # None on a real cluster: nothing there counts them
    if counts is not None:
        assert counts["create jobs"] == 1
    assert len(marks(run.run_id, "held")) == 1
    assert [e.kind for e in run.events()].count(EventKind.STEP_SUCCESS) == 1


def test_a_conflict_on_create_adopts_the_existing_job(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    run = Run(runtime, "held_job", k8s_block)
    ids = run.ids("held")
    from coreexec.attempt_runner import prepare_attempt
    from workers.launcher import LaunchRequest

    prepared = prepare_attempt(runtime, ids, "t", report_failure=False)
    assert not isinstance(prepared, AttemptResult)
    launcher = K8sLauncher(*k8s_config_of(prepared))
    request = LaunchRequest(prepared, "t")
    launched = launcher.launch(request)
    again = launcher.launch(request)  # 409 AlreadyExists from the API
    assert (launched.adopted, again.adopted) == (False, True)
    assert again.handle == launched.handle
    launcher.terminate(again)
    launcher.cleanup(again)


# -- failures before the step runs ------------------------------------------------------


def test_an_image_that_cannot_be_pulled_fails_on_the_pull_error_naming_the_image(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    run = Run(runtime, "sum_job", {**k8s_block, "job_image": ABSENT_IMAGE})
    result = run.supervise(run.ids("numbers"))

    assert result.status == "failure"
    failure = run.failure()
    # Ended by the pull error, not by start_timeout_s (300 s by default) running out.
    assert "start_timeout_s" not in failure.message
    assert "could not start" in failure.message
    assert "'registry.invalid/missing:1' cannot be pulled (ErrImagePull)" in failure.message
    assert failure.data["failure_class"] == "infrastructure"
    wait_until(left_behind(pod_cluster, run.run_id), "cleanup", WAIT_S)


def test_a_missing_secret_fails_at_once_as_a_container_config_error(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    secrets = [*k8s_block["env_secrets"], "absent-secret"]
    run = Run(runtime, "sum_job", {**k8s_block, "env_secrets": secrets})
    assert run.supervise(run.ids("numbers")).status == "failure"

    message = run.failure().message
    assert "could not start: the container cannot be created (CreateContainerConfigError)" in (
        message
    )
    assert 'secret "absent-secret" not found' in message


def test_a_pod_stuck_pending_fails_after_schedule_timeout_with_the_schedulers_reason(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    block = {**k8s_block, "node_selector": NO_SUCH_NODE, "schedule_timeout_s": 1.5}
    run = Run(runtime, "sum_job", block)
    result = run.supervise(run.ids("numbers"))

    assert result.status == "failure"
    message = run.failure().message
    assert "was not scheduled within schedule_timeout_s=1.5s" in message
    assert "FailedScheduling" in message
    # The scheduler's words, whatever the number of nodes ("0/N nodes are available: N ...").
    assert "node(s) didn't match Pod's node affinity/selector" in message
    wait_until(left_behind(pod_cluster, run.run_id), "cleanup", WAIT_S)


def test_a_job_whose_pod_is_never_created_fails_naming_the_event(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    run = Run(runtime, "sum_job", {**k8s_block, "service_account_name": ABSENT_ACCOUNT})
    result = run.supervise(run.ids("numbers"))

    assert result.status == "failure"
    message = run.failure().message
    assert "the Job's pod could not be created: Error creating: pods " in message
    account = f"{pod_cluster.namespace}/{ABSENT_ACCOUNT}"
    assert f'error looking up service account {account}: serviceaccount "{ABSENT_ACCOUNT}"' in (
        message
    )


# -- how pods end -----------------------------------------------------------------------


def test_an_oom_killed_pod_is_out_of_memory_with_the_limit_as_given(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    block = {**k8s_block, "resources": {"limits": {"memory": "160Mi"}}}
    run = Run(runtime, "hog_job", block)
    result = run.supervise(run.ids("hog"))

    assert result.status == "failure"
    failure = run.failure()
    assert "out of memory (limit 160Mi)" in failure.message
    assert len(marks(run.run_id, "hog")) == 1  # killed in the step, not before it
    assert failure.data["failure_class"] == "infrastructure"
    assert failure.data["retryable"] is True


@pytest.mark.k8s_test_server  # a node under memory pressure cannot be had on demand
def test_an_evicted_pod_is_an_infrastructure_failure_naming_the_eviction(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    run = Run(runtime, "held_job", k8s_block)
    ids = run.ids("held")
    supervised = Background(lambda: run.supervise(ids))
    wait_until(lambda: len(marks(run.run_id, "held")) == 1, "the step to start", WAIT_S)
    pod = pod_cluster.jobs_and_pods(run.run_id)[1][0]
    pod_cluster.test_server().kubelet.evict("default", pod["metadata"]["name"])

    assert supervised.join().status == "failure"
    failure = run.failure()
    assert "was Evicted: The node was low on resource: memory" in failure.message
    assert failure.data["failure_class"] == "infrastructure"


def test_the_jobs_deadline_is_a_timeout_failure_even_when_it_stops_a_running_step(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    run = Run(runtime, "held_job", {**k8s_block, "job_wait_timeout_s": 10})
    supervised = Background(lambda: run.supervise(run.ids("held")))
    wait_until(lambda: len(marks(run.run_id, "held")) == 1, "the step to start", WAIT_S)

    assert supervised.join().status == "failure"
    failure = run.failure()
    assert "timed out" in failure.message and "job_wait_timeout_s=10s" in failure.message
    assert failure.data["failure_class"] == "timeout"
    wait_until(left_behind(pod_cluster, run.run_id), "cleanup", WAIT_S)


@pytest.mark.k8s_test_server  # the order of the Job controller's writes is a switch here
def test_a_deadline_written_after_the_pod_ended_is_still_a_timeout_failure(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    server = pod_cluster.server
    assert server is not None
    server.controller.deadline_status_after_pods = True
    try:
        run = Run(runtime, "held_job", {**k8s_block, "job_wait_timeout_s": 5})
        supervised = Background(lambda: run.supervise(run.ids("held")))
        wait_until(lambda: len(marks(run.run_id, "held")) == 1, "the step to start", WAIT_S)
        assert supervised.join().status == "failure"
    finally:
        server.controller.deadline_status_after_pods = False
    failure = run.failure()
    # The step's pod ended (SIGTERM, reported by its entrypoint) before the Job said why.
    assert "timed out" in failure.message and "job_wait_timeout_s=5s" in failure.message
    assert failure.data["failure_class"] == "timeout"
    wait_until(left_behind(pod_cluster, run.run_id), "cleanup", WAIT_S)


def test_the_logs_of_a_failed_pod_are_in_the_runs_events(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    run = Run(runtime, "noisy_job", k8s_block)
    assert run.supervise(run.ids("noisy_failure")).status == "failure"

    logs = [e for e in run.events() if e.kind is EventKind.STEP_LOG and e.data.get("logs")]
    assert logs, [e.message for e in run.events()]
    assert "the last words of noisy_failure" in logs[-1].data["logs"]
    assert "noisy_failure fails on purpose" in run.failure().message


def test_a_job_removed_by_its_ttl_after_success_is_still_a_success(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    block = {**k8s_block, "ttl_seconds_after_finished": 0, "keep_jobs": True}
    run = Run(runtime, "sum_job", block)
    assert run.supervise(run.ids("numbers")).status == "success"
    wait_until(left_behind(pod_cluster, run.run_id), "the TTL", WAIT_S)
    assert runtime.io_manager.load(OutputKey(run.run_id, "numbers", "result")) == [1, 2, 3]


# -- watch and cancel -------------------------------------------------------------------


@pytest.mark.k8s_test_server  # a compaction that ends the watches cannot be had on demand
def test_a_watch_that_gets_410_gone_lists_again_and_still_sees_the_end(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    run = Run(runtime, "held_job", k8s_block)
    supervised = Background(lambda: run.supervise(run.ids("held")))
    wait_until(lambda: len(marks(run.run_id, "held")) == 1, "the step to start", WAIT_S)
    server = pod_cluster.test_server()
    lists_before = server.requests()["list pods"]
    server.store.compact()  # open watches end; resuming from their version is 410
    wait_until(lambda: server.requests()["list pods"] > lists_before, "a fresh list", WAIT_S)
    open_gate(run.run_id, "go")

    assert supervised.join().status == "success"


def test_cancel_leaves_no_job_and_no_pod(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    run = Run(runtime, "held_job", k8s_block)
    supervised = Background(lambda: run.supervise(run.ids("held")))
    wait_until(lambda: len(marks(run.run_id, "held")) == 1, "the step to start", WAIT_S)
    launcher = run.launchers[0]
    job = pod_cluster.jobs_and_pods(run.run_id)[0][0]
    launch = Launch(K8S, job["metadata"]["name"], run.ids("held"))
    launcher.terminate(launch)

    assert supervised.join().status == "failure"
    assert run.failure().data["failure_class"] == "cancelled"
    wait_until(left_behind(pod_cluster, run.run_id), "no Job, no pod", WAIT_S)


def test_a_terminate_that_races_pod_creation_leaves_no_pod(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    # The pod cannot be created until its service account exists.
    account = f"{ABSENT_ACCOUNT}-{uuid.uuid4().hex[:6]}"
    run = Run(runtime, "held_job", {**k8s_block, "service_account_name": account})
    before = pod_cluster.jobs_version()
    supervised = Background(lambda: run.supervise(run.ids("held")))
    job = pod_cluster.first_job_after(before, run.run_id, WAIT_S)
    run.launchers[0].terminate(Launch(K8S, job["metadata"]["name"], run.ids("held")))
    pod_cluster.create_service_account(account)  # the Job controller could create it now

    assert supervised.join().status == "failure"
    wait_until(left_behind(pod_cluster, run.run_id), "no Job, no pod", WAIT_S)
    assert marks(run.run_id, "held") == []


# -- what the launcher calls --------------------------------------------------------------


@pytest.mark.k8s_test_server  # the request log is the test server's
def test_the_launcher_and_the_sweep_call_exactly_what_the_role_grants(
    runtime: AttemptRuntime, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    run = Run(runtime, "sum_job", {**k8s_block, "keep_jobs": True})
    first = run.ids("numbers")
    assert run.supervise(first).status == "success"
    retry = run.ids("numbers", number=2)  # a later attempt deletes the earlier one's Job
    assert run.supervise(retry).status == "success"
    launcher = run.launchers[-1]
    assert launcher.find(_request(runtime, retry)) is not None  # adoption looks it up
    # Someone deletes the Job with the API's default propagation: its pod is orphaned.
    server = pod_cluster.test_server()
    server.api.delete_job("default", launch_name(retry), None)
    kept = run.ids("total")
    assert run.supervise(kept).status == "success"  # its Job is kept (keep_jobs)
    assert sweep(launcher.api, runtime.instance.storage) == []  # the run is not finished
    runtime.instance.storage.set_status(run.run_id, RunStatus.SUCCESS)
    swept = sweep(launcher.api, runtime.instance.storage)

    assert [(s.kind, s.name, s.why) for s in swept] == [
        ("Job", launch_name(kept), "run success"),
        ("Pod", swept[1].name, "run success, orphaned"),
    ]
    assert swept[1].step_key == "numbers"
    wait_until(left_behind(pod_cluster, run.run_id), "the sweep", WAIT_S)
    called = {tuple(key.split(" ", 1)) for key in server.requests()}
    assert called == {(verb, resource) for _group, resource, verb in PERMISSIONS}


def _request(runtime: AttemptRuntime, ids: AttemptIds) -> Any:
    from coreexec.attempt_runner import prepare_attempt
    from workers.launcher import LaunchRequest

    prepared = prepare_attempt(runtime, ids, "t", report_failure=False)
    assert not isinstance(prepared, AttemptResult)
    return LaunchRequest(prepared, "t")
