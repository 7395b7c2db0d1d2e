"""Riding out a Redis outage: retry with backoff for up to a tolerance, then give up.

A Redis restart (a crash, a failover, a deploy) takes seconds. The coordinator and the
workers keep what they were doing through an outage shorter than the run's
``redis_outage_tolerance_s``: the coordinator keeps its place on the run's stream and
reads on from it, a worker keeps a finished step's events and publishes them once Redis
answers. Only an outage longer than the tolerance fails the run, naming the tolerance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from coreexec.errors import BrokerConnectionError

log = logging.getLogger(__name__)

DEFAULT_OUTAGE_TOLERANCE_S = 60.0
"""How long a Redis outage may last before in-flight runs fail."""

FIRST_RETRY_S = 0.05
MAX_RETRY_S = 1.0

T = TypeVar("T")


@dataclass
class Outage:
    """One party's view of Redis being unreachable: when it began, when to try again.

    ``failed`` is called on each connection error and returns how long to wait before the
    next try, or raises once the outage has lasted longer than ``tolerance_s``;
    ``recovered`` is called after a call that worked and returns how long the outage
    lasted (None when there was none).
    """

    tolerance_s: float
    what: str
    started_at: float | None = None
    _next_delay_s: float = FIRST_RETRY_S

    def failed(self, exc: BrokerConnectionError, now: float) -> float:
        if self.started_at is None:
            self.started_at = now
            log.warning(
                "%s: Redis unreachable, retrying for up to %gs: %s",
                self.what,
                self.tolerance_s,
                exc,
            )
        lasted_s = now - self.started_at
        if lasted_s > self.tolerance_s:
            raise BrokerConnectionError(
                f"{self.what}: Redis unreachable for {lasted_s:.1f}s, longer than the outage "
                f"tolerance (redis_outage_tolerance_s={self.tolerance_s:g}): {exc}",
                url=exc.url,
            ) from exc
        delay_s = min(self._next_delay_s, self.tolerance_s - lasted_s + FIRST_RETRY_S)
        self._next_delay_s = min(self._next_delay_s * 2, MAX_RETRY_S)
        return max(delay_s, 0.0)

    def recovered(self, now: float) -> float | None:
        if self.started_at is None:
            return None
        lasted_s = now - self.started_at
        self.started_at = None
        self._next_delay_s = FIRST_RETRY_S
        log.warning("%s: Redis answers again after %.1fs", self.what, lasted_s)
        return lasted_s


def call_through_outage(
    call: Callable[[], T],
    *,
    tolerance_s: float,
    what: str,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, retried with backoff while it raises BrokerConnectionError, for up to
    ``tolerance_s`` seconds (then the last error is raised, naming the tolerance)."""
    outage = Outage(tolerance_s, what)
    while True:
        try:
            result = call()
        except BrokerConnectionError as exc:
            sleep(outage.failed(exc, clock()))
            continue
        outage.recovered(clock())
        return result
