"""Behaviour only the Redis tag limiter has: scripts, keys, several coordinators sharing
one namespace, wake-up streams, error wrapping and the rules stored in Redis."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from bench.limiter_bench import run_l1
from coreexec.errors import BrokerConnectionError, LimiterError
from coreexec.limits import (
    GlobalRules,
    Lease,
    LimiterKeys,
    PerUniqueValue,
    RedisTagLimiter,
    SlotRequest,
    SlotSpec,
    TagConcurrencyLimit,
    TagLimiter,
    rule_from_target,
    slots_for,
)
from tests.support.ports import free_port
from tests.support.waiting import wait_until

SCRIPTS = ("acquire.lua", "release.lua", "refresh.lua", "withdraw.lua")


def spec(name: str, limit: int = 1) -> SlotSpec:
    return SlotSpec(name=name, limit=limit, rule=f"{name} limit {limit}")


def ask(name: str, *slots: SlotSpec, priority: int = 0, run_id: str | None = None) -> SlotRequest:
    run = run_id or f"run-{name}"
    return SlotRequest(
        run_id=run,
        step_key=f"step_{name}",
        lease_id=f"lease-{name}",
        priority=priority,
        slots=slots,
        wake_key=f"coreexec:test:run:{run}:events",
    )


def granted(limiter: RedisTagLimiter, request: SlotRequest) -> Lease:
    lease = limiter.try_acquire(request).lease
    assert lease is not None, f"{request.lease_id} was refused"
    return lease


@pytest.fixture
def namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as c:
        yield c


MakeLimiter = Callable[..., RedisTagLimiter]


@pytest.fixture
def make(redis_url: str, namespace: str) -> Iterator[MakeLimiter]:
    """Make limiters on the test's namespace (keyword arguments as for ``from_url``)."""
    made: list[RedisTagLimiter] = []

    def new(**kwargs: Any) -> RedisTagLimiter:
        kwargs.setdefault("namespace", namespace)
        limiter = RedisTagLimiter.from_url(redis_url, **kwargs)
        made.append(limiter)
        return limiter

    yield new
    for limiter in made:
        limiter.close()


def test_it_satisfies_the_protocol(make: MakeLimiter) -> None:
    assert isinstance(make(), TagLimiter)


# -- scripts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_documents_keys_argv_and_its_reply(name: str) -> None:
    text = resources.files("coreexec.limits").joinpath("lua", name).read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
    for word in ("KEYS", "ARGV", "Returns"):
        assert word in header, f"{name} header does not document {word}"


@pytest.mark.parametrize("name", (*SCRIPTS, "lib.lua"))
def test_scripts_reach_keys_only_through_keys(name: str) -> None:
    text = resources.files("coreexec.limits").joinpath("lua", name).read_text(encoding="utf-8")
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    # The first argument of every keyed command must come from KEYS (directly, through the
    # slot key helpers, or through a parameter of lib.lua's helpers that callers fill so).
    allowed = re.compile(
        r"^(KEYS\[\d+\]|(holders|queue|waiting)_key\(i\)|zkey|also|also_hash|key)$"
    )
    calls = re.findall(r"redis\.call\('([A-Z]+)'(?:,\s*(\w+(?:\[\d+\]|\(i\))?))?", code)
    assert calls
    for command, first in calls:
        if command in ("TIME",):
            continue
        assert allowed.match(first.strip()), f"{name}: {command} on {first!r}"


def test_a_flushed_script_cache_is_reloaded(make: MakeLimiter, client: redis.Redis) -> None:
    limiter = make()
    lease = limiter.try_acquire(ask("x", spec("a"))).lease
    assert lease is not None
    client.script_flush()
    assert limiter.release(lease)
    assert limiter.try_acquire(ask("y", spec("a"))).granted


# -- keys ---------------------------------------------------------------------------------------


