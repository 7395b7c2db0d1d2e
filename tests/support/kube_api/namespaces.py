"""The namespace controller of the test cluster: empties a Terminating namespace, then
removes it.

As the real controller does, it deletes the namespace's Jobs (``Background``: the
garbage collector takes their pods), its pods (gracefully: the kubelet stops their
containers first), Secrets, ConfigMaps, ServiceAccounts and Events, and removes the
namespace once no pod or Job is left in it. Until then the namespace reads back with
``status.phase: Terminating`` and refuses new content (``403``).
"""

from __future__ import annotations

from tests.support.kube_api.cluster_api import ClusterApi
from tests.support.kube_api.control_loop import ControlLoop
from tests.support.kube_api.errors import ApiError
from tests.support.kube_api.store import (
    CONFIG_MAPS,
    EVENTS,
    JOBS,
    NAMESPACES,
    PODS,
    SECRETS,
    SERVICE_ACCOUNTS,
)


class NamespaceController(ControlLoop):
    """Finishes the deletion of Terminating namespaces, level-triggered."""

    name = "namespace-controller"

    def __init__(self, api: ClusterApi) -> None:
        super().__init__(api)

    def reconcile(self) -> None:
        for namespace in self.api.store.iter_objects(NAMESPACES):
            if namespace["metadata"].get("deletionTimestamp"):
                self._empty(namespace["metadata"]["name"])

    def _empty(self, name: str) -> None:
        store = self.api.store
        jobs, _rv = store.list(JOBS, name)
        pods, _rv = store.list(PODS, name)
        try:
            for job in jobs:
                self.api.delete_job(name, job["metadata"]["name"], "Background")
            for pod in pods:
                if not pod["metadata"].get("deletionTimestamp"):
                    self.api.delete_pod(name, pod["metadata"]["name"], None)
            for res in (SECRETS, CONFIG_MAPS, SERVICE_ACCOUNTS, EVENTS):
                for obj in store.list(res, name)[0]:
                    store.remove(res, name, obj["metadata"]["name"])
        except ApiError as error:
            if error.code != 404:  # removed meanwhile by someone else: the next pass sees it
                raise
            return
        if not store.list(PODS, name)[0] and not store.list(JOBS, name)[0]:
            store.remove(NAMESPACES, "", name)
