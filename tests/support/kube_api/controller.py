"""A Job controller and garbage collector for the test cluster.

Level-triggered, as the real controllers are: after every change in the store it looks
at all Jobs and pods and writes what differs. For each Job it creates a pod from the
template (``SuccessfulCreate``) through the API's admission checks, or records a
``FailedCreate`` Warning when they refuse it (a service account that does not exist) or
pod creation is switched off; it counts the pod's end into
``status.succeeded``/``status.failed`` (a pod deleted before it ended counts as
failed), sets the ``Complete`` or ``Failed`` condition (``BackoffLimitExceeded``,
``DeadlineExceeded`` after ``activeDeadlineSeconds``), and deletes finished Jobs after
``ttlSecondsAfterFinished`` with foreground propagation, as the TTL controller does. The
garbage collector deletes pods whose owning Job is gone and finishes foreground deletion.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime

from tests.support.kube_api.cluster_api import ClusterApi
from tests.support.kube_api.control_loop import ControlLoop
from tests.support.kube_api.errors import ApiError
from tests.support.kube_api.objects import pod_for_job
from tests.support.kube_api.store import JOBS, PODS, Obj, now_rfc3339

COMPONENT = "job-controller"
_TERMINAL = ("Succeeded", "Failed")


def parse_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _condition(kind: str, reason: str, message: str) -> Obj:
    stamp = now_rfc3339()
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
    }


def finished_at(job: Obj) -> float | None:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return parse_time(cond["lastTransitionTime"])
    return None


def _end_of(
    spec: Obj, succeeded: int, failed: int, deadline: float | None
) -> tuple[str, str, str] | None:
    """The condition a Job's pods and deadline give it now, if it has ended."""
    if succeeded >= spec["completions"]:
        return ("Complete", "", "")
    if failed > spec["backoffLimit"]:
        return ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    if deadline is not None and time.time() >= deadline:
        return ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
    return None


