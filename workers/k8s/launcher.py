"""The ``k8s`` launcher: one Kubernetes Job per attempt, followed to its end.

- ``launch``: delete the Jobs earlier attempts of the step left (one live pod per step),
  create the attempt's Job (:mod:`workers.k8s.manifest`); HTTP 409 means another
  supervisor (a redelivered message) created it: adopt it.
- ``find``: the attempt's Job by its deterministic name.
- ``follow``: the namespace watch (:mod:`workers.k8s.pod_watch`) and the follower's
  decisions (:mod:`workers.k8s.follow`); the pod's last log lines are read before
  anything is deleted.
- ``terminate``: delete the Job with ``propagationPolicy: Foreground`` and the pod's
  grace period (SIGTERM to the entrypoint, PID 1, then SIGKILL); a Job whose pod is not
  created yet gets none, since the controller creates no pod for a Job being deleted.
- ``cleanup``: delete the Job (Background) unless ``keep_jobs``;
  ``ttlSecondsAfterFinished`` is the backstop.
"""

from __future__ import annotations

import threading
import time

from coreexec.attempt_runner import PreparedAttempt
from coreexec.attempt_runtime import AttemptRuntime
from workers.k8s.api import ApiCallError, KubeApi, Obj
from workers.k8s.config import K8sConfig
from workers.k8s.follow import Follower
from workers.k8s.manifest import (
    ATTEMPT_ID_LABEL,
    RUN_LABEL,
    STEP_LABEL,
    job_manifest,
    label_value,
)
from workers.k8s.overrides import K8sOverrides
from workers.k8s.pod_state import parse_time
from workers.k8s.pod_watch import NamespaceWatch
from workers.k8s.steps import k8s_config_of
from workers.launcher import Launch, LaunchEnd, LaunchError, LaunchRequest, launch_name
from workers.registry import K8S

SYNC_TIMEOUT_S = 30.0


class K8sLauncher:
    """Runs attempts as Jobs in one namespace; see the module docstring."""

    name = K8S

    def __init__(self, config: K8sConfig, overrides: K8sOverrides, api: KubeApi | None = None):
        self.config = config
        self.overrides = overrides
        self.api = api or KubeApi(config)
        self._terminated: set[str] = set()
        self._created_at: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def namespace(self) -> str:
        return self.config.namespace

    @property
    def image(self) -> str:
        return str(self.overrides.container_config.get("image") or "")

    def _watch(self) -> NamespaceWatch:
        return NamespaceWatch.of(self.api, self.namespace)

    # -- launch -------------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> Launch:
        ids = request.ids
        name = launch_name(ids)
        self._watch().track(name, SYNC_TIMEOUT_S)  # before the Job exists: nothing missed
        if ids.attempt_number > 1:
            self.stop_earlier(request)
        manifest = job_manifest(self.config, self.overrides, ids, owner=request.owner)
        try:
            job = self.api.create_job(self.namespace, manifest)
        except ApiCallError as exc:
            if exc.status != 409:
                raise LaunchError(
                    f"cannot create Job {name} for step {ids.step_key!r} in namespace "
                    f"{self.namespace}: {exc.reason or exc}",
                    retryable=exc.retryable,
                ) from exc
            found = self.find(request)
            if found is None:  # created and deleted meanwhile: a cancel won the race
                raise LaunchError(f"Job {name} was deleted while it was created") from exc
            return found
        return self._launch_of(request, job, adopted=False)

    def _launch_of(self, request: LaunchRequest, job: Obj, *, adopted: bool) -> Launch:
        name = job["metadata"]["name"]
        created = parse_time(job["metadata"].get("creationTimestamp")) or time.time()
        with self._lock:
            self._created_at[name] = created
        uid = str(job["metadata"].get("uid", ""))
        return Launch(self.name, name, request.ids, adopted=adopted, handle=uid)

    def find(self, request: LaunchRequest) -> Launch | None:
        job = self.api.read_job(self.namespace, launch_name(request.ids))
        if job is None:
            return None
        return self._launch_of(request, job, adopted=True)

    def stop_earlier(self, request: LaunchRequest) -> list[str]:
        """Delete the Jobs (and pods) of earlier attempts of the step."""
        ids = request.ids
        selector = f"{RUN_LABEL}={label_value(ids.run_id)},{STEP_LABEL}={label_value(ids.step_key)}"
        stopped = []
        for job in self.api.list_jobs(self.namespace, selector):
            labels = job["metadata"].get("labels") or {}
            if labels.get(ATTEMPT_ID_LABEL) == label_value(ids.attempt_id):
                continue
            name = job["metadata"]["name"]
            self.api.delete_job(
                self.namespace,
                name,
                foreground=True,
                grace_s=self.config.termination_grace_period_s,
            )
            stopped.append(name)
        return stopped

    # -- follow -------------------------------------------------------------------------
    def follow(self, launch: Launch) -> LaunchEnd:
        watch = self._watch()
        tracker = watch.track(launch.name, SYNC_TIMEOUT_S)
        if launch.adopted:
            self._seed(tracker_name=launch.name)
        with self._lock:
            created = self._created_at.get(launch.name, time.time())
        follower = Follower(
            self.api,
            self.config,
            launch,
            tracker,
            created_at=created,
            image=self.image,
            terminated=lambda: launch.name in self._terminated,
        )
        return follower.run()

    def _seed(self, tracker_name: str) -> None:
        """An adopted Job's pod and events, which the watch listed before tracking it."""
        watch = self._watch()
        pods, _version = self.api.list_pods(self.namespace, f"job-name={tracker_name}")
        for pod in pods:
            watch.pod_changed(pod, deleted=False)
        events, _version = self.api.list_events(
            self.namespace, f"involvedObject.name={tracker_name},type=Warning"
        )
        for event in events:
            watch.event_seen(event)

    # -- stop and remove ----------------------------------------------------------------
    def terminate(self, launch: Launch) -> None:
        self._terminated.add(launch.name)
        self.api.delete_job(
            self.namespace,
            launch.name,
            foreground=True,
            grace_s=self.config.termination_grace_period_s,
        )

    def cleanup(self, launch: Launch) -> None:
        self._watch().untrack(launch.name)
        if self.config.keep_jobs:
            return
        self.api.delete_job(self.namespace, launch.name, foreground=False)


def k8s_launcher_for(runtime: AttemptRuntime, prepared: PreparedAttempt) -> K8sLauncher:
    config, overrides = k8s_config_of(prepared)
    return K8sLauncher(config, overrides)
