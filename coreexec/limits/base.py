"""The tag limiter protocol: counting semaphores with leases, shared by every implementation.

A step whose tags match rules needs one slot of each matching :class:`SlotSpec`. It asks
for all of them in one :meth:`TagLimiter.try_acquire`: all are granted together or none
is, so a step never holds one slot while it waits for another. A grant is a
:class:`Lease` with a TTL: the holder refreshes it while the step is queued or running
and releases it when the step ends; a lease that is not refreshed lapses and its slots
come back. A refused request is remembered as a waiter (served by priority, then
arrival) until it is granted, withdrawn or stops asking for ``waiter_ttl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from coreexec.errors import LimiterError
from coreexec.limits.rules import SlotSpec

DEFAULT_LEASE_TTL_MS = 30_000
"""How long a lease lives unless refreshed; a crashed holder's slots come back after it."""

DEFAULT_WAITER_TTL_MS = 30_000
"""How long a refused request keeps its place in the queues without asking again."""

MAX_ABS_PRIORITY = 2**52
"""Priorities are kept as floating-point scores in Redis; beyond this they lose order."""


@dataclass(frozen=True)
class SlotHolder:
    """Who holds (or waits for) a slot."""

    run_id: str
    step_key: str
    lease_id: str


@dataclass(frozen=True)
class SlotRequest:
    """A step attempt asking for every slot its tags need.

    ``lease_id`` names the holder and is the fencing token: only that id may refresh or
    release what it was granted. ``wake_key`` is an opaque address (for the Redis
    limiter: the key of a Redis stream) to which a wake-up is sent when a slot this
    request waits for is released.
    """

    run_id: str
    step_key: str
    lease_id: str
    priority: int
    slots: tuple[SlotSpec, ...]
    wake_key: str | None = None


@dataclass(frozen=True)
class Lease:
    """Slots granted to one step attempt until ``release`` or until the TTL lapses."""

    lease_id: str
    run_id: str
    step_key: str
    slots: tuple[SlotSpec, ...]
    ttl_ms: int


@dataclass(frozen=True)
class SlotBlock:
    """A slot a request could not get, and who holds it now."""

    slot: SlotSpec
    holders: tuple[SlotHolder, ...]
    waiters_ahead: int = 0


@dataclass(frozen=True)
class AcquireResult:
    """A lease when every slot was granted; otherwise the slots that blocked it.

    ``retry_in_ms`` (refused requests only): when to ask again even without a wake-up,
    because a blocking lease or an earlier waiter may lapse then, and because a waiter
    that stops asking for ``waiter_ttl`` loses its place.

    ``full`` (granted requests only): the slots this grant took the last free unit of.
    Until a release or a lapse nobody else can have them, and the release wakes the
    waiters it lets on, so asking for them again before that is a wasted round trip.
    """

    lease: Lease | None
    blocked_on: tuple[SlotBlock, ...] = ()
    retry_in_ms: int | None = None
    full: tuple[str, ...] = ()

    @property
    def granted(self) -> bool:
        return self.lease is not None


@dataclass(frozen=True)
class SlotState:
    """One slot as `coreexec limits ls` shows it."""

    name: str
    limit: int
    holders: tuple[SlotHolder, ...]
    waiters: tuple[SlotHolder, ...] = field(default=())


@runtime_checkable
class TagLimiter(Protocol):
    """Counting semaphores per slot name, taken all-or-nothing under leases."""

    lease_ttl_ms: int

    def try_acquire(self, request: SlotRequest, *, place_only: bool = False) -> AcquireResult:
        """Take every slot of ``request`` at once, or none and queue it as a waiter.

        ``place_only``: take or keep the request's place in the queues (its waiter TTL
        starts again) but never grant it, even when it could be: for a caller that has
        nowhere to run the step yet (its executor is full) and must not lose its turn.
        The result is a refusal; ``blocked_on`` lists only the slots that did block it.
        """
        ...

    def refresh(self, lease: Lease, *, reclaim: bool = False) -> bool:
        """Extend the lease; False when it had lapsed (its slots may be someone else's).

        A lapsed lease is dropped, or with ``reclaim`` held again for its holder in every
        slot, even past a slot's limit: for a holder whose step still runs although its
        refreshes could not arrive (a Redis outage longer than the TTL, or a Redis that
        restarted without its data). The slot then counts it again, so no new grant goes
        past the limit; until enough holders release, the slot may stay over it.
        """
        ...

    def release(self, lease: Lease, *, skip_wake_key: str | None = None) -> bool:
        """Give the slots back; False when the lease had already lapsed (nothing freed).

        Waiters the freed units may let on are woken, except at ``skip_wake_key``: a
        caller that asks again for its own waiters right after passes its wake key, and
        saves a wake-up to itself and the pass it would cause.
        """
        ...

    def withdraw(self, request: SlotRequest) -> None:
        """Stop waiting (a cancelled or failed run); idempotent."""
        ...

    def slots(self) -> tuple[SlotState, ...]:
        """Every slot with holders or waiters, for display."""
        ...


def check_ttl_ms(name: str, value: int) -> int:
    """Return ``value`` or raise LimiterError when it is not a positive number of ms."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LimiterError(f"{name} must be a positive integer of milliseconds, got {value!r}")
    return value


def check_request(request: SlotRequest) -> None:
    """Raise LimiterError naming the lease and field when ``request`` cannot be served."""
    where = f"slot request of run {request.run_id!r} step {request.step_key!r}"
    if not request.lease_id:
        raise LimiterError(f"{where}: lease_id is empty; give each step attempt a unique id")
    if isinstance(request.priority, bool) or not isinstance(request.priority, int):
        raise LimiterError(f"{where}: priority must be an integer, got {request.priority!r}")
    if abs(request.priority) > MAX_ABS_PRIORITY:
        raise LimiterError(f"{where}: priority {request.priority} is beyond ±2**52")
    seen: set[str] = set()
    for slot in request.slots:
        if slot.name in seen:
            raise LimiterError(
                f"{where}: slot {slot.name!r} is asked for twice; build the slots with "
                "rules.slots_for, which merges rules naming the same slot"
            )
        seen.add(slot.name)
        if isinstance(slot.limit, bool) or not isinstance(slot.limit, int) or slot.limit < 0:
            raise LimiterError(f"{where}: slot {slot.name!r} has limit {slot.limit!r}; use >= 0")
