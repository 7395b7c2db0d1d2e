"""The Redis client policy and the key modules, without a Redis (no client here connects)."""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot

from coreexec.errors import BrokerConnectionError, LimiterError, TransportError
from coreexec.limits import keys as limiter_keys
from coreexec.redis_clients import (
    CONNECT_TIMEOUT_S,
    HEALTH_CHECK_INTERVAL_S,
    SOCKET_TIMEOUT_S,
    blocking_read_slice_s,
    redis_client,
    text,
    wrap_redis_error,
)
from coreexec.transport import keys as transport_keys

URL = "redis://user:s3cret@127.0.0.1:1/3"


def _connection_kwargs(client: redis.Redis) -> dict[str, object]:
    return dict(client.connection_pool.connection_kwargs)


def test_clients_are_made_by_the_policy() -> None:
    client = redis_client(URL, check=False)
    kwargs = _connection_kwargs(client)
    assert kwargs["socket_timeout"] == SOCKET_TIMEOUT_S
    assert kwargs["socket_connect_timeout"] == CONNECT_TIMEOUT_S
    assert kwargs["health_check_interval"] == HEALTH_CHECK_INTERVAL_S
    assert kwargs.get("decode_responses", False) is False
    connection = client.connection_pool.make_connection()
    assert connection.retry.get_retries() == 0
    assert blocking_read_slice_s(client) == pytest.approx(SOCKET_TIMEOUT_S - 0.5)
    client.close()


def test_a_shorter_timeout_shortens_both_and_the_read_slice() -> None:
    client = redis_client(URL, check=False, timeout_s=1.5)
    kwargs = _connection_kwargs(client)
    assert kwargs["socket_timeout"] == 1.5
    assert kwargs["socket_connect_timeout"] == 1.5
    slice_s = blocking_read_slice_s(client)
    assert slice_s is not None and slice_s < 1.5
    client.close()


def test_a_url_that_is_not_redis_names_itself_without_its_password() -> None:
    with pytest.raises(BrokerConnectionError, match="redis://host:port/db") as caught:
        redis_client("http://user:s3cret@nowhere/0", check=False)
    assert "s3cret" not in str(caught.value) and "s3cret" not in caught.value.url


@pytest.mark.parametrize("error", [redis.ConnectionError("refused"), redis.TimeoutError("slow")])
def test_unreachable_redis_is_a_broker_connection_error(error: redis.RedisError) -> None:
    wrapped = wrap_redis_error(error, url=URL, what="read run settings")
    assert isinstance(wrapped, BrokerConnectionError)
    assert wrapped.url == "redis://user:***@127.0.0.1:1/3"
    message = str(wrapped)
    assert "to read run settings" in message and "COREEXEC_REDIS_URL" in message
    assert "s3cret" not in message


def test_a_refused_command_is_the_callers_error() -> None:
    error = redis.ResponseError("WRONGTYPE Operation against a key")
    transport = wrap_redis_error(error, url=URL, what="read stream s")
    limiter = wrap_redis_error(error, url=URL, what="list slots", refused=LimiterError)
    assert type(transport) is TransportError and type(limiter) is LimiterError
    assert str(limiter) == (
        "Redis at redis://user:***@127.0.0.1:1/3 refused to list slots: "
        "WRONGTYPE Operation against a key"
    )


def test_text_reads_bytes_and_str_alike() -> None:
    assert text(b"1700000000000-0") == "1700000000000-0"
    assert text("caf\u00e9".encode()) == "caf\u00e9"
    assert text("already") == "already"
    assert text(7) == "7"


def test_the_key_modules_share_the_prefix_and_the_wake_field() -> None:
    # The limiter writes wake-ups into a run's event stream, whose reader knows the field
    # from the transport's keys.
    assert limiter_keys.PREFIX == transport_keys.PREFIX
    assert limiter_keys.WAKE_FIELD == transport_keys.WAKE_FIELD


def test_the_keys_of_one_run_share_one_cluster_slot() -> None:
    run = "run-1"
    run_keys = [
        transport_keys.run_events(run),
        transport_keys.run_settings(run),
        transport_keys.run_issued(run),
        transport_keys.run_coordinator(run),
        transport_keys.run_coordinator_seen(run),
        transport_keys.attempt_claim(run, "a-1"),
        transport_keys.attempt_end(run, "a-1"),
        transport_keys.attempt_end_published(run, "a-1"),
    ]
    assert len(set(run_keys)) == len(run_keys)
    assert all(key.startswith(f"{transport_keys.PREFIX}:") for key in run_keys)
    assert {key_slot(key.encode()) for key in run_keys} == {key_slot(b"{run-1}")}
    assert key_slot(transport_keys.run_events("run-2").encode()) != key_slot(b"{run-1}")