class JobController(ControlLoop):
    """Runs Jobs' pods and keeps Job status; switches make pod creation fail."""

    name = "job-controller"

    def __init__(self, api: ClusterApi) -> None:
        super().__init__(api)
        self.fail_pod_creation: str | None = None
        """When set, no pod is created: a FailedCreate Warning with this message instead."""
        self.deadline_status_after_pods: bool = False
        """When set, a Job past its deadline gets its DeadlineExceeded condition only once
        its pods have ended (the order a busy controller can show), not in the same pass."""
        self._pods_of: dict[str, dict[str, str]] = defaultdict(dict)  # job uid → pod uid → end
        self._decided: dict[str, tuple[str, str, str]] = {}  # job uid → end not yet written
        self._reported: set[str] = set()

    def reconcile(self) -> float | None:
        """One pass over every Job and pod; the earliest time a timer falls due."""
        jobs = list(self.api.store.iter_objects(JOBS))
        pods_by_owner: dict[str, list[Obj]] = defaultdict(list)
        for pod in self.api.store.iter_objects(PODS):
            for ref in pod["metadata"].get("ownerReferences") or []:
                if ref.get("kind") == "Job":
                    pods_by_owner[ref["uid"]].append(pod)
        live = {job["metadata"]["uid"] for job in jobs}
        self._collect_garbage(pods_by_owner, live)
        due: list[float] = []
        for job in jobs:
            try:
                when = self._reconcile_job(job, pods_by_owner[job["metadata"]["uid"]])
            except ApiError as error:
                if error.code != 404:  # deleted meanwhile: the next pass sees it gone
                    raise
                continue
            if when is not None:
                due.append(when)
        return min(due, default=None)

    def _collect_garbage(self, pods_by_owner: dict[str, list[Obj]], live: set[str]) -> None:
        for owner, pods in pods_by_owner.items():
            if owner in live:
                continue
            for pod in pods:
                if not pod["metadata"].get("deletionTimestamp"):
                    self._delete_pod(pod, None)

    def _delete_pod(self, pod: Obj, grace_s: int | None) -> None:
        try:
            self.api.delete_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], grace_s)
        except ApiError as error:
            if error.code != 404:
                raise

    def _reconcile_job(self, job: Obj, pods: list[Obj]) -> float | None:
        meta = job["metadata"]
        if meta.get("deletionTimestamp"):
            self._finish_foreground(job, pods)
            return None
        ended = finished_at(job)
        if ended is not None:
            return self._expire(job, ended)
        self._count_ends(job, pods)
        return self._advance(job, pods)

    def _finish_foreground(self, job: Obj, pods: list[Obj]) -> None:
        for pod in pods:
            if not pod["metadata"].get("deletionTimestamp"):
                self._delete_pod(pod, None)
        if not pods:
            self.api.store.remove(JOBS, job["metadata"]["namespace"], job["metadata"]["name"])

    def _expire(self, job: Obj, ended: float) -> float | None:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None:
            return None
        due = ended + ttl
        if time.time() >= due:
            self.api.delete_job(job["metadata"]["namespace"], job["metadata"]["name"], "Foreground")
            return None
        return due

    def _count_ends(self, job: Obj, pods: list[Obj]) -> None:
        known = self._pods_of[job["metadata"]["uid"]]
        present = {pod["metadata"]["uid"] for pod in pods}
        for pod in pods:
            phase = pod["status"].get("phase")
            if phase in _TERMINAL:
                known[pod["metadata"]["uid"]] = phase
            else:
                known.setdefault(pod["metadata"]["uid"], "")
        for uid, end in known.items():
            if not end and uid not in present:
                known[uid] = "Failed"  # deleted before it ended

    def _advance(self, job: Obj, pods: list[Obj]) -> float | None:
        meta, spec = job["metadata"], job["spec"]
        ends = self._pods_of[meta["uid"]].values()
        succeeded = sum(1 for end in ends if end == "Succeeded")
        failed = sum(1 for end in ends if end == "Failed")
        running = [p for p in pods if p["status"].get("phase") not in _TERMINAL]
        start = job.get("status", {}).get("startTime") or now_rfc3339()
        deadline_s = spec.get("activeDeadlineSeconds")
        deadline = parse_time(start) + deadline_s if deadline_s else None
        end = self._decided.pop(meta["uid"], None) or _end_of(spec, succeeded, failed, deadline)
        if end is not None:
            for pod in running:
                if not pod["metadata"].get("deletionTimestamp"):
                    self._delete_pod(pod, None)
            if running and end[1] == "DeadlineExceeded" and self.deadline_status_after_pods:
                self._decided[meta["uid"]] = end
                return time.time() + 0.1
            running = []
        elif not running:
            running = self._create_pod(job)
        self._write_status(job, start, running, succeeded, failed, end)
        return None if end is not None else deadline

    def _create_pod(self, job: Obj) -> list[Obj]:
        problem = self.fail_pod_creation
        created: Obj | None = None
        if problem is None:
            try:
                created = self.api.create_pod(pod_for_job(job))
            except ApiError as refused:
                if refused.code not in (403, 404):
                    raise
                problem = refused.message
        if created is None:
            if job["metadata"]["uid"] not in self._reported:
                self._reported.add(job["metadata"]["uid"])
                self.api.record_event(
                    job, "Warning", "FailedCreate", f"Error creating: {problem}", COMPONENT
                )
            return []
        self._pods_of[job["metadata"]["uid"]][created["metadata"]["uid"]] = ""
        self.api.record_event(
            job,
            "Normal",
            "SuccessfulCreate",
            f"Created pod: {created['metadata']['name']}",
            COMPONENT,
        )
        return [created]

    def _write_status(
        self,
        job: Obj,
        start: str,
        running: list[Obj],
        succeeded: int,
        failed: int,
        end: tuple[str, str, str] | None,
    ) -> None:
        ready = sum(
            1
            for pod in running
            for cond in pod["status"].get("conditions") or []
            if cond["type"] == "Ready" and cond["status"] == "True"
        )
        terminating = sum(1 for pod in running if pod["metadata"].get("deletionTimestamp"))

        def mutate(obj: Obj) -> None:
            status = obj.setdefault("status", {})
            status["startTime"] = start
            status["active"] = len(running) - terminating
            status["ready"] = ready
            status["terminating"] = terminating
            status["uncountedTerminatedPods"] = {}
            if succeeded:
                status["succeeded"] = succeeded
            if failed:
                status["failed"] = failed
            if end is not None:
                kind, reason, message = end
                if kind == "Complete":
                    first = _condition(
                        "SuccessCriteriaMet",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    )
                    last = _condition(
                        "Complete",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    )
                    status["completionTime"] = last["lastTransitionTime"]
                else:
                    first = _condition("FailureTarget", reason, message)
                    last = _condition("Failed", reason, message)
                status["conditions"] = [first, last]
                status["active"] = 0

        self.api.store.update(JOBS, job["metadata"]["namespace"], job["metadata"]["name"], mutate)
        if end is not None and end[0] == "Failed":
            self.api.record_event(job, "Warning", end[1], end[2], COMPONENT)
        elif end is not None:
            self.api.record_event(job, "Normal", "Completed", "Job completed", COMPONENT)
