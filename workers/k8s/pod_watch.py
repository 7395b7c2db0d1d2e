"""One watch per process and namespace, serving every attempt that process follows.

Two streams per namespace: the launcher's pods (label selector
``app.kubernetes.io/managed-by=coreexec``) and Warning events. Each stream lists once,
then watches from the list's ``resourceVersion`` with a bounded ``timeoutSeconds``,
resuming from the last version it saw (bookmarks included); ``410 Gone`` (the version
was compacted) or a lost connection means a fresh list, and a slow reconciling list
every ``RESYNC_S`` catches anything a watch might have missed. What arrives is sorted to
the :class:`Tracker` of the Job it belongs to (by the controller's ``job-name`` label, and
for events by the involved object), which wakes the one thread following that attempt:
no polling loop per step, and two watch connections however many steps run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from workers.k8s.api import KubeApi, Obj
from workers.k8s.manifest import MANAGED_LABEL, MANAGED_VALUE

log = logging.getLogger(__name__)

POD_SELECTOR = f"{MANAGED_LABEL}={MANAGED_VALUE}"
EVENT_SELECTOR = "type=Warning"
WATCH_TIMEOUT_S = 55
"""Upper bound of one watch request; the server ends it, the watch resumes."""
RESYNC_S = 120.0
"""The reconciling list: at most this long between two full lists of a stream."""
_JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")


class Tracker:
    """What the watches have seen of one Job: its pod and the Warning events about it."""

    def __init__(self, job_name: str) -> None:
        self.job_name = job_name
        self.cond = threading.Condition()
        self.pod: Obj | None = None
        self.pod_gone = False
        """A pod was seen and then deleted."""
        self.events: list[Obj] = []
        self._event_uids: set[str] = set()
        self.version = 0

    def set_pod(self, pod: Obj | None) -> None:
        with self.cond:
            if pod is None:
                self.pod_gone = self.pod_gone or self.pod is not None
            else:
                self.pod, self.pod_gone = pod, False
            self.version += 1
            self.cond.notify_all()

    def add_event(self, event: Obj) -> None:
        uid = str(event.get("metadata", {}).get("uid", ""))
        with self.cond:
            if uid in self._event_uids:
                return
            self._event_uids.add(uid)
            self.events.append(event)
            self.version += 1
            self.cond.notify_all()

    def wait(self, seen: int, timeout_s: float) -> int:
        """Block until something new arrives (or the timeout); the current version."""
        with self.cond:
            if self.version == seen and timeout_s > 0:
                self.cond.wait(timeout_s)
            return self.version


def job_of_pod(pod: Obj) -> str | None:
    labels = pod.get("metadata", {}).get("labels") or {}
    for key in _JOB_NAME_LABELS:
        if labels.get(key):
            return str(labels[key])
    return None


class _Stream:
    """List, then watch from the list's version; re-list on 410, errors and RESYNC_S."""

    def __init__(self, owner: NamespaceWatch, resource: str) -> None:
        self.owner = owner
        self.resource = resource
        self.synced = threading.Event()
        self.lists = 0
        self.thread = threading.Thread(
            target=self.run, name=f"coreexec-k8s-watch-{resource}", daemon=True
        )

    def run(self) -> None:
        version: str | None = None
        listed_at = 0.0
        failures = 0
        while not self.owner.stopped.is_set():
            try:
                if version is None or time.monotonic() - listed_at > RESYNC_S:
                    version = self._list()
                    listed_at = time.monotonic()
                version = self._watch(version)
                failures = 0
            except Exception as exc:  # a lost connection, a 5xx after retries
                failures += 1
                log.warning(
                    "watch of %s in %s failed (%s); listing again",
                    self.resource,
                    self.owner.namespace,
                    exc,
                )
                version = None
                self.owner.stopped.wait(random.uniform(0, min(10.0, 0.2 * 2**failures)))

    def _list(self) -> str:
        api, namespace = self.owner.api, self.owner.namespace
        if self.resource == "pods":
            items, version = api.list_pods(namespace, POD_SELECTOR)
            self.owner.pods_listed(items)
        else:
            items, version = api.list_events(namespace, EVENT_SELECTOR)
            for item in items:
                self.owner.event_seen(item)
        self.lists += 1
        self.synced.set()
        return version

    def _watch(self, version: str) -> str | None:
        """One watch request; the version to resume from, None to list again."""
        selectors: dict[str, Any] = (
            {"label_selector": POD_SELECTOR}
            if self.resource == "pods"
            else {"field_selector": EVENT_SELECTOR}
        )
        stream = self.owner.api.watch(
            self.resource,
            self.owner.namespace,
            resource_version=version,
            timeout_s=WATCH_TIMEOUT_S,
            **selectors,
        )
        with contextlib.closing(stream):  # an early return still frees the connection
            for kind, obj in stream:
                if kind == "ERROR":
                    log.info(
                        "watch of %s in %s: %s; listing again",
                        self.resource,
                        self.owner.namespace,
                        obj.get("message"),
                    )
                    return None
                version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                if self.resource == "pods":
                    self.owner.pod_changed(obj, deleted=kind == "DELETED")
                elif kind != "DELETED":
                    self.owner.event_seen(obj)
                if self.owner.stopped.is_set():
                    break
        return version


