"""A blocking read that outlives the client's socket timeout is a quiet wait, not a
connection failure (redis-py gives every socket a 5 s timeout unless told otherwise)."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import redis

from coreexec.limits.redis_limiter import RedisTagLimiter
from coreexec.limits.wake_listener import RedisWakeListener
from coreexec.redis_clients import blocking_read_slice_s
from coreexec.transport.redis_events import RedisEventStream

WAIT_S = 6.5
"""Longer than redis-py's default socket timeout (5 s)."""


def test_the_default_socket_timeout_is_seen() -> None:
    default = redis.Redis.from_url("redis://127.0.0.1:1/0")
    assert blocking_read_slice_s(default) == pytest.approx(4.5)
    assert blocking_read_slice_s(redis.Redis.from_url("redis://x/0", socket_timeout=None)) is None


def test_waits_longer_than_the_default_socket_timeout_are_not_errors(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Clients as coreexec makes them: no socket_timeout given, so redis-py's default.
    limiter = RedisTagLimiter.from_url(redis_url, namespace="blocking")
    stream = RedisEventStream(redis.Redis.from_url(redis_url), "quiet-run")
    listener = RedisWakeListener(limiter, "quiet-run", "blocking")
    woken = threading.Event()
    results: dict[str, object] = {}

    def wait_on_stream() -> None:
        deadline = time.monotonic() + WAIT_S
        entries: list[object] = []
        while not entries and time.monotonic() < deadline:
            entries.extend(stream.read("0-0", block_ms=int((deadline - time.monotonic()) * 1000)))
        results["stream"] = entries

    reader = threading.Thread(target=wait_on_stream)
    with caplog.at_level(logging.WARNING):
        listener.start(woken.set)
        reader.start()
        started = time.monotonic()
        results["wake"] = limiter.wait_for_wake("coreexec:blocking:wake:other", "0-0", WAIT_S)
        reader.join()
        waited_s = time.monotonic() - started
        listener.stop()
    limiter.close()
    assert results == {"wake": None, "stream": []}
    assert waited_s >= WAIT_S
    assert not woken.is_set()
    assert not [r for r in caplog.records if "failed" in r.getMessage()], caplog.text