def test_every_key_of_a_namespace_lives_in_one_cluster_slot(
    make: MakeLimiter, client: redis.Redis, redis_url: str, namespace: str
) -> None:
    limiter = make(lease_ttl_ms=60_000)
    a, b = spec("database=warehouse", 2), spec("team=a")
    limiter.try_acquire(ask("x", a, b))
    limiter.try_acquire(ask("y", a))
    limiter.try_acquire(ask("z", b))
    GlobalRules.from_url(redis_url, namespace=namespace).set_limit(rule_from_target("gpu", 1))

    keys = LimiterKeys(namespace)
    expected = {*keys.script_keys((a.name, b.name)), keys.rules}
    found = set(client.scan_iter(match=f"coreexec:{{{namespace}}}:*"))
    assert found <= expected
    assert {keys.holders(a.name), keys.queue(b.name), keys.leases, keys.rules} <= found
    assert len({key_slot(key.encode()) for key in found}) == 1


def test_nothing_is_left_behind_after_release_and_lapse(
    make: MakeLimiter, client: redis.Redis, namespace: str
) -> None:
    limiter = make(lease_ttl_ms=200, waiter_ttl_ms=200)
    a = spec("a")
    lease = limiter.try_acquire(ask("x", a)).lease
    assert lease is not None
    assert not limiter.try_acquire(ask("y", a)).granted
    limiter.withdraw(ask("y", a))
    assert limiter.release(lease)
    crashed = limiter.try_acquire(ask("crashed", a)).lease
    assert crashed is not None
    assert not limiter.try_acquire(ask("gone", a)).granted
    # Both stop; once their TTLs pass, the next call cleans up after them.
    keys = LimiterKeys(namespace)

    def cleaned() -> bool:
        limiter.withdraw(ask("nobody", a))
        left = set(client.scan_iter(match=f"coreexec:{{{namespace}}}:*"))
        return left <= {keys.seq}

    wait_until(cleaned, "the lapsed lease and waiter to be purged", 10.0)


# -- several coordinators sharing one namespace --------------------------------------------------


def test_limits_hold_across_limiters_of_one_namespace(make: MakeLimiter) -> None:
    coordinator_1 = make()
    coordinator_2 = make()
    slot = spec("database=warehouse", 2)
    assert coordinator_1.try_acquire(ask("a", slot, run_id="run-1")).granted
    assert coordinator_2.try_acquire(ask("b", slot, run_id="run-2")).granted
    result = coordinator_1.try_acquire(ask("c", slot, run_id="run-1"))
    assert result.lease is None
    assert sorted(h.run_id for h in result.blocked_on[0].holders) == ["run-1", "run-2"]


def test_namespaces_do_not_share_slots(redis_url: str) -> None:
    first = RedisTagLimiter.from_url(redis_url, namespace="first")
    second = RedisTagLimiter.from_url(redis_url, namespace="second")
    try:
        assert first.try_acquire(ask("a", spec("a"))).granted
        assert second.try_acquire(ask("b", spec("a"))).granted
    finally:
        first.close()
        second.close()


def test_a_high_priority_waiter_of_another_run_is_served_first(
    make: MakeLimiter, client: redis.Redis
) -> None:
    run_low = make()
    run_high = make()
    slot = spec("database=warehouse", 1)
    holder = run_low.try_acquire(ask("holder", slot, run_id="low")).lease
    assert holder is not None
    for n in range(3):
        assert not run_low.try_acquire(ask(f"low{n}", slot, run_id="low")).granted
    high = ask("high", slot, priority=10, run_id="high")
    assert high.wake_key is not None
    cursor = run_high.wake_cursor(high.wake_key)
    assert not run_high.try_acquire(high).granted

    assert run_low.release(holder)
    # The high-priority run's coordinator is woken on its event stream ...
    newest = run_high.wait_for_wake(high.wake_key, cursor, timeout_s=10)
    assert newest is not None
    entries: list[tuple[str, dict[str, str]]] = client.execute_command(  # type: ignore[no-untyped-call]
        "XRANGE", high.wake_key, f"({cursor}", newest
    )
    assert [fields for _, fields in entries] == [{"wake": "database=warehouse"}]
    # ... and the low-priority run, although it waited first, is not.
    low_stream = "coreexec:test:run:low:events"
    assert client.xlen(low_stream) == 0
    assert not run_low.try_acquire(ask("low0", slot, run_id="low")).granted
    assert run_high.try_acquire(high).granted


