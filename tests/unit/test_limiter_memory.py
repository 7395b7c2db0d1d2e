"""The in-memory tag limiter on a fake clock, and the pure parts of the limits package.

The behaviour both limiters share is in tests/integration/test_limiter_contract.py;
this file covers what only the in-memory one has (its clock, condition and callback)
and the helpers that need no Redis (key names, global rule targets and merging).
"""

from __future__ import annotations

import threading
import time

import pytest

from coreexec.errors import LimiterError
from coreexec.limits import (
    InMemoryTagLimiter,
    LimiterKeys,
    PerUniqueValue,
    SlotRequest,
    SlotSpec,
    TagConcurrencyLimit,
    TagLimiter,
    merge_limits,
    rule_from_target,
    slots_for,
)
from coreexec.limits.global_rules import rule_identity
from coreexec.limits.keys import check_namespace, lease_id_of_member, waiter_member
from tests.support.overlap import Overlap


class FakeClock:
    def __init__(self) -> None:
        self.now = 5_000_000

    def __call__(self) -> int:
        return self.now


def spec(name: str, limit: int = 1) -> SlotSpec:
    return SlotSpec(name=name, limit=limit, rule=f"{name} limit {limit}")


def ask(name: str, *slots: SlotSpec, priority: int = 0) -> SlotRequest:
    return SlotRequest(
        run_id=f"run-{name}",
        step_key=f"step_{name}",
        lease_id=f"lease-{name}",
        priority=priority,
        slots=slots,
        wake_key=f"wake:{name}",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_it_satisfies_the_protocol(clock: FakeClock) -> None:
    assert isinstance(InMemoryTagLimiter(now_ms=clock), TagLimiter)


def test_a_lease_lapses_after_its_ttl_on_the_given_clock(clock: FakeClock) -> None:
    limiter = InMemoryTagLimiter(lease_ttl_ms=1_000, now_ms=clock)
    lease = limiter.try_acquire(ask("x", spec("a"))).lease
    assert lease is not None
    clock.now += 999
    assert not limiter.try_acquire(ask("y", spec("a"))).granted
    clock.now += 1
    assert limiter.try_acquire(ask("y", spec("a"))).granted
    assert limiter.refresh(lease) is False
    assert limiter.release(lease) is False


def test_refresh_extends_from_now(clock: FakeClock) -> None:
    limiter = InMemoryTagLimiter(lease_ttl_ms=1_000, now_ms=clock)
    lease = limiter.try_acquire(ask("x", spec("a"))).lease
    assert lease is not None
    for _ in range(5):
        clock.now += 800
        assert limiter.refresh(lease)
    assert [h.lease_id for h in limiter.slots()[0].holders] == ["lease-x"]
    clock.now += 1_000
    assert limiter.refresh(lease) is False
    assert limiter.slots() == ()


def test_retry_in_ms_points_at_the_first_lapse_or_the_keep_alive(clock: FakeClock) -> None:
    limiter = InMemoryTagLimiter(lease_ttl_ms=1_000, waiter_ttl_ms=10_000, now_ms=clock)
    assert limiter.try_acquire(ask("x", spec("a"))).granted
    clock.now += 400
    result = limiter.try_acquire(ask("y", spec("a")))
    assert result.retry_in_ms == 600

    long_leases = InMemoryTagLimiter(lease_ttl_ms=60_000, waiter_ttl_ms=10_000, now_ms=clock)
    assert long_leases.try_acquire(ask("x", spec("a"))).granted
    # A waiter must ask again well within its own TTL to keep its place.
    assert long_leases.try_acquire(ask("y", spec("a"))).retry_in_ms == 5_000


def test_a_refused_request_reports_who_holds_the_slot(clock: FakeClock) -> None:
    limiter = InMemoryTagLimiter(now_ms=clock)
    assert limiter.try_acquire(ask("x", spec("a"), spec("b", 2))).granted
    result = limiter.try_acquire(ask("y", spec("a"), spec("b", 2)))
    assert result.lease is None
    (block,) = result.blocked_on
    assert block.slot == spec("a")
    assert [(h.run_id, h.step_key, h.lease_id) for h in block.holders] == [
        ("run-x", "step_x", "lease-x")
    ]
    assert block.waiters_ahead == 0


def test_slots_shows_limits_holders_and_waiters_in_serving_order(clock: FakeClock) -> None:
    limiter = InMemoryTagLimiter(now_ms=clock)
    assert limiter.try_acquire(ask("x", spec("a"))).granted
    assert not limiter.try_acquire(ask("low", spec("a"))).granted
    assert not limiter.try_acquire(ask("high", spec("a"), priority=3)).granted
    (state,) = limiter.slots()
    assert state.name == "a"
    assert state.limit == 1
    assert [h.step_key for h in state.holders] == ["step_x"]
    assert [w.step_key for w in state.waiters] == ["step_high", "step_low"]


def test_limit_zero_never_grants(clock: FakeClock) -> None:
    limiter = InMemoryTagLimiter(now_ms=clock)
    result = limiter.try_acquire(ask("x", spec("paused", 0)))
    assert result.lease is None
    assert result.blocked_on[0].slot.name == "paused"


def test_a_request_without_slots_is_granted_at_once(clock: FakeClock) -> None:
    limiter = InMemoryTagLimiter(now_ms=clock)
    lease = limiter.try_acquire(ask("x")).lease
    assert lease is not None and lease.slots == ()
    assert limiter.slots() == ()


def test_a_lease_id_holding_other_slots_is_rejected(clock: FakeClock) -> None:
    limiter = InMemoryTagLimiter(now_ms=clock)
    assert limiter.try_acquire(ask("x", spec("a"))).granted
    with pytest.raises(LimiterError, match="lease-x"):
        limiter.try_acquire(ask("x", spec("a"), spec("b")))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (SlotRequest("r", "s", "", 0, (spec("a"),)), "lease_id is empty"),
        (SlotRequest("r", "s", "l", 0, (spec("a"), spec("a"))), "asked for twice"),
        (SlotRequest("r", "s", "l", 0, (spec("a", -1),)), "limit -1"),
        (SlotRequest("r", "s", "l", True, (spec("a"),)), "priority must be an integer"),
        (SlotRequest("r", "s", "l", 2**60, (spec("a"),)), "beyond"),
    ],
)
def test_bad_requests_are_rejected_naming_the_problem(
    clock: FakeClock, request_: SlotRequest, message: str
) -> None:
    limiter = InMemoryTagLimiter(now_ms=clock)
    with pytest.raises(LimiterError, match=message):
        limiter.try_acquire(request_)


