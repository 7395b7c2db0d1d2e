"""Choosing the limiter and the rules an executor enforces.

Every executor builds its limits here, from its config: :func:`build_limiter` is the one
place that decides between a per-run in-memory limiter and the global Redis one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coreexec.limits.base import DEFAULT_LEASE_TTL_MS, TagLimiter
from coreexec.limits.keys import DEFAULT_NAMESPACE
from coreexec.limits.rules import TagConcurrencyLimit, parse_limits

if TYPE_CHECKING:
    from coreexec.redis_clients import Redis


@dataclass(frozen=True)
class RunLimits:
    """The limiter a coordinator asks for slots and the rules it enforces (none: no
    limiter, every step starts as soon as it is ready)."""

    limiter: TagLimiter | None = None
    rules: tuple[TagConcurrencyLimit, ...] = ()

    def close(self) -> None:
        """Release what the limiter holds (a Redis client it made); never the client
        it was given."""
        close = getattr(self.limiter, "close", None)
        if close is not None:
            close()


NO_LIMITS = RunLimits()
"""No limiter and no rules."""


def build_limiter(
    configured: Sequence[Mapping[str, Any] | TagConcurrencyLimit] | None,
    *,
    path: str,
    redis_url: str | None = None,
    client: Redis | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
) -> RunLimits:
    """The limiter and rules an executor config asks for.

    ``configured`` is the config's ``tag_concurrency_limits`` (a bad rule raises
    :class:`~coreexec.errors.ConfigError` naming ``path``). With ``redis_url`` the limits
    are global: a :class:`RedisTagLimiter` shared by every run of the namespace,
    enforcing the configured rules merged with the rules stored by ``coreexec limits
    set`` (the smaller limit wins); it talks through ``client`` when given (kept open by
    :meth:`RunLimits.close`), else through a client of its own. Without ``redis_url``, an
    in-memory limiter for one run, and only when rules are configured.
    """
    rules = parse_limits(configured, path=path)
    if redis_url is not None:
        return _global_limits(rules, redis_url, client, namespace, lease_ttl_ms)
    if not rules:
        return NO_LIMITS
    from coreexec.limits.memory import InMemoryTagLimiter

    return RunLimits(InMemoryTagLimiter(lease_ttl_ms=lease_ttl_ms), rules)


def _global_limits(
    configured: tuple[TagConcurrencyLimit, ...],
    url: str,
    client: Redis | None,
    namespace: str,
    lease_ttl_ms: int,
) -> RunLimits:
    from coreexec.limits.global_rules import GlobalRules
    from coreexec.limits.redis_limiter import RedisTagLimiter

    if client is not None:
        rules = GlobalRules(client, namespace=namespace, url=url).effective_limits(configured)
    else:
        stored = GlobalRules.from_url(url, namespace=namespace)
        try:
            rules = stored.effective_limits(configured)
        finally:
            stored.close()
    if not rules:
        return NO_LIMITS
    if client is not None:
        limiter = RedisTagLimiter(client, namespace=namespace, lease_ttl_ms=lease_ttl_ms, url=url)
    else:
        limiter = RedisTagLimiter.from_url(url, namespace=namespace, lease_ttl_ms=lease_ttl_ms)
    return RunLimits(limiter, rules)
