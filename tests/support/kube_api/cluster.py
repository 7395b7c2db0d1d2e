"""A whole test cluster: store, API server, Job controller and kubelet, with a kubeconfig.

::

    with TestCluster(tmp_path, LocalProcessBackend()) as cluster:
        config.load_kube_config(config_file=str(cluster.kubeconfig))
        ...
        cluster.kubelet.unschedulable = "0/1 nodes are available: 1 Insufficient memory."
        cluster.store.compact()        # resumed watches now get 410 Gone
        cluster.add_secret("settings", {"COREEXEC_REDIS_URL": url})  # envFrom reads it

The kubeconfig names one cluster, user and context (``coreexec-test``) with a bearer
token; the server rejects requests without it (401), as a real one would.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from tests.support.kube_api.cluster_api import ClusterApi
from tests.support.kube_api.controller import JobController
from tests.support.kube_api.http import KubeApiServer
from tests.support.kube_api.kubelet import Kubelet
from tests.support.kube_api.namespaces import NamespaceController
from tests.support.kube_api.store import SECRETS, Obj, Store

CONTEXT = "coreexec-test"


class TestCluster:
    """Start with :meth:`start` (or ``with``); :meth:`stop` kills every container."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, backend: Any, *, history_limit: int = 100_000) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.store = Store(history_limit=history_limit)
        self.api = ClusterApi(self.store)
        self.controller = JobController(self.api)
        self.namespaces = NamespaceController(self.api)
        self.kubelet = Kubelet(self.api, backend)
        self.token = secrets.token_hex(16)
        self.server = KubeApiServer(self.api, self.kubelet, self.token)
        self.kubeconfig = directory / "kubeconfig.yaml"

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> Self:
        self.server.start()
        self.controller.start()
        self.namespaces.start()
        self.kubelet.start()
        self._write_kubeconfig()
        return self

    def stop(self) -> None:
        self.kubelet.stop()
        self.namespaces.stop()
        self.controller.stop()
        self.server.stop()

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": CONTEXT, "cluster": {"server": self.url}}],
            "users": [{"name": CONTEXT, "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": CONTEXT,
                    "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": "default"},
                }
            ],
            "current-context": CONTEXT,
            "preferences": {},
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def add_secret(self, name: str, data: dict[str, str], namespace: str = "default") -> Obj:
        """A Secret as ``kubectl create secret generic`` makes it (not counted as a request)."""
        body: Obj = {"metadata": {"name": name}, "stringData": dict(data)}
        return self.api.create(SECRETS, namespace, body)

    def requests(self) -> dict[str, int]:
        """API requests served so far, by ``verb resource`` (``create jobs``, ``watch pods``)."""
        return {f"{verb} {res}": n for (verb, res), n in sorted(self.store.requests.items())}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