@pytest.mark.parametrize("ttl", [0, -5, True])
def test_bad_ttls_are_rejected(ttl: int) -> None:
    with pytest.raises(LimiterError, match="lease_ttl_ms"):
        InMemoryTagLimiter(lease_ttl_ms=ttl)
    with pytest.raises(LimiterError, match="waiter_ttl_ms"):
        InMemoryTagLimiter(waiter_ttl_ms=ttl)


def test_release_notifies_the_condition(clock: FakeClock) -> None:
    condition = threading.Condition()
    limiter = InMemoryTagLimiter(now_ms=clock, condition=condition)
    lease = limiter.try_acquire(ask("x", spec("a"))).lease
    assert lease is not None
    waiting = threading.Event()
    outcome: list[bool] = []

    def waiter() -> None:
        request = ask("y", spec("a"))
        with condition:
            # Holding the condition from the refused try to the wait: no wake-up is lost.
            assert not limiter.try_acquire(request).granted
            waiting.set()
            outcome.append(
                condition.wait_for(lambda: limiter.try_acquire(request).granted, timeout=10)
            )

    thread = threading.Thread(target=waiter)
    thread.start()
    assert waiting.wait(10)
    assert limiter.release(lease)
    thread.join(10)
    assert outcome == [True]


def test_on_wake_runs_outside_the_lock_and_may_call_back(clock: FakeClock) -> None:
    woken: list[tuple[str, str]] = []
    limiter: InMemoryTagLimiter

    def on_wake(wake_key: str, slot_name: str) -> None:
        woken.append((wake_key, slot_name))
        limiter.slots()  # would deadlock if called under the limiter's lock

    limiter = InMemoryTagLimiter(now_ms=clock, on_wake=on_wake)
    lease = limiter.try_acquire(ask("x", spec("a", 2), spec("b"))).lease
    assert lease is not None
    assert not limiter.try_acquire(ask("y", spec("b"))).granted
    assert not limiter.try_acquire(ask("z", spec("b"))).granted
    assert limiter.release(lease)
    # Only the waiter the one freed unit of b can serve is woken.
    assert woken == [("wake:y", "b")]


