"""The in-memory tag limiter: per run, for local executors that run without Redis.

It keeps exactly the semantics of the Redis limiter (leases with a TTL, fencing, waiters
ranked by priority then first arrival, waiter TTL), against a clock it is given, so unit
tests drive time with a fake clock. It is thread-safe: one lock guards all state, and
wake-ups are delivered after that lock is released.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from coreexec.errors import LimiterError
from coreexec.limits.base import (
    DEFAULT_LEASE_TTL_MS,
    DEFAULT_WAITER_TTL_MS,
    AcquireResult,
    Lease,
    SlotBlock,
    SlotHolder,
    SlotRequest,
    SlotState,
    check_request,
    check_ttl_ms,
)
from coreexec.limits.rules import SlotSpec

WakeCallback = Callable[[str, str], None]
"""Called as ``on_wake(wake_key, slot_name)`` for a waiter a freed slot may let on."""


def monotonic_ms() -> int:
    """The default clock: a monotonic time in milliseconds."""
    return time.monotonic_ns() // 1_000_000


@dataclass(frozen=True)
class _Held:
    run_id: str
    step_key: str
    slot_names: tuple[str, ...]
    deadline_ms: int


@dataclass(frozen=True)
class _Waiter:
    seq: int
    priority: int
    run_id: str
    step_key: str
    wake_key: str | None
    deadline_ms: int

    @property
    def rank(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


class InMemoryTagLimiter:
    """Counting semaphores per slot name for one process.

    ``now_ms`` is the clock (milliseconds, monotonic). ``on_wake`` is called with the
    wake key and slot name of each waiter that a freed slot may let on; ``condition``
    is notified (``notify_all``) whenever a slot frees or a waiter leaves a queue. To
    wait without missing a wake-up, hold the condition while calling ``try_acquire``
    and ``wait`` on it without releasing it in between: notifications are sent after the
    limiter's own lock is released, never while it is held.
    """

    def __init__(
        self,
        *,
        lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
        waiter_ttl_ms: int = DEFAULT_WAITER_TTL_MS,
        now_ms: Callable[[], int] = monotonic_ms,
        on_wake: WakeCallback | None = None,
        condition: threading.Condition | None = None,
    ) -> None:
        self.lease_ttl_ms = check_ttl_ms("lease_ttl_ms", lease_ttl_ms)
        self.waiter_ttl_ms = check_ttl_ms("waiter_ttl_ms", waiter_ttl_ms)
        self._now_ms = now_ms
        self._on_wake = on_wake
        self._condition = condition
        self._lock = threading.Lock()
        self._seq = 0
        self._limits: dict[str, int] = {}
        self._leases: dict[str, _Held] = {}
        self._holders: dict[str, dict[str, int]] = {}
        self._waiters: dict[str, _Waiter] = {}
        # slot name -> lease id -> deadline of that waiter's entry in this slot's queue
        self._queues: dict[str, dict[str, int]] = {}

    # -- public API ---------------------------------------------------------------

    def try_acquire(self, request: SlotRequest, *, place_only: bool = False) -> AcquireResult:
        """Take every slot of ``request`` at once, or none and queue it as a waiter
        (``place_only``: only take or keep the waiter's place, see :class:`TagLimiter`)."""
        check_request(request)
        if not request.slots:
            return AcquireResult(lease=self._lease(request))
        with self._lock:
            now = self._now_ms()
            changed = self._purge(now)
            result = self._do_acquire(request, now, place_only)
            wakes = self._wakes(changed, request.slots, skip=request.lease_id)
        self._notify(wakes, bool(changed))
        return result

    def refresh(self, lease: Lease, *, reclaim: bool = False) -> bool:
        """Extend the lease; False when it had lapsed: what was left of it is dropped, or
        with ``reclaim`` it is held again, even past a slot's limit (see TagLimiter)."""
        with self._lock:
            now = self._now_ms()
            changed = self._purge(now)
            names = [slot.name for slot in lease.slots]
            ok = bool(names) and all(lease.lease_id in self._holders.get(n, {}) for n in names)
            if ok or (names and reclaim):
                self._hold(lease, now + lease.ttl_ms)
            else:
                changed |= self._drop_lease(lease.lease_id, names)
            wakes = self._wakes(changed, lease.slots, skip=lease.lease_id)
        self._notify(wakes, bool(changed))
        return ok

    def release(self, lease: Lease, *, skip_wake_key: str | None = None) -> bool:
        """Give the slots back; False when the lease had already lapsed (nothing freed).
        No wake-up goes to ``skip_wake_key`` (see :meth:`TagLimiter.release`)."""
        with self._lock:
            now = self._now_ms()
            changed = self._purge(now)
            names = [slot.name for slot in lease.slots]
            live = [n for n in names if lease.lease_id in self._holders.get(n, {})]
            changed |= self._drop_lease(lease.lease_id, names)
            wakes = self._wakes(changed, lease.slots, skip=lease.lease_id)
            wakes = [wake for wake in wakes if wake[0] != skip_wake_key]
            self._forget_idle(names)
        self._notify(wakes, bool(changed))
        return bool(names) and len(live) == len(names)

    def withdraw(self, request: SlotRequest) -> None:
        """Stop waiting (a cancelled or failed run); idempotent."""
        with self._lock:
            now = self._now_ms()
            changed = self._purge(now)
            if self._waiters.pop(request.lease_id, None) is not None:
                for name, queue in self._queues.items():
                    if queue.pop(request.lease_id, None) is not None:
                        changed.add(name)
            wakes = self._wakes(changed, request.slots, skip=request.lease_id)
            self._forget_idle([slot.name for slot in request.slots])
        self._notify(wakes, bool(changed))

    def slots(self) -> tuple[SlotState, ...]:
        """Every slot with holders or waiters, waiters in the order they will be served."""
        with self._lock:
            changed = self._purge(self._now_ms())
            states = []
            for name in sorted(set(self._holders) | set(self._queues)):
                holder_ids = self._holders.get(name, {})
                waiter_ids = self._ranked(name)
                if not holder_ids and not waiter_ids:
                    continue
                states.append(
                    SlotState(
                        name=name,
                        limit=self._limits.get(name, 0),
                        holders=tuple(self._holder(lease_id) for lease_id in holder_ids),
                        waiters=tuple(self._waiter_holder(lease_id) for lease_id in waiter_ids),
                    )
                )
            wakes = self._wakes(changed, (), skip="")
        self._notify(wakes, bool(changed))
        return tuple(states)

    # -- the work, under the lock ---------------------------------------------------

    def _do_acquire(self, request: SlotRequest, now: int, place_only: bool) -> AcquireResult:
        names = [slot.name for slot in request.slots]
        held = [n for n in names if request.lease_id in self._holders.get(n, {})]
        if held and len(held) < len(names):
            raise LimiterError(
                f"lease {request.lease_id!r} holds {held} but not all of {names}; "
                "use a new lease id for a different set of slots"
            )
        if held:
            return self._extend(request, now)
        waiter = self._waiters.get(request.lease_id)
        seq = waiter.seq if waiter is not None else self._seq + 1
        blocked = self._blocking(request, rank=(-request.priority, seq))
        if not blocked and not place_only:
            self._grant(request, now)
            full = tuple(
                slot.name for slot in request.slots if len(self._holders[slot.name]) >= slot.limit
            )
            return AcquireResult(lease=self._lease(request), full=full)
        self._enqueue(request, waiter, now)
        return AcquireResult(
            lease=None,
            blocked_on=tuple(
                SlotBlock(
                    slot=slot,
                    holders=tuple(self._holder(h) for h in self._holders.get(slot.name, {})),
                    waiters_ahead=ahead,
                )
                for slot, ahead in blocked
            ),
            retry_in_ms=self._retry_in_ms([slot.name for slot, _ in blocked], now),
        )

    def _extend(self, request: SlotRequest, now: int) -> AcquireResult:
        """Asked again for what it holds: extend the lease, as the Redis limiter does."""
        deadline = now + self.lease_ttl_ms
        for slot in request.slots:
            self._holders[slot.name][request.lease_id] = deadline
        self._leases[request.lease_id] = replace(
            self._leases[request.lease_id], deadline_ms=deadline
        )
        return AcquireResult(lease=self._lease(request))

    def _blocking(self, request: SlotRequest, rank: tuple[int, int]) -> list[tuple[SlotSpec, int]]:
        """The slots ``request`` cannot have now (with how many waiters are ahead of it
        there): fewer units free than waiters ranked before it."""
        blocked: list[tuple[SlotSpec, int]] = []
        for slot in request.slots:
            free = slot.limit - len(self._holders.get(slot.name, {}))
            ahead = sum(
                1
                for lease_id in self._queues.get(slot.name, {})
                if lease_id != request.lease_id and self._waiters[lease_id].rank < rank
            )
            if ahead >= free:
                blocked.append((slot, ahead))
            self._limits[slot.name] = slot.limit
        return blocked

    def _grant(self, request: SlotRequest, now: int) -> None:
        deadline = now + self.lease_ttl_ms
        names = tuple(slot.name for slot in request.slots)
        for name in names:
            self._holders.setdefault(name, {})[request.lease_id] = deadline
        if self._waiters.pop(request.lease_id, None) is not None:
            for queue in self._queues.values():
                queue.pop(request.lease_id, None)
        self._leases[request.lease_id] = _Held(request.run_id, request.step_key, names, deadline)

    def _hold(self, lease: Lease, deadline: int) -> None:
        """Hold ``lease`` in every one of its slots until ``deadline`` (limits unchecked)."""
        names = tuple(slot.name for slot in lease.slots)
        for slot in lease.slots:
            self._holders.setdefault(slot.name, {})[lease.lease_id] = deadline
            self._limits[slot.name] = slot.limit
        self._leases[lease.lease_id] = _Held(lease.run_id, lease.step_key, names, deadline)

    def _enqueue(self, request: SlotRequest, waiter: _Waiter | None, now: int) -> None:
        deadline = now + self.waiter_ttl_ms
        if waiter is None:
            self._seq += 1
            seq = self._seq
        else:
            seq = waiter.seq
        self._waiters[request.lease_id] = _Waiter(
            seq=seq,
            priority=request.priority,
            run_id=request.run_id,
            step_key=request.step_key,
            wake_key=request.wake_key,
            deadline_ms=deadline,
        )
        for slot in request.slots:
            self._queues.setdefault(slot.name, {})[request.lease_id] = deadline

    def _retry_in_ms(self, names: list[str], now: int) -> int:
        retry = self.waiter_ttl_ms // 2
        for name in names:
            deadlines = list(self._holders.get(name, {}).values())
            deadlines += list(self._queues.get(name, {}).values())
            if deadlines:
                retry = min(retry, min(deadlines) - now)
        return max(retry, 1)

    def _purge(self, now: int) -> set[str]:
        """Drop lapsed leases and waiters; the names of the slots that changed."""
        changed: set[str] = set()
        for name, holders in self._holders.items():
            for lease_id in [i for i, deadline in holders.items() if deadline <= now]:
                del holders[lease_id]
                changed.add(name)
        for name, queue in self._queues.items():
            for lease_id in [i for i, deadline in queue.items() if deadline <= now]:
                del queue[lease_id]
                changed.add(name)
        for lease_id in [i for i, h in self._leases.items() if h.deadline_ms <= now]:
            del self._leases[lease_id]
        for lease_id in [i for i, w in self._waiters.items() if w.deadline_ms <= now]:
            del self._waiters[lease_id]
        return changed

    def _drop_lease(self, lease_id: str, names: list[str]) -> set[str]:
        """Remove this lease id's own entries (never another's); the slots it freed."""
        freed = {n for n in names if self._holders.get(n, {}).pop(lease_id, None) is not None}
        self._leases.pop(lease_id, None)
        return freed

    def _ranked(self, name: str) -> list[str]:
        queue = self._queues.get(name, {})
        return sorted(queue, key=lambda lease_id: self._waiters[lease_id].rank)

    def _wakes(
        self, changed: set[str], slots: tuple[SlotSpec, ...], *, skip: str
    ) -> list[tuple[str, str]]:
        """Waiters at the head of each changed slot's queue that its free units cover."""
        limits = {slot.name: slot.limit for slot in slots}
        wakes: list[tuple[str, str]] = []
        seen: set[str] = set()
        for name in sorted(changed):
            limit = limits.get(name, self._limits.get(name, 0))
            free = limit - len(self._holders.get(name, {}))
            if free <= 0:
                continue
            for lease_id in self._ranked(name)[:free]:
                wake_key = self._waiters[lease_id].wake_key
                if lease_id != skip and wake_key and wake_key not in seen:
                    seen.add(wake_key)
                    wakes.append((wake_key, name))
        return wakes

    def _forget_idle(self, names: list[str]) -> None:
        for name in names:
            if not self._holders.get(name) and not self._queues.get(name):
                self._holders.pop(name, None)
                self._queues.pop(name, None)
                self._limits.pop(name, None)

    def _holder(self, lease_id: str) -> SlotHolder:
        held = self._leases.get(lease_id)
        if held is None:
            return SlotHolder(run_id="", step_key="", lease_id=lease_id)
        return SlotHolder(run_id=held.run_id, step_key=held.step_key, lease_id=lease_id)

    def _waiter_holder(self, lease_id: str) -> SlotHolder:
        waiter = self._waiters[lease_id]
        return SlotHolder(run_id=waiter.run_id, step_key=waiter.step_key, lease_id=lease_id)

    def _lease(self, request: SlotRequest) -> Lease:
        return Lease(
            lease_id=request.lease_id,
            run_id=request.run_id,
            step_key=request.step_key,
            slots=request.slots,
            ttl_ms=self.lease_ttl_ms,
        )

    # -- notification, outside the lock ----------------------------------------------

    def _notify(self, wakes: list[tuple[str, str]], changed: bool) -> None:
        if self._on_wake is not None:
            for wake_key, slot_name in wakes:
                self._on_wake(wake_key, slot_name)
        if changed and self._condition is not None:
            with self._condition:
                self._condition.notify_all()
