"""Naming a Redis in messages: URLs without passwords, and the URL a client talks to."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis

from coreexec.urls import masked_url


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for messages and logs."""
    return masked_url(url)


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


def _where(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "unix":
        return scheme, parts.path, 0, parts.query
    try:
        port = parts.port or 6379
    except ValueError:
        port = -1
    db = parts.path.strip("/") or "0"
    return scheme, (parts.hostname or "localhost").lower(), port, db


def same_redis(first: str, second: str) -> bool:
    """True when both URLs name the same Redis database (host, port and db number)."""
    return _where(first) == _where(second)
