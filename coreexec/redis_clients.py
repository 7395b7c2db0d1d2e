"""How coreexec talks to Redis: the one place that makes clients, turns redis-py's errors
into coreexec's, and reads replies as text.

The policy, the same for every client coreexec makes (the event transport, attempt
claims, the tag limiter and its stored rules, ``coreexec doctor``):

* Replies are bytes (``decode_responses=False``). Readers turn what they need into text
  with :func:`text`, which also takes ``str``, so a client made elsewhere with
  ``decode_responses=True`` works too.
* Every socket times out: reads after :data:`SOCKET_TIMEOUT_S`, connecting after
  :data:`CONNECT_TIMEOUT_S`, so a Redis that stops answering shows up as an error, never as
  a thread hung for good. A blocking read (``XREAD BLOCK``) therefore waits in slices
  shorter than the socket timeout (:func:`blocking_read_slice_s`) and its caller loops to
  its own deadline: a wait longer than the timeout would fail as a dead connection
  although Redis is fine.
* A connection idle for :data:`HEALTH_CHECK_INTERVAL_S` is PINGed before it is used again,
  so one dropped while idle (a Redis restart, a proxy's idle timeout) is replaced before a
  command is lost on it.
* redis-py itself never retries (``Retry(NoBackoff(), 0)``): the callers decide how long
  an outage may last (:mod:`coreexec.transport.outage` with the run's
  ``redis_outage_tolerance_s``; the limiter's callers ask again on their next tick).
  Retries inside the client would stack on those and stretch every outage by their
  backoff before anyone hears of it.

Modules that only need redis-py's names for typing or for ``except`` take :data:`Redis`
and :data:`RedisError` from here; an import-linter contract keeps ``import redis`` in
coreexec to this module and the tag limiter (its scripts and pipelines). The Celery
broker's clients are kombu's, made from Celery's broker settings; ``celery_app`` catches
redis-py's errors from them where it publishes.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from coreexec.errors import BrokerConnectionError, CoreExecError, TransportError
from coreexec.redis_urls import safe_url

Redis = redis.Redis
"""The client type (redis-py's), for annotations."""

RedisError = redis.RedisError
"""The root of redis-py's errors, for ``except`` clauses before :func:`wrap_redis_error`."""

SOCKET_TIMEOUT_S = 5.0
"""Longest wait for a reply on an open connection (redis-py 8's own default, made explicit
so :func:`blocking_read_slice_s` and readers agree on it)."""

CONNECT_TIMEOUT_S = 5.0
"""Longest wait for a connection to open."""

HEALTH_CHECK_INTERVAL_S = 30
"""A connection idle this long is PINGed before its next command."""

_BLOCKING_READ_MARGIN_S = 0.5
"""How much sooner than the socket timeout a blocking read gives up its slice: Redis may
answer a blocked read up to a server tick (100 ms at the default ``hz``) after its BLOCK
time, and the reply still has to travel."""


def redis_client(
    url: str, *, check: bool = True, timeout_s: float = SOCKET_TIMEOUT_S
) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``) made by the
    policy above; ``timeout_s`` replaces both socket timeouts (``coreexec doctor`` gives up
    sooner).

    With ``check`` it PINGs once, so a wrong URL fails here, as a
    :class:`~coreexec.errors.BrokerConnectionError` naming the URL, rather than at the
    first command. A URL redis-py cannot parse is a ``BrokerConnectionError`` too.
    """
    connect_timeout_s = min(timeout_s, CONNECT_TIMEOUT_S)
    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:
        raise BrokerConnectionError(
            f"{safe_url(url)!r} is not a Redis URL ({exc}); use redis://host:port/db",
            url=safe_url(url),
        ) from exc
    if check:
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            raise wrap_redis_error(exc, url=url, what="connect") from exc
    return client


def wrap_redis_error(
    exc: redis.RedisError,
    *,
    url: str,
    what: str,
    refused: type[CoreExecError] = TransportError,
) -> CoreExecError:
    """The coreexec error for a redis-py error met while trying to ``what`` (a verb
    phrase: "read run settings").

    Redis out of reach (a connection error or a timeout) is a
    :class:`~coreexec.errors.BrokerConnectionError`, which callers riding out an outage
    retry; a command Redis answered with an error is ``refused`` (the transport's
    :class:`~coreexec.errors.TransportError`, the limiter's ``LimiterError``). The URL is
    shown without its password.
    """
    where = safe_url(url)
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return BrokerConnectionError(
            f"cannot reach Redis at {where} to {what} ({exc}); start redis-server "
            "there, or set COREEXEC_REDIS_URL to the URL of a running Redis",
            url=where,
        )
    return refused(f"Redis at {where} refused to {what}: {exc}")


def text(value: Any) -> str:
    """A reply as text: bytes decoded as UTF-8, anything else through ``str``."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def client_url(client: redis.Redis) -> str:
    """A URL-like name of the Redis a client talks to, for error messages."""
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={db}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def blocking_read_slice_s(client: redis.Redis) -> float | None:
    """The longest blocking read (``XREAD BLOCK``) ``client`` can make without its socket
    timeout firing first, None when its sockets never time out.

    Clients made here time out after :data:`SOCKET_TIMEOUT_S`; for a client made elsewhere
    without a timeout of its own, redis-py 8 gives every socket one (5 s) all the same.
    """
    kwargs = client.connection_pool.connection_kwargs
    if "socket_timeout" in kwargs:
        timeout = kwargs["socket_timeout"]
    else:
        timeout = getattr(redis.connection, "DEFAULT_SOCKET_TIMEOUT", None)
    if not timeout:
        return None
    seconds = float(timeout)
    return max(seconds - _BLOCKING_READ_MARGIN_S, seconds / 3)
