"""The dispatcher protocol: how a coordinator starts steps and hears back from them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.plan import PlannedStep
from coreexec.retry import FailureClass

STREAMED_STORAGE_FLUSH_S = 0.25
"""The :attr:`StepDispatcher.storage_flush_interval_s` of dispatchers whose events also
live on a Redis stream; a follower of the run storage allows for it."""


@dataclass(frozen=True)
class LostAttempt:
    """An attempt the dispatcher gave up on (worker gone, never picked up, ...)."""

    attempt_id: str
    failure_class: FailureClass
    message: str


class StepDispatcher(ABC):
    """Starts step attempts somewhere and reports their events.

    The coordinator calls every method from one thread. ``sink`` must only be called
    from inside :meth:`wait` (or :meth:`dispatch`), so the coordinator's state is never
    touched from two threads at once.
    """

    max_in_flight: int | None = None
    """At most this many attempts at once (None: no limit of the dispatcher's own)."""

    max_async_in_flight: int | None = None
    """Set by a dispatcher that runs async steps on an event loop of its own
    (:attr:`async_keys`): at most this many of them at once, counted apart from
    :attr:`max_in_flight`, which then bounds the other steps only."""

    async_keys: frozenset[str] = frozenset()
    """Steps counted against :attr:`max_async_in_flight` (when that is set)."""

    wake_key: str | None = None
    """Where a Redis tag limiter sends wake-ups for this run (a Redis stream key)."""

    outages_ridden: int = 0
    """How many Redis outages :meth:`wait` rode out so far. After one the coordinator
    refreshes its slot leases at once: they may have lapsed, or gone with Redis's data."""

    storage_flush_interval_s: float = 0.0
    """How long the coordinator may hold events before writing them to the run storage.
    Nonzero only where every event has another durable home that a resumed run drains
    first (the celery executor's Redis stream): a coordinator that dies loses none."""

    @abstractmethod
    def start(self, sink: EventSink) -> None:
        """Prepare to run steps; events go to ``sink``."""

    @abstractmethod
    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        """Start one attempt; must not block until it ends.

        A dispatcher may hold the attempt back until :meth:`flush`, which the coordinator
        calls once it has dispatched every step it can in one pass.
        """

    def flush(self) -> Sequence[LostAttempt]:
        """Send what :meth:`dispatch` held back; the attempts that could not be sent
        come back as lost (and are never started)."""
        return ()

    @abstractmethod
    def wait(self, timeout_s: float | None) -> None:
        """Block until some event arrived (passed to the sink) or ``timeout_s`` elapsed."""

    def lost_attempts(self) -> Sequence[LostAttempt]:
        """Attempts found dead since the last call (no heartbeat, never picked up)."""
        return ()

    def terminate(self, attempts: Sequence[StepAttempt]) -> None:  # noqa: B027
        """Stop these running attempts (cancellation); they end as cancelled."""

    def wake(self) -> None:  # noqa: B027
        """Make a blocked :meth:`wait` return early (a cancel request arrived)."""

    def close(self) -> None:  # noqa: B027
        """Release everything; called once, also after errors."""
