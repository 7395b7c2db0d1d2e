"""The Kubernetes API as the launcher uses it: a few calls on the official client.

Every call has a request timeout and is retried with exponential backoff and jitter on
429, 5xx and a connection that failed, honouring ``Retry-After``. Responses are read as
the API's JSON (``_preload_content=False``), so the launcher works the same on every
client version the ``kubernetes`` extra admits. Job creation is capped per second per
process. :data:`PERMISSIONS` lists every (API group, resource, verb) these methods use:
the Role in ``workers/k8s/rbac.yaml`` grants exactly those (a test checks both).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from workers.k8s.config import K8sConfig
from workers.launcher import LaunchError

Obj = dict[str, Any]
PERMISSIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("batch", "jobs", "create"),
        ("batch", "jobs", "get"),
        ("batch", "jobs", "list"),
        ("batch", "jobs", "delete"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "pods", "delete"),
        ("", "pods/log", "get"),
        ("", "events", "list"),
        ("", "events", "watch"),
    }
)
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_BACKOFF_S = 10.0


class ApiCallError(LaunchError):
    """An API request failed for good; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int, body: str = "") -> None:
        super().__init__(message, retryable=status == 0 or status in _RETRY_STATUSES)
        self.status = status
        self.body = body

    @property
    def reason(self) -> str:
        try:
            return str(json.loads(self.body).get("message", ""))
        except (ValueError, AttributeError):
            return self.body


@dataclass(frozen=True)
class ClientKey:
    pid: int
    in_cluster: bool
    kubeconfig_file: str | None
    context: str | None


_clients: dict[ClientKey, client.ApiClient] = {}
_clients_lock = threading.Lock()


def _key(config: K8sConfig) -> ClientKey:
    in_cluster = config.load_incluster_config
    if in_cluster is None:
        in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    return ClientKey(os.getpid(), in_cluster, config.kubeconfig_file, config.context)


def api_client_for(config: K8sConfig) -> client.ApiClient:
    """One client per process and cluster; a LaunchError naming the config if it fails."""
    key = _key(config)
    with _clients_lock:
        found = _clients.get(key)
        if found is not None:
            return found
        configuration = client.Configuration()
        try:
            if key.in_cluster:
                kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            else:
                kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=key.kubeconfig_file,
                    context=key.context,
                    client_configuration=configuration,
                )
        except (ConfigException, OSError) as exc:
            where = (
                "the in-cluster service account"
                if key.in_cluster
                else (
                    f"kubeconfig {key.kubeconfig_file or '$KUBECONFIG or ~/.kube/config'}"
                    + (f", context {key.context!r}" if key.context else "")
                )
            )
            raise LaunchError(
                f"cannot load the Kubernetes config from {where}: {exc}; set the executor's "
                "k8s.kubeconfig_file / k8s.context, or k8s.load_incluster_config inside a pod",
                retryable=False,
            ) from exc
        configuration.retries = False  # this module retries, with backoff
        _clients[key] = client.ApiClient(configuration)
        return _clients[key]


