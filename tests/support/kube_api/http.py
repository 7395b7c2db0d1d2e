"""The HTTP face of the test API server: routes, list/watch, delete options, logs.

Only the endpoints a launcher and a test session use are served (``/version``; batch/v1
Jobs; core/v1 Pods, ``pods/log`` and Events; Namespaces, Secrets, ConfigMaps and
ServiceAccounts to set a namespace up; namespaced and cluster-wide lists). Responses are the API
server's JSON: objects with ``kind``/``apiVersion``, lists with ``metadata.resourceVersion``,
errors as ``Status`` objects. A watch is a chunked stream of ``{"type", "object"}``
lines that ends after ``timeoutSeconds``; a resumed watch whose version is compacted gets
one ``ERROR`` event carrying a 410 ``Status``, as the real server sends it.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from tests.support.kube_api.cluster_api import CREATABLE, ORPHAN_WARNING, ClusterApi
from tests.support.kube_api.errors import (
    ApiError,
    bad_request,
    method_not_allowed,
    not_found,
    unauthorized,
)
from tests.support.kube_api.selectors import Predicate, field_selector, label_selector
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
)

MAX_WATCH_TIMEOUT_S = 1800
VERSION = {
    "major": "1",
    "minor": "31",
    "emulationMajor": "1",
    "emulationMinor": "31",
    "gitVersion": "v1.31.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T07:28:49Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_NAMED = frozenset({"metadata.name", "metadata.namespace"})
_FIELDS = {
    "namespaces": frozenset({"metadata.name", "status.phase"}),
    "secrets": _NAMED | {"type"},
    "configmaps": _NAMED,
    "serviceaccounts": _NAMED,
    "jobs": frozenset({"metadata.name", "metadata.namespace", "status.successful"}),
    "pods": frozenset(
        {
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "status.phase",
            "spec.serviceAccountName",
        }
    ),
    "events": frozenset(
        {
            "metadata.name",
            "metadata.namespace",
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        }
    ),
}
_ROUTES: list[tuple[re.Pattern[str], Resource, str]] = [
    (re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$"), JOBS, ""),
    (re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+)/status$"), JOBS, "status"),
    (re.compile(r"^/apis/batch/v1/()jobs$"), JOBS, "all"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?$"), PODS, ""),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$"), PODS, "log"),
    (re.compile(r"^/api/v1/()pods$"), PODS, "all"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/events(?:/([^/]+))?$"), EVENTS, ""),
    (re.compile(r"^/api/v1/()events$"), EVENTS, "all"),
    (re.compile(r"^/api/v1/()namespaces(?:/([^/]+))?$"), NAMESPACES, ""),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$"), SECRETS, ""),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:/([^/]+))?$"), CONFIG_MAPS, ""),
    (
        re.compile(r"^/api/v1/namespaces/([^/]+)/serviceaccounts(?:/([^/]+))?$"),
        SERVICE_ACCOUNTS,
        "",
    ),
]


class LogSource(Protocol):
    """Where container logs come from (the kubelet stand-in)."""

    def read_log(
        self, namespace: str, pod: Obj, container: str, follow: bool, stopped: Callable[[], bool]
    ) -> Iterator[bytes]: ...


class _Query:
    def __init__(self, raw: str) -> None:
        self._values = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def get(self, name: str) -> str | None:
        return self._values.get(name)

    def flag(self, name: str) -> bool:
        return (self._values.get(name) or "").lower() in ("true", "1")

    def integer(self, name: str) -> int | None:
        raw = self._values.get(name)
        if raw in (None, ""):
            return None
        try:
            return int(raw)  # type: ignore[arg-type]
        except ValueError:
            raise bad_request(f"invalid value for {name}: {raw!r}") from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up is normal (a stopped watch); anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class KubeApiServer:
    """The test API server on ``127.0.0.1:port``, serving in daemon threads."""

    def __init__(self, api: ClusterApi, logs: LogSource, token: str, port: int = 0) -> None:
        self.api = api
        self.logs = logs
        self.token = token
        self._stopping = threading.Event()
        self._failures: list[tuple[int, int | None]] = []
        self._failures_lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = _Server(("127.0.0.1", port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def fail_next(self, count: int, code: int = 429, retry_after_s: int | None = 1) -> None:
        """Answer the next ``count`` requests with ``code`` (429 Too Many Requests, or a
        5xx) and, when given, a ``Retry-After`` header, as an overloaded server does."""
        with self._failures_lock:
            self._failures.extend([(code, retry_after_s)] * count)

    def take_failure(self) -> tuple[int, int | None] | None:
        with self._failures_lock:
            return self._failures.pop(0) if self._failures else None

    def start(self) -> KubeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.api.store.end_watches()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: KubeApiServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is no place for an access log."""

    # ------------------------------------------------------------------ plumbing
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        try:
            if self.headers.get("Authorization") != f"Bearer {self.server_state.token}":
                raise unauthorized()
            injected = self.server_state.take_failure()
            if injected is not None:
                self._send_injected(*injected)
                return
            self._route(method, body)
        except ApiError as error:
            self._send_json(error.code, error.status())
        except (BrokenPipeError, ConnectionResetError):
            # The client went away mid-stream (a watch it stopped, a log it closed).
            self.close_connection = True

    def _send_injected(self, code: int, retry_after_s: int | None) -> None:
        reason = "TooManyRequests" if code == 429 else "ServiceUnavailable"
        message = (
            "the server has received too many requests and has asked us to try again later"
            if code == 429
            else "the server is currently unable to handle the request"
        )
        headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
        self.server_state.api.store.count_request("rejected", str(code))
        self._send_json(code, ApiError(code, reason, message).status(), headers)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError:
            return {"__invalid__": raw.decode(errors="replace")}

    def _send_json(self, code: int, body: Obj, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # ------------------------------------------------------------------ routing
    def _route(self, method: str, body: Any) -> None:
        url = urlsplit(self.path)
        query = _Query(url.query)
        if url.path in ("/version", "/version/"):
            self._send_json(200, VERSION)
            return
        for pattern, res, sub in _ROUTES:
            match = pattern.match(url.path)
            if match:
                namespace = match.group(1) or None
                name = match.group(2) if match.lastindex and match.lastindex >= 2 else None
                self._resource(method, res, sub, namespace, name, query, body)
                return
        raise not_found("", "", url.path)

    def _resource(
        self,
        method: str,
        res: Resource,
        sub: str,
        namespace: str | None,
        name: str | None,
        query: _Query,
        body: Any,
    ) -> None:
        store = self.server_state.api.store
        if sub == "log":
            store.count_request("get", "pods/log")
            assert namespace is not None and name is not None
            self._log(namespace, name, query)
        elif method == "GET" and name is not None:
            store.count_request("get", res.plural)
            self._send_json(200, store.get(res, namespace or "", name))
        elif method == "GET" and query.flag("watch"):
            store.count_request("watch", res.plural)
            self._watch(res, namespace, query)
        elif method == "GET":
            store.count_request("list", res.plural)
            self._list(res, namespace, query)
        elif method == "POST" and name is None and sub == "" and res in CREATABLE:
            store.count_request("create", res.plural)
            if not isinstance(body, dict) or "__invalid__" in body:
                raise bad_request("the body of the request was in an unknown format")
            self._send_json(201, self.server_state.api.create(res, namespace or "", body))
        elif method == "DELETE" and name is not None and sub == "":
            store.count_request("delete", res.plural)
            self._delete(res, namespace or "", name, query, body)
        elif method == "DELETE" and sub == "" and res in (JOBS, PODS):
            store.count_request("deletecollection", res.plural)
            assert namespace is not None
            self._delete_collection(res, namespace, query, body)
        else:
            raise method_not_allowed()

    # ------------------------------------------------------------------ verbs
    def _predicate(self, res: Resource, query: _Query) -> Predicate:
        labels = label_selector(query.get("labelSelector"))
        fields = field_selector(query.get("fieldSelector"), _FIELDS[res.plural])
        return lambda obj: labels(obj) and fields(obj)

    def _list(self, res: Resource, namespace: str | None, query: _Query) -> None:
        items, rv = self.server_state.api.store.list(res, namespace, self._predicate(res, query))
        self._send_json(
            200,
            {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    def _watch(self, res: Resource, namespace: str | None, query: _Query) -> None:
        store = self.server_state.api.store
        match = self._predicate(res, query)
        timeout_s = query.integer("timeoutSeconds")
        timeout_s = (
            MAX_WATCH_TIMEOUT_S if timeout_s is None else min(timeout_s, MAX_WATCH_TIMEOUT_S)
        )
        deadline = time.monotonic() + timeout_s
        epoch = store.epoch()
        raw_rv = query.get("resourceVersion")
        self._start_stream("application/json")
        if raw_rv in (None, "", "0"):
            items, cursor = store.list(res, namespace, match)
            for obj in items:
                self._send_event("ADDED", obj)
        else:
            try:
                cursor = int(raw_rv)  # type: ignore[arg-type]
            except ValueError:
                self._send_event(
                    "ERROR", bad_request(f"invalid resource version {raw_rv!r}").status()
                )
                self._end_stream()
                return
        timed_out = False
        try:
            timed_out = self._follow_changes(res, namespace, match, cursor, epoch, deadline)
        except ApiError as error:
            self._send_event("ERROR", error.status())
        # A bookmark before a timeout; a watch ended by a restart or compaction gets none.
        if query.flag("allowWatchBookmarks") and timed_out:
            bookmark = {
                "kind": res.kind,
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(store.resource_version)},
            }
            self._send_event("BOOKMARK", bookmark)
        self._end_stream()

    def _follow_changes(
        self,
        res: Resource,
        namespace: str | None,
        match: Predicate,
        cursor: int,
        epoch: int,
        deadline: float,
    ) -> bool:
        """Send changes until the deadline (True) or the end of the epoch (False)."""
        store = self.server_state.api.store
        while True:
            changes, cursor = store.changes_after(cursor, res, namespace, match)
            for change in changes:
                self._send_event(change.type, change.obj)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            if not store.wait_for_change(cursor, epoch, remaining):
                return store.epoch() == epoch

    def _send_event(self, kind: str, obj: Obj) -> None:
        self._chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

    def _delete_options(self, query: _Query, body: Any) -> tuple[str | None, int | None]:
        options = body if isinstance(body, dict) else {}
        propagation = options.get("propagationPolicy") or query.get("propagationPolicy")
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = query.integer("gracePeriodSeconds")
        if options.get("orphanDependents") is True and propagation is None:
            propagation = "Orphan"
        return propagation, grace

    def _delete(self, res: Resource, namespace: str, name: str, query: _Query, body: Any) -> None:
        api = self.server_state.api
        propagation, grace = self._delete_options(query, body)
        if res is JOBS:
            answer, orphaned = api.delete_job(namespace, name, propagation)
            headers = {"Warning": ORPHAN_WARNING} if orphaned else None
            self._send_json(200, answer, headers)
        elif res is PODS:
            self._send_json(200, api.delete_pod(namespace, name, grace))
        elif res is NAMESPACES:
            self._send_json(200, api.delete_namespace(name))
        else:
            self._send_json(200, api.store.remove(res, namespace, name))

    def _delete_collection(self, res: Resource, namespace: str, query: _Query, body: Any) -> None:
        api = self.server_state.api
        propagation, grace = self._delete_options(query, body)
        items, rv = api.store.list(res, namespace, self._predicate(res, query))
        for obj in items:
            name = obj["metadata"]["name"]
            try:
                if res is JOBS:
                    api.delete_job(namespace, name, propagation)
                else:
                    api.delete_pod(namespace, name, grace)
            except ApiError as error:
                if error.code != 404:
                    raise
        self._send_json(
            200,
            {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    def _log(self, namespace: str, name: str, query: _Query) -> None:
        pod = self.server_state.api.store.get(PODS, namespace, name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container") or None
        if container is None:
            if len(containers) != 1:
                raise bad_request(
                    f"a container name must be specified for pod {name}, choose one of: "
                    f"{containers}"
                )
            container = containers[0]
        if container not in containers:
            raise bad_request(f"container {container} is not valid for pod {name}")
        follow = query.flag("follow")
        chunks = self.server_state.logs.read_log(
            namespace, pod, container, follow, lambda: self.server_state.stopping
        )
        first = next(chunks, b"")  # raises a waiting-to-start 400 before headers go out
        tail = query.integer("tailLines")
        if tail is not None and not follow:
            data = first + b"".join(chunks)
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail > 0 else b""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._start_stream("text/plain")
        if first:
            self._chunk(first)
        for chunk in chunks:
            if chunk:
                self._chunk(chunk)
        self._end_stream()