class NamespaceWatch:
    """The watches of one namespace in this process; see the module docstring."""

    _instances: ClassVar[dict[tuple[int, int, str], NamespaceWatch]] = {}
    _instances_lock = threading.Lock()

    def __init__(self, api: KubeApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._trackers: dict[str, Tracker] = {}
        self.pods = _Stream(self, "pods")
        self.events = _Stream(self, "events")
        self.pods.thread.start()
        self.events.thread.start()

    @classmethod
    def of(cls, api: KubeApi, namespace: str) -> NamespaceWatch:
        """The process's watch of ``namespace`` on ``api``'s cluster (started on first use)."""
        key = (os.getpid(), id(api.api_client), namespace)
        with cls._instances_lock:
            found = cls._instances.get(key)
            if found is None or found.stopped.is_set():
                found = cls._instances[key] = NamespaceWatch(api, namespace)
            return found

    def track(self, job_name: str, timeout_s: float) -> Tracker:
        """A tracker for ``job_name``, once both streams have listed (so nothing created
        after this returns can be missed)."""
        with self._lock:
            tracker = self._trackers.setdefault(job_name, Tracker(job_name))
        self.pods.synced.wait(timeout_s)
        self.events.synced.wait(timeout_s)
        return tracker

    def untrack(self, job_name: str) -> None:
        with self._lock:
            self._trackers.pop(job_name, None)

    def stop(self) -> None:
        self.stopped.set()

    @classmethod
    def stop_all(cls) -> None:
        """Stop every watch of this process (a worker shutting down, a test's teardown)."""
        with cls._instances_lock:
            watches = list(cls._instances.values())
            cls._instances.clear()
        for watch in watches:
            watch.stop()

    # -- sorting what arrives -----------------------------------------------------------
    def _tracker(self, job_name: str | None) -> Tracker | None:
        if job_name is None:
            return None
        with self._lock:
            return self._trackers.get(job_name)

    def pods_listed(self, pods: Iterable[Obj]) -> None:
        present: dict[str, Obj] = {}
        for pod in pods:
            job = job_of_pod(pod)
            if job is not None:
                present[job] = pod
        with self._lock:
            trackers = list(self._trackers.values())
        for tracker in trackers:
            tracker.set_pod(present.get(tracker.job_name))

    def pod_changed(self, pod: Obj, *, deleted: bool) -> None:
        tracker = self._tracker(job_of_pod(pod))
        if tracker is not None:
            tracker.set_pod(None if deleted else pod)

    def event_seen(self, event: Obj) -> None:
        involved = event.get("involvedObject") or {}
        name = str(involved.get("name", ""))
        if involved.get("kind") == "Pod":
            name = name.rpartition("-")[0]  # a Job's pods are named <job>-<suffix>
        tracker = self._tracker(name)
        if tracker is not None:
            tracker.add_event(event)
