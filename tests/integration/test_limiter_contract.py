"""The TagLimiter contract, run against the in-memory and the Redis implementations.

The in-memory limiter runs on a fake clock (time moves only when a test moves it); the
Redis limiter runs on a real redis-server with short TTLs, and the tests wait for a
lease or waiter to lapse on a condition with a deadline.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Protocol

import pytest
import redis

from coreexec.limits import (
    InMemoryTagLimiter,
    Lease,
    RedisTagLimiter,
    SlotRequest,
    SlotSpec,
    TagLimiter,
    parse_limits,
    slots_for,
)
from tests.support.overlap import Overlap
from tests.support.waiting import wait_until

WAIT_S = 10.0
# How often, on the fake clock, a waiter asks again, and how many times before giving up.
ASK_EVERY_MS = 50
MAX_ASKS = 1_000


def spec(name: str, limit: int = 1) -> SlotSpec:
    return SlotSpec(name=name, limit=limit, rule=f"{name} limit {limit}")


class Harness(Protocol):
    kind: str

    def make(self, *, lease_ttl_ms: int = 30_000, waiter_ttl_ms: int = 30_000) -> TagLimiter: ...

    def cursor(self, limiter: TagLimiter, wake_key: str) -> str: ...

    def wait_wake(
        self, limiter: TagLimiter, wake_key: str, cursor: str, timeout_s: float
    ) -> list[str]: ...

    def let_lapse(self, limiter: TagLimiter, lease_id: str, ttl_ms: int) -> None: ...

    def peer(self, limiter: TagLimiter) -> TagLimiter:
        """A limiter sharing ``limiter``'s slots, with a long lease TTL where it can."""
        ...

    def keep_doing(self, action: Callable[[], None], for_ms: int, every_ms: int) -> None:
        """Call ``action`` every ``every_ms`` while ``for_ms`` of the limiter's time pass."""
        ...

    def ask_until_granted(self, limiter: TagLimiter, request: SlotRequest) -> Lease:
        """Keep asking (so keep the place in line) while the limiter's time passes, until
        ``request`` is granted."""
        ...


class FakeClock:
    def __init__(self, start_ms: int = 1_000_000) -> None:
        self._now = start_ms
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return self._now

    def advance(self, ms: int) -> None:
        with self._lock:
            self._now += ms


def listed(limiter: TagLimiter, lease_id: str) -> bool:
    """Whether ``lease_id`` shows as a holder or waiter of any slot."""
    return any(
        holder.lease_id == lease_id
        for state in limiter.slots()
        for holder in (*state.holders, *state.waiters)
    )


