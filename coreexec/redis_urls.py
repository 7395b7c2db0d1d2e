"""Naming a Redis in messages: URLs without passwords, and the URL a client talks to."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import redis


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def client_url(client: redis.Redis) -> str:
    """A URL-like name of the Redis a client talks to, for error messages."""
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={db}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


BROKER_URL_ENV = "COREEXEC_BROKER_URL"
REDIS_URL_ENV = "COREEXEC_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def configured_redis_url(environ: Mapping[str, str] | None = None) -> str:
    """The Redis of events, claims and limits as the environment names it, the way the
    celery settings resolve it: ``COREEXEC_REDIS_URL``, else ``COREEXEC_BROKER_URL``
    when it is a Redis URL, else the default local Redis."""
    env = os.environ if environ is None else environ
    explicit = env.get(REDIS_URL_ENV)
    if explicit:
        return explicit
    broker = env.get(BROKER_URL_ENV) or ""
    return broker if broker.startswith(_REDIS_SCHEMES) else DEFAULT_REDIS_URL


def blocking_read_slice_s(client: redis.Redis) -> float | None:
    """The longest blocking read (``XREAD BLOCK``) ``client`` can make without its socket
    timeout firing first, None when its sockets never time out.

    redis-py 8 gives every socket a timeout (5 s) unless the client sets one, and a read
    blocked longer fails as a timeout of the connection although Redis is fine: blocking
    reads wait in slices well inside it (Redis may answer a blocked read up to a server
    tick, 100 ms at the default hz, after its BLOCK time).
    """
    kwargs = client.connection_pool.connection_kwargs
    if "socket_timeout" in kwargs:
        timeout = kwargs["socket_timeout"]
    else:
        timeout = getattr(redis.connection, "DEFAULT_SOCKET_TIMEOUT", None)
    if not timeout:
        return None
    seconds = float(timeout)
    return max(seconds - 0.5, seconds / 3)
