"""The verbs of the test cluster on top of the store: the HTTP layer, the Job controller
and the kubelet stand-in all write through here, so deletion and events behave the same
whoever asks.

Deletion follows the API server: a Job deleted with ``Foreground`` keeps a
``deletionTimestamp`` and the ``foregroundDeletion`` finalizer until the garbage
collector has removed its pods; ``Background`` removes the Job at once and its pods
after; ``Orphan`` (the default for batch/v1 Jobs, with the server's warning) removes the
Job and leaves its pods without an owner. A pod on a node is deleted gracefully: it gets
a ``deletionTimestamp`` and the kubelet removes it when its container has stopped.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from tests.support.kube_api.errors import bad_request
from tests.support.kube_api.objects import default_job, generated_name, validate_job
from tests.support.kube_api.store import EVENTS, JOBS, PODS, Obj, Resource, Store, now_rfc3339

ORPHAN_WARNING = (
    '299 - "child pods are preserved by default when jobs are deleted; set '
    "propagationPolicy=Background to remove them or set propagationPolicy=Orphan to "
    'suppress this warning"'
)
PROPAGATION_POLICIES = ("Foreground", "Background", "Orphan")


def success_status(res: Resource, name: str, uid: str) -> Obj:
    details: dict[str, Any] = {"name": name, "kind": res.plural, "uid": uid}
    if res.group:
        details["group"] = res.group
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


def owned_by(pod: Obj, uid: str) -> bool:
    refs = pod["metadata"].get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


class ClusterApi:
    """Create, delete and event verbs shared by every writer of the test cluster."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------------ jobs
    def create_job(self, namespace: str, job: Obj) -> Obj:
        meta = job.setdefault("metadata", {})
        body_ns = meta.get("namespace")
        if body_ns and body_ns != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = generated_name(meta["generateName"])
        validate_job(job)
        default_job(job, uid=str(uuid.uuid4()))
        return self.store.create(JOBS, job)

    def delete_job(self, namespace: str, name: str, propagation: str | None) -> tuple[Obj, bool]:
        """Delete a Job; returns the response body and whether the orphan default applied."""
        if propagation is not None and propagation not in PROPAGATION_POLICIES:
            raise bad_request(f'unsupported propagationPolicy "{propagation}"')
        job = self.store.get(JOBS, namespace, name)
        uid = job["metadata"]["uid"]
        if propagation == "Foreground":
            if job["metadata"].get("deletionTimestamp"):
                return job, False

            def mark(obj: Obj) -> None:
                obj["metadata"]["deletionTimestamp"] = now_rfc3339()
                obj["metadata"]["deletionGracePeriodSeconds"] = 0
                obj["metadata"]["finalizers"] = ["foregroundDeletion"]

            return self.store.update(JOBS, namespace, name, mark), False
        if propagation in (None, "Orphan"):
            self._orphan_pods(namespace, uid)
        self.store.remove(JOBS, namespace, name)
        return success_status(JOBS, name, uid), propagation is None

    def _orphan_pods(self, namespace: str, uid: str) -> None:
        pods, _rv = self.store.list(PODS, namespace, lambda pod: owned_by(pod, uid))

        def strip(obj: Obj) -> None:
            refs = [r for r in obj["metadata"]["ownerReferences"] if r.get("uid") != uid]
            if refs:
                obj["metadata"]["ownerReferences"] = refs
            else:
                obj["metadata"].pop("ownerReferences", None)

        for pod in pods:
            self.store.update(PODS, namespace, pod["metadata"]["name"], strip)

    # ------------------------------------------------------------------ pods
    def delete_pod(self, namespace: str, name: str, grace_s: int | None) -> Obj:
        """Delete a pod: at once when no container runs for it, else gracefully."""
        pod = self.store.get(PODS, namespace, name)
        if grace_s is None:
            grace_s = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        unstarted = not pod["spec"].get("nodeName")
        finished = pod["status"].get("phase") in ("Succeeded", "Failed")
        if grace_s == 0 or unstarted or finished:
            return self.store.remove(PODS, namespace, name)
        if pod["metadata"].get("deletionTimestamp"):
            return pod

        def mark(obj: Obj) -> None:
            obj["metadata"]["deletionTimestamp"] = now_rfc3339()
            obj["metadata"]["deletionGracePeriodSeconds"] = grace_s

        return self.store.update(PODS, namespace, name, mark)

    # ------------------------------------------------------------------ events
    def record_event(
        self,
        involved: Obj,
        event_type: str,
        reason: str,
        message: str,
        component: str,
    ) -> Obj:
        """A core/v1 Event about ``involved``, as controllers and the kubelet record them."""
        meta = involved["metadata"]
        stamp = now_rfc3339()
        event: Obj = {
            "metadata": {
                "name": f"{meta['name']}.{secrets.token_hex(8)}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "kind": involved["kind"],
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "apiVersion": involved["apiVersion"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message,
            "source": {"component": component},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "type": event_type,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": "",
        }
        return self.store.create(EVENTS, event)