def test_a_wake_up_goes_once_per_wake_key(clock: FakeClock) -> None:
    woken: list[tuple[str, str]] = []
    limiter = InMemoryTagLimiter(now_ms=clock, on_wake=lambda k, s: woken.append((k, s)))
    lease = limiter.try_acquire(ask("x", spec("a", 2))).lease
    other = limiter.try_acquire(ask("x2", spec("a", 2))).lease
    assert lease is not None and other is not None
    for step in ("s1", "s2"):
        request = SlotRequest("run-1", step, f"lease-{step}", 0, (spec("a", 2),), "wake:run-1")
        assert not limiter.try_acquire(request).granted
    assert limiter.release(lease)
    assert limiter.release(other)
    assert woken == [("wake:run-1", "a"), ("wake:run-1", "a")]


def test_a_waiter_that_lapsed_comes_back_at_the_end_of_the_queue(clock: FakeClock) -> None:
    limiter = InMemoryTagLimiter(waiter_ttl_ms=1_000, now_ms=clock)
    holder = limiter.try_acquire(ask("h", spec("a"))).lease
    assert holder is not None
    assert not limiter.try_acquire(ask("first", spec("a"))).granted
    clock.now += 600
    assert not limiter.try_acquire(ask("second", spec("a"))).granted
    clock.now += 600  # first stopped asking for longer than its waiter TTL
    assert not limiter.try_acquire(ask("first", spec("a"))).granted
    assert [w.lease_id for w in limiter.slots()[0].waiters] == ["lease-second", "lease-first"]


def test_a_waiter_that_stops_asking_is_ahead_until_its_ttl_then_gone(clock: FakeClock) -> None:
    limiter = InMemoryTagLimiter(waiter_ttl_ms=300, now_ms=clock)
    a = spec("a")
    holder = limiter.try_acquire(ask("holder", a)).lease
    assert holder is not None
    crashed, patient = ask("crashed", a), ask("patient", a)
    assert not limiter.try_acquire(crashed).granted
    assert not limiter.try_acquire(patient).granted
    assert limiter.release(holder)
    clock.now += 200
    # Within its TTL the crashed waiter is still ahead; asking refreshes only the patient.
    assert not limiter.try_acquire(patient).granted
    clock.now += 150
    lease = limiter.try_acquire(patient).lease
    assert lease is not None and lease.lease_id == "lease-patient"
    assert "lease-crashed" not in {w.lease_id for state in limiter.slots() for w in state.waiters}


