"""The coordinator's heartbeat: how another process tells a live coordinator from a dead one.

A coordinator started by a run launcher (and one started by ``coreexec runs resume``)
keeps two keys in Redis while it runs (named in :mod:`coreexec.transport.keys`)::

    coreexec:run:{<run_id>}:coordinator        STRING  JSON CoordinatorInfo, PX ttl_ms
    coreexec:run:{<run_id>}:coordinator:seen   STRING  the same JSON, kept for a day

The first lapses ``ttl_ms`` after the last beat, so its absence means "nobody coordinates
this run now"; the second says a heartbeating coordinator ran it at all. A run whose
status says it is running, with the first key gone and the second present, lost its
coordinator and may be resumed. A key whose owner ran on this host under a pid that no
longer exists is dead at once: no need to wait for the TTL after a ``kill -9``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType

from coreexec.redis_clients import Redis, RedisError
from coreexec.transport import keys

log = logging.getLogger(__name__)

COORDINATOR_TTL_MS = 15_000
"""A coordinator silent for this long is dead."""

SEEN_TTL_S = keys.FINISHED_RUN_TTL_S
_HOST = socket.gethostname()


class CoordinatorState(StrEnum):
    ALIVE = "alive"
    """A coordinator beats for this run now."""
    DEAD = "dead"
    """A heartbeating coordinator ran this run and has stopped beating (or its pid is gone)."""
    UNKNOWN = "unknown"
    """No heartbeating coordinator ever ran it (e.g. `coreexec run` in a terminal)."""


@dataclass(frozen=True)
class CoordinatorInfo:
    """Who coordinates a run: host, pid, since when, and a free-form owner label."""

    host: str
    pid: int
    started_at: float
    owner: str
    launched: bool = False
    """Started by a run launcher (a Celery coordinator task): the launcher can resume it."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> CoordinatorInfo | None:
        try:
            body = json.loads(raw)
            return cls(
                host=str(body["host"]),
                pid=int(body["pid"]),
                started_at=float(body["started_at"]),
                owner=str(body.get("owner", "")),
                launched=bool(body.get("launched", False)),
            )
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        return f"{self.owner} (pid {self.pid} on {self.host})"


@dataclass(frozen=True)
class CoordinatorStatus:
    state: CoordinatorState
    info: CoordinatorInfo | None = None


def _pid_exists(pid: int) -> bool:
    """True while ``pid`` is a live process of this host (a zombie is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        stat = ""
    if stat:
        # The state follows the command name, which may hold spaces and parentheses.
        return stat[stat.rindex(")") + 2 :][:1] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def coordinator_status(client: Redis, run_id: str) -> CoordinatorStatus:
    """Whether a coordinator is alive for ``run_id`` (raises redis errors as they are)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.get(keys.run_coordinator(run_id))
        pipe.get(keys.run_coordinator_seen(run_id))
        alive_raw, seen_raw = pipe.execute()
    if alive_raw is not None:
        info = CoordinatorInfo.from_json(alive_raw)
        if info is not None and info.host == _HOST and not _pid_exists(info.pid):
            return CoordinatorStatus(CoordinatorState.DEAD, info)
        return CoordinatorStatus(CoordinatorState.ALIVE, info)
    if seen_raw is not None:
        return CoordinatorStatus(CoordinatorState.DEAD, CoordinatorInfo.from_json(seen_raw))
    return CoordinatorStatus(CoordinatorState.UNKNOWN)


def silence_s(client: Redis, run_id: str) -> float | None:
    """Seconds since the run's coordinator last beat (from the TTL its seen key has
    left), or None when no heartbeating coordinator ran it (raises redis errors)."""
    ttl_ms = int(client.pttl(keys.run_coordinator_seen(run_id)))
    if ttl_ms < 0:
        return None
    return max(0.0, SEEN_TTL_S - ttl_ms / 1000)


_beating: set[str] = set()
_beating_lock = threading.Lock()


def is_beating(run_id: str) -> bool:
    """True while a :class:`CoordinatorHeartbeat` of this process beats for ``run_id``."""
    with _beating_lock:
        return run_id in _beating


class CoordinatorHeartbeat:
    """Beats for one run from a daemon thread until :meth:`stop` (or the ``with`` exits).

    Redis errors are logged, never raised: a coordinator keeps coordinating through a
    Redis hiccup, and at worst looks dead to a concurrent ``runs resume`` for a while.
    """

    def __init__(
        self,
        client: Redis,
        run_id: str,
        *,
        owner: str,
        ttl_ms: int = COORDINATOR_TTL_MS,
        launched: bool = False,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.ttl_ms = ttl_ms
        self.info = CoordinatorInfo(
            host=_HOST, pid=os.getpid(), started_at=time.time(), owner=owner, launched=launched
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Write both keys once (also called by the thread every ``ttl_ms / 3``)."""
        body = self.info.to_json()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.set(keys.run_coordinator(self.run_id), body, px=self.ttl_ms)
            pipe.set(keys.run_coordinator_seen(self.run_id), body, ex=SEEN_TTL_S)
            pipe.execute()

    def _loop(self) -> None:
        interval_s = self.ttl_ms / 3000
        while not self._stop.wait(interval_s):
            try:
                self.beat()
            except RedisError as exc:
                log.warning("coordinator heartbeat of run %s failed: %s", self.run_id, exc)

    def start(self) -> CoordinatorHeartbeat:
        """Beat now (errors propagate, so a dead Redis is noticed up front), then keep on."""
        self.beat()
        with _beating_lock:
            _beating.add(self.run_id)
        self._thread = threading.Thread(
            target=self._loop, name=f"coordinator-heartbeat-{self.run_id[:8]}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and drop the liveness key: the run has no coordinator any more."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with _beating_lock:
            _beating.discard(self.run_id)
        try:
            self.client.delete(keys.run_coordinator(self.run_id))
        except RedisError as exc:
            log.warning("could not drop the heartbeat of run %s: %s", self.run_id, exc)

    def __enter__(self) -> CoordinatorHeartbeat:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
