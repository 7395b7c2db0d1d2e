"""The object store behind the test API server: objects, resourceVersions, a change log.

Every write bumps one cluster-wide resourceVersion (as etcd's revision does) and appends
a watch event to the change log. Watches resume from any version still in the log; a
version older than the log's start (after :meth:`Store.compact`) is ``410 Gone``.
Objects handed out are deep copies, so callers never share state with the store.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.support.kube_api.errors import already_exists, gone, not_found
from tests.support.kube_api.selectors import Predicate

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """One API resource: ``group``/``version``, URL ``plural`` and object ``kind``."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


JOBS = Resource("batch", "v1", "jobs", "Job")
PODS = Resource("", "v1", "pods", "Pod")
EVENTS = Resource("", "v1", "events", "Event")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace")
"""Cluster-scoped: stored under the namespace ``""``."""
SECRETS = Resource("", "v1", "secrets", "Secret")
CONFIG_MAPS = Resource("", "v1", "configmaps", "ConfigMap")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")


@dataclass(frozen=True)
class Change:
    """One entry of the change log: a watch event of ``resource``."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: Resource
    obj: Obj


def now_rfc3339() -> str:
    """The time as the API server writes it (seconds, UTC, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """The time with microseconds, as ``MicroTime`` fields (event ``eventTime``) carry it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    """Objects by (resource, namespace, name), one resourceVersion, a change log."""

    def __init__(self, history_limit: int = 100_000) -> None:
        self._cond = threading.Condition()
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._log: list[Change] = []
        self._rv = 1
        self._oldest_rv = 1
        self._history_limit = history_limit
        self._epoch = 0
        self.requests: Counter[tuple[str, str]] = Counter()
        self.request_times: dict[tuple[str, str], list[float]] = {}
        """time.monotonic() of every request, by (verb, resource)."""

    # ------------------------------------------------------------------ reads
    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def get(self, res: Resource, namespace: str, name: str) -> Obj:
        with self._cond:
            obj = self._objects.get((res.plural, namespace, name))
            if obj is None:
                raise not_found(res.group, res.plural, name)
            return copy.deepcopy(obj)

    def find(self, res: Resource, namespace: str, name: str) -> Obj | None:
        with self._cond:
            obj = self._objects.get((res.plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, res: Resource, namespace: str | None, match: Predicate | None = None
    ) -> tuple[list[Obj], int]:
        """Matching objects (sorted by namespace and name) and the list's resourceVersion."""
        with self._cond:
            items = [
                copy.deepcopy(obj)
                for (plural, ns, _name), obj in sorted(self._objects.items())
                if plural == res.plural
                and (namespace is None or ns == namespace)
                and (match is None or match(obj))
            ]
            return items, self._rv

    # ------------------------------------------------------------------ writes
    def create(self, res: Resource, obj: Obj) -> Obj:
        """Store a new object, filling uid, creationTimestamp and resourceVersion."""
        meta = obj.setdefault("metadata", {})
        key = (res.plural, meta.get("namespace", ""), meta["name"])
        with self._cond:
            if key in self._objects:
                raise already_exists(res.group, res.plural, meta["name"])
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_rfc3339())
            obj["kind"], obj["apiVersion"] = res.kind, res.api_version
            self._write(key, res, "ADDED", obj)
            return copy.deepcopy(obj)

    def update(
        self, res: Resource, namespace: str, name: str, mutate: Callable[[Obj], None]
    ) -> Obj:
        """Apply ``mutate`` to a copy of the object and store it as a new version."""
        key = (res.plural, namespace, name)
        with self._cond:
            current = self._objects.get(key)
            if current is None:
                raise not_found(res.group, res.plural, name)
            updated = copy.deepcopy(current)
            mutate(updated)
            if updated == current:
                return updated
            self._write(key, res, "MODIFIED", updated)
            return copy.deepcopy(updated)

    def remove(self, res: Resource, namespace: str, name: str) -> Obj:
        """Delete the object now; the DELETED event carries the deletion's version."""
        key = (res.plural, namespace, name)
        with self._cond:
            current = self._objects.get(key)
            if current is None:
                raise not_found(res.group, res.plural, name)
            self._write(key, res, "DELETED", copy.deepcopy(current))
            del self._objects[key]
            return copy.deepcopy(current)

    def _write(self, key: tuple[str, str, str], res: Resource, kind: str, obj: Obj) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[key] = obj
        self._log.append(Change(self._rv, kind, res, copy.deepcopy(obj)))
        if len(self._log) > self._history_limit:
            dropped = self._log[: len(self._log) - self._history_limit]
            del self._log[: len(dropped)]
            self._oldest_rv = dropped[-1].rv
        self._cond.notify_all()

    # ------------------------------------------------------------------ watches
    def compact(self) -> int:
        """Forget the change log up to now and end every open watch; return the version.

        A watch that then resumes from an older version gets ``410 Gone``, as after an
        etcd compaction combined with an API server restart.
        """
        with self._cond:
            self._log.clear()
            self._rv += 1  # the compacted revision: every version seen so far is too old
            self._oldest_rv = self._rv
            rv = self._rv
        self.end_watches()
        return rv

    def changes_after(
        self, rv: int, res: Resource, namespace: str | None, match: Predicate
    ) -> tuple[list[Change], int]:
        """Changes of ``res`` after version ``rv`` and the version they reach.

        ``410 Gone`` when ``rv`` is older than the change log.
        """
        with self._cond:
            if rv < self._oldest_rv:
                raise gone(f"too old resource version: {rv} ({self._oldest_rv})")
            changes = [
                change
                for change in self._log
                if change.rv > rv
                and change.resource == res
                and (namespace is None or change.obj["metadata"].get("namespace") == namespace)
                and match(change.obj)
            ]
            return changes, self._rv

    def end_watches(self) -> None:
        """End every open watch stream (clients reconnect from their last version)."""
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()

    def epoch(self) -> int:
        with self._cond:
            return self._epoch

    def wait_for_change(self, rv: int, epoch: int, timeout_s: float) -> bool:
        """Block until the version passes ``rv``; False on timeout or a new epoch."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._rv <= rv and self._epoch == epoch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._epoch == epoch

    def wait_any(self, since_rv: int, timeout_s: float) -> int:
        """Block until anything is written after ``since_rv`` or the timeout; the version."""
        with self._cond:
            if self._rv <= since_rv:
                self._cond.wait(timeout_s)
            return self._rv

    def iter_objects(self, res: Resource) -> Iterator[Obj]:
        """Copies of every object of ``res`` right now."""
        items, _rv = self.list(res, None)
        yield from items

    def count_request(self, verb: str, resource: str) -> None:
        with self._cond:
            self.requests[(verb, resource)] += 1
            self.request_times.setdefault((verb, resource), []).append(time.monotonic())