def test_slots_lists_limits_holders_and_waiters_by_run_and_step(
    make: MakeLimiter,
) -> None:
    limiter = make()
    slot = spec("database=warehouse", 1)
    assert limiter.try_acquire(ask("extract", slot, run_id="r1")).granted
    assert not limiter.try_acquire(ask("load", slot, run_id="r2")).granted
    assert not limiter.try_acquire(ask("urgent", slot, run_id="r3", priority=1)).granted
    (state,) = limiter.slots()
    assert (state.name, state.limit) == ("database=warehouse", 1)
    assert [(h.run_id, h.step_key) for h in state.holders] == [("r1", "step_extract")]
    assert [(w.run_id, w.step_key) for w in state.waiters] == [
        ("r3", "step_urgent"),
        ("r2", "step_load"),
    ]


def test_a_lowered_limit_refuses_until_holders_drop_below_it(
    make: MakeLimiter,
) -> None:
    limiter = make()
    leases = [granted(limiter, ask(f"h{n}", spec("a", 3))) for n in range(3)]
    assert not limiter.try_acquire(ask("new", spec("a", 2))).granted
    assert limiter.release(leases[0])
    assert not limiter.try_acquire(ask("new", spec("a", 2))).granted
    assert limiter.release(leases[1])
    assert limiter.try_acquire(ask("new", spec("a", 2))).granted


def test_a_lease_id_holding_other_slots_is_rejected(make: MakeLimiter) -> None:
    limiter = make()
    assert limiter.try_acquire(ask("x", spec("a"))).granted
    with pytest.raises(LimiterError, match="lease-x"):
        limiter.try_acquire(ask("x", spec("a"), spec("b")))


def test_a_client_without_decoded_responses_works(redis_url: str, namespace: str) -> None:
    with redis.Redis.from_url(redis_url) as raw:
        limiter = RedisTagLimiter(raw, namespace=namespace)
        lease = limiter.try_acquire(ask("x", spec("a"))).lease
        result = limiter.try_acquire(ask("y", spec("a")))
        assert result.blocked_on[0].holders[0].run_id == "run-x"
        assert limiter.slots()[0].waiters[0].lease_id == "lease-y"
        assert lease is not None and limiter.release(lease)
        assert limiter.wake_cursor("coreexec:test:run:run-y:events") != "0-0"


# -- wake-up streams -------------------------------------------------------------------------------


def test_wait_for_wake_times_out_with_none_and_cursor_starts_at_zero(
    make: MakeLimiter,
) -> None:
    limiter = make()
    assert limiter.wake_cursor("coreexec:test:nothing") == "0-0"
    assert limiter.wait_for_wake("coreexec:test:nothing", "0-0", timeout_s=0.05) is None
    with pytest.raises(LimiterError, match="positive timeout_s"):
        limiter.wait_for_wake("coreexec:test:nothing", "0-0", timeout_s=0)


def test_a_wait_longer_than_the_socket_timeout_is_not_a_connection_error(
    redis_url: str, namespace: str, client: redis.Redis
) -> None:
    with redis.Redis.from_url(redis_url, socket_timeout=0.5) as short:
        limiter = RedisTagLimiter(short, namespace=namespace)
        started = time.monotonic()
        assert limiter.wait_for_wake("coreexec:test:quiet", "0-0", timeout_s=0.8) is None
        assert time.monotonic() - started >= 0.8
        # A wake-up arriving after the first slice is still seen.
        cursor = limiter.wake_cursor("coreexec:test:late")
        timer = threading.Timer(0.5, lambda: client.xadd("coreexec:test:late", {"wake": "a"}))
        timer.start()
        try:
            assert limiter.wait_for_wake("coreexec:test:late", cursor, timeout_s=5) is not None
        finally:
            timer.join()