class _RateLimit:
    """At most ``rate`` acquisitions per second in this process (a token bucket)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self, rate: float) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + 1.0 / rate
        if start > now:
            time.sleep(start - now)


_creations = _RateLimit()


class KubeApi:
    """The calls of the launcher, the watch and the sweep; see the module docstring."""

    def __init__(self, config: K8sConfig, api_client: client.ApiClient | None = None) -> None:
        self.config = config
        self.api_client = api_client or api_client_for(config)
        self.batch = client.BatchV1Api(self.api_client)
        self.core = client.CoreV1Api(self.api_client)

    # -- plumbing -----------------------------------------------------------------------
    def _call(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        retries = self.config.api_retries
        for attempt in range(retries + 1):
            try:
                return func(*args, _request_timeout=self.config.request_timeout_s, **kwargs)
            except ApiException as exc:
                status = int(exc.status or 0)
                if status not in _RETRY_STATUSES or attempt == retries:
                    raise ApiCallError(
                        f"Kubernetes API: {what} failed: HTTP {status} {exc.reason}: "
                        f"{_message(exc.body)}",
                        status=status,
                        body=str(exc.body or ""),
                    ) from exc
                delay = _retry_after(exc) or _backoff(attempt)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if attempt == retries:
                    raise ApiCallError(
                        f"Kubernetes API: {what} failed: no answer from "
                        f"{self.api_client.configuration.host} ({exc})",
                        status=0,
                    ) from exc
                delay = _backoff(attempt)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        response = self._call(what, func, *args, _preload_content=False, **kwargs)
        loaded: Obj = json.loads(response.data or b"{}")
        return loaded

    def _delete(
        self, kind: str, namespace: str, name: str, func: Callable[..., Any], body: Obj
    ) -> bool:
        """Delete one object; False if it was already gone."""
        try:
            self._json(f"delete {kind} {namespace}/{name}", func, name, namespace, body=body)
        except ApiCallError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # -- jobs ---------------------------------------------------------------------------
    def create_job(self, namespace: str, job: Obj) -> Obj:
        _creations.acquire(self.config.pod_creations_per_s)
        name = job["metadata"]["name"]
        return self._json(
            f"create Job {namespace}/{name}", self.batch.create_namespaced_job, namespace, job
        )

    def read_job(self, namespace: str, name: str) -> Obj | None:
        try:
            return self._json(
                f"get Job {namespace}/{name}", self.batch.read_namespaced_job, name, namespace
            )
        except ApiCallError as exc:
            if exc.status == 404:
                return None
            raise

    def list_jobs(self, namespace: str, label_selector: str) -> list[Obj]:
        found = self._json(
            f"list Jobs in {namespace}",
            self.batch.list_namespaced_job,
            namespace,
            label_selector=label_selector,
        )
        return list(found.get("items") or [])

    def delete_job(
        self, namespace: str, name: str, *, foreground: bool, grace_s: int | None = None
    ) -> bool:
        """Delete a Job and its pods; False if it was gone.

        Foreground keeps the Job until its pods are gone (a cancel: the Job is seen
        until nothing runs); Background removes it at once (cleanup after the end). The
        API's own default for Jobs would orphan the pods.
        """
        body: Obj = {"propagationPolicy": "Foreground" if foreground else "Background"}
        if grace_s is not None:
            body["gracePeriodSeconds"] = grace_s
        return self._delete("Job", namespace, name, self.batch.delete_namespaced_job, body)

    # -- pods ---------------------------------------------------------------------------
    def list_pods(self, namespace: str, label_selector: str) -> tuple[list[Obj], str]:
        found = self._json(
            f"list Pods in {namespace}",
            self.core.list_namespaced_pod,
            namespace,
            label_selector=label_selector,
        )
        return list(found.get("items") or []), str(found["metadata"].get("resourceVersion", ""))

    def delete_pod(self, namespace: str, name: str, *, grace_s: int | None = None) -> bool:
        body: Obj = {} if grace_s is None else {"gracePeriodSeconds": grace_s}
        return self._delete("Pod", namespace, name, self.core.delete_namespaced_pod, body)

    def read_log(self, namespace: str, pod: str, tail_lines: int) -> str:
        response = self._call(
            f"get the log of Pod {namespace}/{pod}",
            self.core.read_namespaced_pod_log,
            pod,
            namespace,
            tail_lines=tail_lines,
            _preload_content=False,
        )
        return bytes(response.data).decode("utf-8", "replace")

    # -- events -------------------------------------------------------------------------
    def list_events(self, namespace: str, field_selector: str) -> tuple[list[Obj], str]:
        found = self._json(
            f"list Events in {namespace}",
            self.core.list_namespaced_event,
            namespace,
            field_selector=field_selector,
        )
        return list(found.get("items") or []), str(found["metadata"].get("resourceVersion", ""))

    # -- watches ------------------------------------------------------------------------
    def watch(
        self,
        resource: str,
        namespace: str,
        *,
        resource_version: str,
        timeout_s: int,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Generator[tuple[str, Obj], None, None]:
        """One watch request on ``pods`` or ``events``: (type, object) until it ends.

        An ``ERROR`` event (410 Gone for a compacted version) is yielded as is.
        """
        func = (
            self.core.list_namespaced_pod
            if resource == "pods"
            else (self.core.list_namespaced_event)
        )
        kwargs: Obj = {
            "watch": True,
            "resource_version": resource_version,
            "timeout_seconds": timeout_s,
            "allow_watch_bookmarks": True,
        }
        if label_selector:
            kwargs["label_selector"] = label_selector
        if field_selector:
            kwargs["field_selector"] = field_selector
        response: Any = func(
            namespace,
            _preload_content=False,
            _request_timeout=(self.config.request_timeout_s, timeout_s + 30),
            **kwargs,
        )
        try:
            for line in _lines(response):
                event = json.loads(line)
                yield str(event.get("type", "")), dict(event.get("object") or {})
        finally:
            response.close()
            response.release_conn()


def _lines(response: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(65536, decode_content=True):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from (line for line in lines if line.strip())
    if buffer.strip():
        yield buffer


def _retry_after(exc: ApiException) -> float | None:
    headers = exc.headers or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return min(float(value), _MAX_BACKOFF_S * 3) if value is not None else None
    except ValueError:
        return None


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter: 0.2 s, 0.4 s, ... capped at 10 s."""
    return random.uniform(0, min(_MAX_BACKOFF_S, 0.2 * 2**attempt))


def _message(body: Any) -> str:
    try:
        return str(json.loads(body).get("message", body))
    except (ValueError, TypeError, AttributeError):
        return str(body or "")