class MemoryHarness:
    kind = "memory"

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.condition = threading.Condition()
        self.wakes: dict[str, list[str]] = defaultdict(list)

    def make(self, *, lease_ttl_ms: int = 30_000, waiter_ttl_ms: int = 30_000) -> TagLimiter:
        return InMemoryTagLimiter(
            lease_ttl_ms=lease_ttl_ms,
            waiter_ttl_ms=waiter_ttl_ms,
            now_ms=self.clock,
            on_wake=self._on_wake,
            condition=self.condition,
        )

    def _on_wake(self, wake_key: str, slot_name: str) -> None:
        with self.condition:
            self.wakes[wake_key].append(slot_name)
            self.condition.notify_all()

    def cursor(self, limiter: TagLimiter, wake_key: str) -> str:
        with self.condition:
            return str(len(self.wakes[wake_key]))

    def wait_wake(
        self, limiter: TagLimiter, wake_key: str, cursor: str, timeout_s: float
    ) -> list[str]:
        seen = int(cursor)
        with self.condition:
            self.condition.wait_for(lambda: len(self.wakes[wake_key]) > seen, timeout_s)
            return self.wakes[wake_key][seen:]

    def let_lapse(self, limiter: TagLimiter, lease_id: str, ttl_ms: int) -> None:
        self.clock.advance(ttl_ms + 1)
        assert not listed(limiter, lease_id)

    def peer(self, limiter: TagLimiter) -> TagLimiter:
        # In-memory slots are per limiter; the fake clock stands still, so its TTL is enough.
        return limiter

    def keep_doing(self, action: Callable[[], None], for_ms: int, every_ms: int) -> None:
        for _ in range(for_ms // every_ms):
            self.clock.advance(every_ms)
            action()

    def ask_until_granted(self, limiter: TagLimiter, request: SlotRequest) -> Lease:
        # Time moves only between asks, by less than any TTL these tests set.
        for _ in range(MAX_ASKS):
            result = limiter.try_acquire(request)
            if result.lease is not None:
                return result.lease
            self.clock.advance(ASK_EVERY_MS)
        raise AssertionError(f"{request.lease_id} not granted after {MAX_ASKS} asks")


class RedisHarness:
    kind = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self.namespace = f"test-{uuid.uuid4().hex[:8]}"
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.limiters: list[RedisTagLimiter] = []

    def make(self, *, lease_ttl_ms: int = 30_000, waiter_ttl_ms: int = 30_000) -> TagLimiter:
        limiter = RedisTagLimiter.from_url(
            self.url,
            namespace=self.namespace,
            lease_ttl_ms=lease_ttl_ms,
            waiter_ttl_ms=waiter_ttl_ms,
        )
        self.limiters.append(limiter)
        return limiter

    def cursor(self, limiter: TagLimiter, wake_key: str) -> str:
        assert isinstance(limiter, RedisTagLimiter)
        return limiter.wake_cursor(wake_key)

    def wait_wake(
        self, limiter: TagLimiter, wake_key: str, cursor: str, timeout_s: float
    ) -> list[str]:
        assert isinstance(limiter, RedisTagLimiter)
        newest = limiter.wait_for_wake(wake_key, cursor, timeout_s)
        if newest is None:
            return []
        entries: list[tuple[str, dict[str, str]]] = self.client.execute_command(  # type: ignore[no-untyped-call]
            "XRANGE", wake_key, f"({cursor}", newest
        )
        return [fields["wake"] for _, fields in entries]

    def let_lapse(self, limiter: TagLimiter, lease_id: str, ttl_ms: int) -> None:
        wait_until(lambda: not listed(limiter, lease_id), f"{lease_id} to lapse", WAIT_S)

    def peer(self, limiter: TagLimiter) -> TagLimiter:
        return self.make(lease_ttl_ms=30_000)

    def keep_doing(self, action: Callable[[], None], for_ms: int, every_ms: int) -> None:
        # Redis keeps its own time: the real time has to pass.
        until = time.monotonic() + for_ms / 1000
        pause = threading.Event()
        while time.monotonic() < until:
            action()
            pause.wait(every_ms / 1000)

    def ask_until_granted(self, limiter: TagLimiter, request: SlotRequest) -> Lease:
        lease, _timeouts = acquire_blocking(self, limiter, request)
        return lease

    def close(self) -> None:
        for limiter in self.limiters:
            limiter.close()
        self.client.close()


@pytest.fixture(params=["memory", "redis"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        yield MemoryHarness()
        return
    redis_harness = RedisHarness(request.getfixturevalue("redis_url"))
    try:
        yield redis_harness
    finally:
        redis_harness.close()


def ask(
    name: str,
    *slots: SlotSpec,
    priority: int = 0,
    run_id: str | None = None,
) -> SlotRequest:
    return SlotRequest(
        run_id=run_id or f"run-{name}",
        step_key=f"step_{name}",
        lease_id=f"lease-{name}",
        priority=priority,
        slots=slots,
        wake_key=f"wake:{name}",
    )


def granted(limiter: TagLimiter, request: SlotRequest) -> Lease:
    result = limiter.try_acquire(request)
    assert result.lease is not None, f"{request.lease_id} refused: {result.blocked_on}"
    return result.lease


def refused(limiter: TagLimiter, request: SlotRequest) -> None:
    result = limiter.try_acquire(request)
    assert result.lease is None, f"{request.lease_id} was granted"
    assert result.retry_in_ms is not None and result.retry_in_ms >= 1


def holders_of(limiter: TagLimiter, slot_name: str) -> list[str]:
    for state in limiter.slots():
        if state.name == slot_name:
            return [holder.lease_id for holder in state.holders]
    return []


def waiters_of(limiter: TagLimiter, slot_name: str) -> list[str]:
    for state in limiter.slots():
        if state.name == slot_name:
            return [waiter.lease_id for waiter in state.waiters]
    return []


def acquire_blocking(
    harness: Harness, limiter: TagLimiter, request: SlotRequest, timeout_s: float = WAIT_S
) -> tuple[Lease, int]:
    """Ask until granted, waiting for wake-ups between tries; (lease, waits that timed out)."""
    assert request.wake_key is not None
    deadline = time.monotonic() + timeout_s
    timeouts = 0
    while True:
        cursor = harness.cursor(limiter, request.wake_key)
        result = limiter.try_acquire(request)
        if result.lease is not None:
            return result.lease, timeouts
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{request.lease_id} not granted within {timeout_s} s")
        assert result.retry_in_ms is not None
        wait_s = min(remaining, result.retry_in_ms / 1000, 3.0)
        if not harness.wait_wake(limiter, request.wake_key, cursor, wait_s):
            timeouts += 1


# -- limits hold under concurrency ----------------------------------------------------


def test_limit_is_never_exceeded_by_concurrent_acquirers(harness: Harness) -> None:
    limiter = harness.make()
    slot = spec("database=warehouse", limit=2)
    # The first two holders wait for each other while they hold the slot.
    overlap = Overlap(limit=2, timeout_s=WAIT_S)
    done: list[str] = []
    timeouts: list[int] = []
    errors: list[BaseException] = []

    def worker(thread_no: int) -> None:
        try:
            for step_no in range(5):
                request = SlotRequest(
                    run_id=f"run-{thread_no}",
                    step_key=f"step-{step_no}",
                    lease_id=f"lease-{thread_no}-{step_no}",
                    priority=0,
                    slots=(slot,),
                    wake_key=f"wake:{thread_no}",
                )
                lease, waits_timed_out = acquire_blocking(harness, limiter, request)
                timeouts.append(waits_timed_out)
                with overlap.holding():
                    # Keep the slot across a few scheduler turns so holders overlap.
                    for _ in range(3):
                        time.sleep(0)
                assert limiter.release(lease)
                done.append(request.lease_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors[0]
    assert len(done) == 30
    assert overlap.peak == 2
    # Every waiter was woken by a release, none had to wait out its retry time.
    assert sum(timeouts) == 0
    assert limiter.slots() == ()


# -- all or nothing --------------------------------------------------------------------


def test_two_slots_are_taken_together_or_not_at_all(harness: Harness) -> None:
    limiter = harness.make()
    a, b = spec("a"), spec("b")
    holder = granted(limiter, ask("holder", a))

    result = limiter.try_acquire(ask("both", a, b))
    assert result.lease is None
    assert [block.slot.name for block in result.blocked_on] == ["a"]
    assert [h.lease_id for h in result.blocked_on[0].holders] == ["lease-holder"]
    assert result.blocked_on[0].holders[0].run_id == "run-holder"
    # While it waits for a, it holds nothing of b.
    assert holders_of(limiter, "b") == []
    assert waiters_of(limiter, "b") == ["lease-both"]

    assert limiter.release(holder)
    lease = granted(limiter, ask("both", a, b))
    assert [slot.name for slot in lease.slots] == ["a", "b"]
    assert holders_of(limiter, "a") == ["lease-both"]
    assert holders_of(limiter, "b") == ["lease-both"]
    assert waiters_of(limiter, "b") == []


def test_asking_again_for_held_slots_extends_the_same_lease(harness: Harness) -> None:
    limiter = harness.make()
    a = spec("a")
    first = granted(limiter, ask("x", a))
    again = granted(limiter, ask("x", a))
    assert again.lease_id == first.lease_id
    assert holders_of(limiter, "a") == ["lease-x"]
    assert limiter.release(again)
    assert limiter.slots() == ()


def test_a_grant_names_the_slots_it_filled(harness: Harness) -> None:
    limiter = harness.make()
    a, b = spec("a", limit=2), spec("b", limit=1)
    first = limiter.try_acquire(ask("first", a))
    assert first.granted and first.full == ()
    second = limiter.try_acquire(ask("second", a, b))
    assert second.granted and second.full == ("a", "b")
    assert second.lease is not None and limiter.release(second.lease)
    third = limiter.try_acquire(ask("third", b))
    assert third.granted and third.full == ("b",)


def test_a_release_wakes_no_one_at_the_key_it_skips(harness: Harness) -> None:
    limiter = harness.make()
    a = spec("a")
    holder = granted(limiter, ask("holder", a))
    waiter = ask("waiter", a)
    refused(limiter, waiter)
    before = harness.cursor(limiter, "wake:waiter")
    assert limiter.release(holder, skip_wake_key="wake:waiter")
    # Wake-ups go out before release returns: none went to the skipped key, and the
    # waiter, asking again by itself as a coordinator does after an attempt ends, is served.
    assert harness.cursor(limiter, "wake:waiter") == before
    lease = granted(limiter, waiter)

    other = ask("other", a)
    refused(limiter, other)
    cursor = harness.cursor(limiter, "wake:other")
    assert limiter.release(lease, skip_wake_key="wake:waiter")
    assert harness.wait_wake(limiter, "wake:other", cursor, WAIT_S) == ["a"]


# -- ordering: priority, then first come first served ----------------------------------


def test_waiters_are_served_by_priority_then_arrival(harness: Harness) -> None:
    limiter = harness.make()
    a = spec("a")
    holder = granted(limiter, ask("holder", a))
    low1, low2 = ask("low1", a), ask("low2", a)
    high = ask("high", a, priority=5)
    low3 = ask("low3", a)
    for request in (low1, low2, high, low3):
        refused(limiter, request)
    assert waiters_of(limiter, "a") == ["lease-high", "lease-low1", "lease-low2", "lease-low3"]

    cursor = harness.cursor(limiter, "wake:high")
    assert limiter.release(holder)
    # The freed slot wakes the high-priority waiter, the only one it can serve.
    assert harness.wait_wake(limiter, "wake:high", cursor, WAIT_S) == ["a"]
    # Earlier low-priority waiters asking first do not get it.
    refused(limiter, low3)
    refused(limiter, low1)
    lease = granted(limiter, high)

    # Each next grant goes by arrival, whatever order the waiters ask again in.
    for expected in (low1, low2, low3):
        assert limiter.release(lease)
        for other in reversed([low1, low2, low3]):
            if other is not expected and listed(limiter, other.lease_id):
                refused(limiter, other)
        lease = granted(limiter, expected)
    assert limiter.release(lease)
    assert limiter.slots() == ()


def test_a_waiter_keeps_its_place_across_retries(harness: Harness) -> None:
    limiter = harness.make()
    a = spec("a")
    holder = granted(limiter, ask("holder", a))
    first, second = ask("first", a), ask("second", a)
    refused(limiter, first)
    refused(limiter, second)
    for _ in range(3):
        refused(limiter, first)
    assert waiters_of(limiter, "a") == ["lease-first", "lease-second"]
    result = limiter.try_acquire(second)
    assert result.blocked_on[0].waiters_ahead == 1
    assert limiter.release(holder)
    refused(limiter, second)
    granted(limiter, first)


def test_place_only_never_grants_but_takes_and_keeps_the_place(harness: Harness) -> None:
    limiter = harness.make()
    a = spec("a", limit=2)
    other = granted(limiter, ask("other", a))
    busy = ask("busy", a)  # its executor is full: it must not get a slot yet

    result = limiter.try_acquire(busy, place_only=True)
    assert not result.granted and result.blocked_on == ()
    assert result.retry_in_ms is not None and result.retry_in_ms > 0
    assert waiters_of(limiter, "a") == ["lease-busy"]
    # A newcomer ranks behind the place kept, although one unit is free.
    late = ask("late", a)
    assert limiter.try_acquire(late).blocked_on[0].waiters_ahead == 1
    refused(limiter, late)
    assert waiters_of(limiter, "a") == ["lease-busy", "lease-late"]
    # Once it can run, it asks as usual and is served first.
    granted(limiter, busy)
    assert limiter.release(other)
    granted(limiter, late)


def test_place_only_renews_a_waiter_entry_before_it_lapses(harness: Harness) -> None:
    limiter = harness.make(waiter_ttl_ms=400)
    a = spec("a")
    holder = granted(limiter, ask("holder", a))
    busy = ask("busy", a)
    refused(limiter, busy)

    def keep_place() -> None:
        assert not limiter.try_acquire(busy, place_only=True).granted

    harness.keep_doing(keep_place, for_ms=1_000, every_ms=100)
    # A second past its 400 ms TTL, it is still first in line.
    assert waiters_of(limiter, "a") == ["lease-busy"]
    assert limiter.release(holder)
    granted(limiter, busy)


def test_crossing_slot_orders_do_not_deadlock(harness: Harness) -> None:
    limiter = harness.make()
    a, b = spec("a"), spec("b")
    hold_a = granted(limiter, ask("hold_a", a))
    hold_b = granted(limiter, ask("hold_b", b))
    x = ask("x", a, b)  # asks a then b
    y = ask("y", b, a)  # asks b then a
    refused(limiter, x)
    refused(limiter, y)
    # One rank over the namespace: x is ahead of y in both queues, never first in one
    # queue and second in the other.
    assert waiters_of(limiter, "a") == ["lease-x", "lease-y"]
    assert waiters_of(limiter, "b") == ["lease-x", "lease-y"]

    assert limiter.release(hold_b)
    refused(limiter, y)  # a is still held, and x is ahead of it for b
    refused(limiter, x)  # a is still held
    assert holders_of(limiter, "b") == []  # neither holds b while waiting for a
    assert limiter.release(hold_a)
    refused(limiter, y)
    lease_x = granted(limiter, x)
    assert limiter.release(lease_x)
    lease_y = granted(limiter, y)
    assert limiter.release(lease_y)
    assert limiter.slots() == ()


def test_crossing_slot_orders_under_threads_all_finish(harness: Harness) -> None:
    limiter = harness.make()
    a, b = spec("a"), spec("b")
    errors: list[BaseException] = []
    finished: list[str] = []

    def worker(thread_no: int) -> None:
        try:
            for step_no in range(4):
                slots = (a, b) if (thread_no + step_no) % 2 else (b, a)
                request = SlotRequest(
                    run_id=f"run-{thread_no}",
                    step_key=f"s{step_no}",
                    lease_id=f"l-{thread_no}-{step_no}",
                    priority=thread_no % 3,
                    slots=slots,
                    wake_key=f"wake:cross:{thread_no}",
                )
                lease, _ = acquire_blocking(harness, limiter, request)
                assert holders_of(limiter, "a") == [request.lease_id]
                assert limiter.release(lease)
                finished.append(request.lease_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors[0]
    assert len(finished) == 16


# -- leases: lapse and fencing ----------------------------------------------------------


def test_a_lapsed_lease_frees_its_slot(harness: Harness) -> None:
    limiter = harness.make(lease_ttl_ms=300)
    a = spec("a")
    crashed = granted(limiter, ask("crashed", a))
    waiter = ask("waiter", a)
    result = limiter.try_acquire(waiter)
    assert result.lease is None
    assert result.retry_in_ms is not None and result.retry_in_ms <= 300

    harness.let_lapse(limiter, crashed.lease_id, crashed.ttl_ms)
    lease = granted(limiter, waiter)
    assert holders_of(limiter, "a") == [lease.lease_id]


def test_refresh_keeps_a_lease_past_its_ttl(harness: Harness) -> None:
    limiter = harness.make(lease_ttl_ms=30_000)
    a = spec("a")
    lease = granted(limiter, ask("x", a))
    assert limiter.refresh(lease)
    assert holders_of(limiter, "a") == ["lease-x"]
    refused(limiter, ask("other", a))
    assert limiter.release(lease)


def test_release_and_refresh_after_a_lapse_are_refused_and_free_nothing(
    harness: Harness,
) -> None:
    limiter = harness.make(lease_ttl_ms=300)
    a, b = spec("a"), spec("b")
    old = granted(limiter, ask("old", a, b))
    harness.let_lapse(limiter, old.lease_id, old.ttl_ms)
    # Someone else takes one of the slots in the meantime.
    other_limiter = harness.peer(limiter)
    new = granted(other_limiter, ask("new", a))

    assert limiter.refresh(old) is False
    assert limiter.release(old) is False
    assert holders_of(limiter, "a") == ["lease-new"]
    refused(other_limiter, ask("third", a))
    assert other_limiter.release(new)


def test_a_reclaimed_lease_counts_again_even_past_the_limit(harness: Harness) -> None:
    # Its holder still runs though its refreshes could not arrive (a Redis outage longer
    # than the TTL): taken back, it holds the slot again, and nobody new gets past the
    # limit until enough holders release.
    limiter = harness.make(lease_ttl_ms=300)
    a, b = spec("a"), spec("b", limit=2)
    old = granted(limiter, ask("old", a, b))
    harness.let_lapse(limiter, old.lease_id, old.ttl_ms)
    other_limiter = harness.peer(limiter)
    new = granted(other_limiter, ask("new", a))

    assert limiter.refresh(replace(old, ttl_ms=30_000), reclaim=True) is False
    assert sorted(holders_of(limiter, "a")) == ["lease-new", "lease-old"]
    assert holders_of(limiter, "b") == ["lease-old"]
    states = {state.name: state for state in limiter.slots()}
    assert states["a"].limit == 1
    assert {h.lease_id: h.step_key for h in states["a"].holders}["lease-old"] == "step_old"
    refused(other_limiter, ask("third", a))
    assert other_limiter.release(new)
    refused(other_limiter, ask("third", a))  # old still holds the one unit of a
    assert limiter.refresh(old)  # live again: a plain refresh extends it
    assert limiter.release(old)
    granted(other_limiter, ask("third", a))


def test_a_lease_lost_with_every_slot_is_held_again_on_reclaim(harness: Harness) -> None:
    # A Redis that restarted without its data knows nothing of the lease or its slots.
    limiter = harness.make(lease_ttl_ms=300)
    a = spec("a")
    old = granted(limiter, ask("old", a))
    harness.let_lapse(limiter, old.lease_id, old.ttl_ms)
    assert limiter.slots() == ()
    assert limiter.refresh(replace(old, ttl_ms=30_000), reclaim=True) is False
    refused(harness.peer(limiter), ask("waiter", a))
    cursor = harness.cursor(limiter, "wake:waiter")
    assert limiter.release(old)
    assert harness.wait_wake(limiter, "wake:waiter", cursor, WAIT_S) == ["a"]


# -- waiters: TTL and withdraw ------------------------------------------------------------


def test_a_waiter_that_stops_asking_loses_its_place(harness: Harness) -> None:
    limiter = harness.make(waiter_ttl_ms=300)
    a = spec("a")
    holder = granted(limiter, ask("holder", a))
    crashed = ask("crashed", a)
    patient = ask("patient", a)
    refused(limiter, crashed)
    refused(limiter, patient)
    assert limiter.release(holder)
    refused(limiter, patient)  # the crashed waiter is still ahead
    # Asking again refreshes the patient's entry, not the crashed one's, until it lapses.
    lease = harness.ask_until_granted(limiter, patient)
    assert lease.lease_id == "lease-patient"
    assert not listed(limiter, "lease-crashed")


def test_withdraw_removes_a_waiter_and_wakes_the_next(harness: Harness) -> None:
    limiter = harness.make()
    a, b = spec("a"), spec("b")
    hold_b = granted(limiter, ask("hold_b", b))
    first = ask("first", a, b)  # a is free, b is not: it waits, first in a's queue
    second = ask("second", a)  # would fit in a, but first ranks ahead of it
    refused(limiter, first)
    result = limiter.try_acquire(second)
    assert result.lease is None
    assert result.blocked_on[0].slot.name == "a"
    assert result.blocked_on[0].waiters_ahead == 1

    cursor = harness.cursor(limiter, "wake:second")
    limiter.withdraw(first)
    assert harness.wait_wake(limiter, "wake:second", cursor, WAIT_S) == ["a"]
    assert not listed(limiter, "lease-first")
    limiter.withdraw(first)  # idempotent
    lease = granted(limiter, second)
    assert limiter.release(lease)
    assert limiter.release(hold_b)


# -- rules ---------------------------------------------------------------------------------


def test_per_unique_value_rule_gives_each_value_its_own_limit(harness: Harness) -> None:
    limiter = harness.make()
    rules = parse_limits(
        [
            {"key": "team", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
            {"key": "database", "value": "warehouse", "limit": 2},
        ],
        path="tag_concurrency_limits",
    )

    def request(name: str, tags: dict[str, str]) -> SlotRequest:
        return ask(name, *slots_for(rules, tags))

    a1 = granted(limiter, request("a1", {"team": "a"}))
    refused(limiter, request("a2", {"team": "a"}))
    granted(limiter, request("b1", {"team": "b", "database": "warehouse"}))
    granted(limiter, request("c1", {"team": "c", "database": "warehouse"}))
    refused(limiter, request("d1", {"team": "d", "database": "warehouse"}))
    assert sorted(state.name for state in limiter.slots()) == [
        "database=warehouse",
        "team=a",
        "team=b",
        "team=c",
        "team=d",
    ]
    assert limiter.release(a1)
    granted(limiter, request("a2", {"team": "a"}))


# -- wake-ups ----------------------------------------------------------------------------------


def test_release_wakes_the_waiter_on_its_wake_key(harness: Harness) -> None:
    limiter = harness.make()
    a = spec("database=warehouse", limit=1)
    holder = granted(limiter, ask("holder", a))
    refused(limiter, ask("waiter", a))
    cursor = harness.cursor(limiter, "wake:waiter")
    assert harness.wait_wake(limiter, "wake:waiter", cursor, 0.05) == []
    assert limiter.release(holder)
    assert harness.wait_wake(limiter, "wake:waiter", cursor, WAIT_S) == ["database=warehouse"]


def test_a_lapsed_holder_purged_by_another_call_wakes_the_waiter(harness: Harness) -> None:
    limiter = harness.make(lease_ttl_ms=300)
    a = spec("a", limit=1)
    crashed = granted(limiter, ask("crashed", a))
    refused(limiter, ask("waiter", a))
    cursor = harness.cursor(limiter, "wake:waiter")
    harness.let_lapse(limiter, crashed.lease_id, crashed.ttl_ms)
    # Any script touching the slot purges the lapsed lease and sends the wake-up; here the
    # crashed holder's own late refresh does (and is refused).
    assert limiter.refresh(crashed) is False
    assert harness.wait_wake(limiter, "wake:waiter", cursor, WAIT_S) == ["a"]