def test_a_wake_key_that_is_not_a_stream_does_not_fail_the_release(
    make: MakeLimiter, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = make()
    holder = granted(limiter, ask("holder", spec("a")))
    request = ask("y", spec("a"))
    assert request.wake_key is not None
    client.set(request.wake_key, "not a stream")
    assert not limiter.try_acquire(request).granted
    with caplog.at_level(logging.WARNING, logger="coreexec.limits.redis_limiter"):
        assert limiter.release(holder)
    assert request.wake_key in caplog.text
    assert limiter.try_acquire(request).granted


# -- errors ----------------------------------------------------------------------------------------


def test_an_unreachable_redis_names_the_url_and_the_fix() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    limiter = RedisTagLimiter.from_url(url)
    try:
        with pytest.raises(BrokerConnectionError) as caught:
            limiter.try_acquire(ask("x", spec("a")))
    finally:
        limiter.close()
    assert caught.value.url == url
    message = str(caught.value)
    assert url in message and "redis-server" in message and "COREEXEC_REDIS_URL" in message


def test_a_bad_url_is_a_limiter_error() -> None:
    with pytest.raises(LimiterError, match="redis://host:port/db"):
        RedisTagLimiter.from_url("http://nowhere")


def test_the_password_in_a_url_is_not_repeated() -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    limiter = RedisTagLimiter.from_url(url)
    try:
        with pytest.raises(BrokerConnectionError) as caught:
            limiter.slots()
    finally:
        limiter.close()
    assert "s3cret" not in str(caught.value)
    assert "***" in caught.value.url


# -- rules stored in Redis -------------------------------------------------------------------------


def test_stored_rules_can_be_set_listed_replaced_and_deleted(
    redis_url: str, namespace: str
) -> None:
    rules = GlobalRules.from_url(redis_url, namespace=namespace)
    try:
        rules.set_limit(rule_from_target("database=warehouse", 2))
        rules.set_limit(rule_from_target("team", 1, per_unique_value=True))
        rules.set_limit(rule_from_target("database=warehouse", 3))  # replaces
        listed = rules.list_limits()
        assert TagConcurrencyLimit(key="database", value="warehouse", limit=3) in listed
        assert TagConcurrencyLimit(key="team", value=PerUniqueValue(), limit=1) in listed
        assert len(listed) == 2
        assert rules.delete_limit("database", "warehouse") is True
        assert rules.delete_limit("database", "warehouse") is False
        assert rules.delete_limit("team", PerUniqueValue()) is True
        assert rules.list_limits() == ()
    finally:
        rules.close()


def test_stored_and_configured_rules_merge_with_the_smaller_limit(
    redis_url: str, namespace: str
) -> None:
    rules = GlobalRules.from_url(redis_url, namespace=namespace)
    other = GlobalRules.from_url(redis_url, namespace=f"{namespace}-other")
    try:
        rules.set_limit(rule_from_target("database=warehouse", 2))
        other.set_limit(rule_from_target("database=warehouse", 1))
        configured = [TagConcurrencyLimit(key="database", value="warehouse", limit=5)]
        effective = rules.effective_limits(configured)
        assert slots_for(effective, {"database": "warehouse"})[0].limit == 2
        tighter = [TagConcurrencyLimit(key="database", value="warehouse", limit=1)]
        assert slots_for(rules.effective_limits(tighter), {"database": "warehouse"})[0].limit == 1
    finally:
        rules.close()
        other.close()


def test_a_corrupt_stored_rule_is_reported_with_its_key(
    redis_url: str, namespace: str, client: redis.Redis
) -> None:
    client.hset(LimiterKeys(namespace).rules, '["gpu","any"]', '{"key": "gpu", "limit": -1}')
    rules = GlobalRules.from_url(redis_url, namespace=namespace)
    try:
        with pytest.raises(LimiterError, match="gpu"):
            rules.list_limits()
    finally:
        rules.close()


# -- the L1 bench keeps working ---------------------------------------------------------------


def test_l1_bench_runs_against_a_given_redis(redis_url: str) -> None:
    figures = run_l1(redis_url, pairs=50, repeats=1)
    assert figures["pairs"] == 50
    assert figures["pairs_per_s"] > 0
    assert 0 < figures["p50_us"] <= figures["p99_us"]