def test_many_threads_never_exceed_the_limit_on_the_real_clock() -> None:
    condition = threading.Condition()
    limiter = InMemoryTagLimiter(condition=condition)
    slot = spec("gpu=*", 3)
    lock = threading.Lock()
    finished = 0
    # The first three holders wait for each other while they hold the slot.
    overlap = Overlap(limit=3, timeout_s=10)

    def worker(n: int) -> None:
        nonlocal finished
        for i in range(50):
            request = SlotRequest(f"run-{n}", f"s{i}", f"l-{n}-{i}", i % 4, (slot,))

            def granted(request: SlotRequest = request) -> bool:
                return limiter.try_acquire(request).granted

            with condition:
                assert condition.wait_for(granted, timeout=10)
            with overlap.holding():
                time.sleep(0)  # let other threads run while the slot is held
            lease = limiter.try_acquire(request).lease  # asking again extends the lease
            assert lease is not None and limiter.release(lease)
            with lock:
                finished += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert finished == 400
    assert overlap.peak == 3
    assert limiter.slots() == ()


# -- keys ---------------------------------------------------------------------------------


def test_keys_of_a_namespace_share_one_hash_tag() -> None:
    keys = LimiterKeys("prod")
    assert keys.holders("database=warehouse") == "coreexec:{prod}:slot:database=warehouse:holders"
    assert keys.queue("team=a") == "coreexec:{prod}:slot:team=a:queue"
    assert keys.rules == "coreexec:{prod}:rules"
    all_keys = [*keys.script_keys(("a", "b")), keys.rules]
    assert all(key.startswith("coreexec:{prod}:") for key in all_keys)
    assert keys.script_keys(("a",))[6:] == (keys.holders("a"), keys.queue("a"), keys.waiting("a"))


@pytest.mark.parametrize("namespace", ["", "a{b", "a}b", "x\ny"])
def test_a_namespace_that_breaks_the_hash_tag_is_refused(namespace: str) -> None:
    with pytest.raises(LimiterError, match="namespace"):
        check_namespace(namespace)


def test_waiter_members_sort_by_arrival_and_keep_the_lease_id() -> None:
    members = [waiter_member(n, "id:with:colons") for n in (9, 10, 123)]
    assert members == sorted(members)
    assert lease_id_of_member(members[0]) == "id:with:colons"


# -- global rule targets and merging --------------------------------------------------------


def test_rule_targets_cover_value_any_value_and_per_unique_value() -> None:
    assert rule_from_target("database=warehouse", 2) == TagConcurrencyLimit(
        key="database", value="warehouse", limit=2
    )
    assert rule_from_target("gpu", 1).value is None
    assert rule_from_target("gpu=*", 1).value is None
    per_value = rule_from_target("team", 1, per_unique_value=True)
    assert isinstance(per_value.value, PerUniqueValue)
    assert slots_for([per_value], {"team": "x"})[0].name == "team=x"


@pytest.mark.parametrize(
    ("target", "limit", "per_value", "message"),
    [
        ("=x", 1, False, "names no tag key"),
        ("team=a", 1, True, "takes a key only"),
        ("database=warehouse", -1, False, "limit"),
    ],
)
def test_bad_rule_targets_are_refused(
    target: str, limit: int, per_value: bool, message: str
) -> None:
    with pytest.raises(LimiterError, match=message):
        rule_from_target(target, limit, per_unique_value=per_value)


def test_merging_keeps_the_smaller_limit_of_the_same_rule() -> None:
    configured = [
        TagConcurrencyLimit(key="database", value="warehouse", limit=4),
        TagConcurrencyLimit(key="gpu", limit=1),
    ]
    stored = [
        TagConcurrencyLimit(key="database", value="warehouse", limit=2),
        TagConcurrencyLimit(key="gpu", limit=3),
        TagConcurrencyLimit(key="team", value=PerUniqueValue(), limit=1),
    ]
    merged = merge_limits(configured, stored)
    limits = {rule_identity(r.key, r.value): r.limit for r in merged}
    assert limits == {
        rule_identity("database", "warehouse"): 2,
        rule_identity("gpu", None): 1,
        rule_identity("team", PerUniqueValue()): 1,
    }
    slots = slots_for(merged, {"database": "warehouse", "gpu": "a100", "team": "x"})
    assert [(s.name, s.limit) for s in slots] == [
        ("database=warehouse", 2),
        ("gpu=*", 1),
        ("team=x", 1),
    ]
