"""Naming a Redis by its URL: without its password in messages, and telling whether two
URLs name the same database."""

from __future__ import annotations

from urllib.parse import urlsplit

from coreexec.urls import masked_url


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for messages and logs."""
    return masked_url(url)


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
