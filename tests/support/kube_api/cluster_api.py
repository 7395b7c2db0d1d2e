"""The verbs of the test cluster on top of the store: the HTTP layer, the Job controller
and the kubelet stand-in all write through here, so deletion and events behave the same
whoever asks.

Deletion follows the API server: a Job deleted with ``Foreground`` keeps a
``deletionTimestamp`` and the ``foregroundDeletion`` finalizer until the garbage
collector has removed its pods; ``Background`` removes the Job at once and its pods
after; ``Orphan`` (the default for batch/v1 Jobs, with the server's warning) removes the
Job and leaves its pods without an owner. A pod on a node is deleted gracefully: it gets
a ``deletionTimestamp`` and the kubelet removes it when its container has stopped.

Namespaces are objects too: ``default`` exists from the start, a new one gets its
``default`` ServiceAccount, and creating anything in a namespace that does not exist is
``404``, in one being deleted ``403`` (the NamespaceLifecycle admission plugin). Deleting a
namespace marks it ``Terminating``; the namespace controller (namespaces.py) removes its
content and then the namespace. A pod whose ``serviceAccountName`` does not exist is
refused ``403`` as the ServiceAccount admission plugin refuses it, which the Job
controller reports as a ``FailedCreate`` event.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from typing import Any

from tests.support.kube_api.errors import bad_request, forbidden, invalid, not_found
from tests.support.kube_api.objects import (
    check_metadata,
    default_job,
    generated_name,
    validate_job,
)
from tests.support.kube_api.store import (
    CONFIG_MAPS,
    EVENTS,
    JOBS,
    NAMESPACES,
    PODS,
    SECRETS,
    SERVICE_ACCOUNTS,
    Obj,
    Resource,
    Store,
    now_rfc3339,
)

DEFAULT_NAMESPACE = "default"
DEFAULT_SERVICE_ACCOUNT = "default"
CREATABLE = (JOBS, NAMESPACES, SECRETS, CONFIG_MAPS, SERVICE_ACCOUNTS)
"""What clients may POST; pods and events are written by the controllers and the kubelet."""

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
        self.create_namespace({"metadata": {"name": DEFAULT_NAMESPACE}})

    def create(self, res: Resource, namespace: str, body: Obj) -> Obj:
        """POST of a client: ``namespace`` is ``""`` for a Namespace."""
        if res is JOBS:
            return self.create_job(namespace, body)
        if res is NAMESPACES:
            return self.create_namespace(body)
        if res in CREATABLE:
            return self.create_namespaced(res, namespace, body)
        raise bad_request(f"{res.plural} cannot be created through this server")

    # ------------------------------------------------------------------ namespaces
    def create_namespace(self, body: Obj) -> Obj:
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = generated_name(meta["generateName"])
        causes: list[tuple[str, str]] = []
        check_metadata(meta, "metadata", causes, name_limit=63)
        if causes:
            raise invalid("Namespace", "", str(meta.get("name", "")), causes)
        meta.pop("namespace", None)
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        body["spec"] = {"finalizers": ["kubernetes"]}
        body["status"] = {"phase": "Active"}
        created = self.store.create(NAMESPACES, body)
        # The service account controller gives every namespace its default account.
        account = {"metadata": {"name": DEFAULT_SERVICE_ACCOUNT, "namespace": meta["name"]}}
        self.store.create(SERVICE_ACCOUNTS, account)
        return created

    def delete_namespace(self, name: str) -> Obj:
        """Mark the namespace Terminating; the namespace controller empties and removes it."""
        namespace = self.store.get(NAMESPACES, "", name)
        if namespace["metadata"].get("deletionTimestamp"):
            return namespace

        def mark(obj: Obj) -> None:
            obj["metadata"]["deletionTimestamp"] = now_rfc3339()
            obj["status"]["phase"] = "Terminating"

        return self.store.update(NAMESPACES, "", name, mark)

    def admit(self, res: Resource, namespace: str, name: str) -> None:
        """NamespaceLifecycle: new content only in a namespace that exists and is active."""
        found = self.store.find(NAMESPACES, "", namespace)
        if found is None:
            raise not_found("", "namespaces", namespace)
        if found["status"].get("phase") == "Terminating":
            raise forbidden(
                res.group,
                res.plural,
                name,
                f"unable to create new content in namespace {namespace} because it is being "
                "terminated",
            )

    def create_namespaced(self, res: Resource, namespace: str, body: Obj) -> Obj:
        """A Secret, ConfigMap or ServiceAccount (``stringData`` folded into ``data``)."""
        meta = self._place(body, namespace)
        causes: list[tuple[str, str]] = []
        check_metadata(meta, "metadata", causes)
        if causes:
            raise invalid(res.kind, res.group, str(meta.get("name", "")), causes)
        self.admit(res, namespace, meta["name"])
        if res is SECRETS:
            data = dict(body.get("data") or {})
            for key, value in (body.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            body["data"] = data
            body.setdefault("type", "Opaque")
        return self.store.create(res, body)

    def _place(self, body: Obj, namespace: str) -> Obj:
        meta: Obj = body.setdefault("metadata", {})
        body_ns = meta.get("namespace")
        if body_ns and body_ns != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = generated_name(meta["generateName"])
        return meta

    # ------------------------------------------------------------------ jobs
    def create_job(self, namespace: str, job: Obj) -> Obj:
        meta = self._place(job, namespace)
        validate_job(job)
        self.admit(JOBS, namespace, meta["name"])
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
    def create_pod(self, pod: Obj) -> Obj:
        """A pod the Job controller creates, through the admission plugins."""
        meta = pod["metadata"]
        namespace = meta["namespace"]
        # The name is generated after admission, so refusals name the generateName prefix.
        shown = meta.get("generateName") or meta["name"]
        self.admit(PODS, namespace, shown)
        account = pod["spec"].get("serviceAccountName") or DEFAULT_SERVICE_ACCOUNT
        if self.store.find(SERVICE_ACCOUNTS, namespace, account) is None:
            raise forbidden(
                "",
                "pods",
                shown,
                f"error looking up service account {namespace}/{account}: "
                f'serviceaccount "{account}" not found',
            )
        pod["spec"]["serviceAccountName"] = account
        pod["spec"].setdefault("serviceAccount", account)
        return self.store.create(PODS, pod)

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
