"""Choosing the limiter and the rules an executor enforces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from coreexec.limits.base import DEFAULT_LEASE_TTL_MS, TagLimiter
from coreexec.limits.keys import DEFAULT_NAMESPACE
from coreexec.limits.rules import TagConcurrencyLimit, parse_limits


def build_limiter(
    configured: Sequence[Mapping[str, Any] | TagConcurrencyLimit] | None,
    *,
    path: str,
    redis_url: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
) -> tuple[TagLimiter | None, tuple[TagConcurrencyLimit, ...]]:
    """The limiter and rules for one run.

    With ``redis_url`` the limits are global: a :class:`RedisTagLimiter` shared by every
    run of the namespace, enforcing the configured rules merged with the rules stored by
    ``coreexec limits set`` (the smaller limit wins). Without it, an in-memory limiter
    for this run alone, and only when rules are configured.
    """
    rules = parse_limits(configured, path=path)
    if redis_url is not None:
        from coreexec.limits.global_rules import GlobalRules
        from coreexec.limits.redis_limiter import RedisTagLimiter

        stored = GlobalRules.from_url(redis_url, namespace=namespace)
        try:
            rules = stored.effective_limits(rules)
        finally:
            stored.close()
        if not rules:
            return None, ()
        limiter = RedisTagLimiter.from_url(
            redis_url, namespace=namespace, lease_ttl_ms=lease_ttl_ms
        )
        return limiter, rules
    if not rules:
        return None, ()
    from coreexec.limits.memory import InMemoryTagLimiter

    return InMemoryTagLimiter(lease_ttl_ms=lease_ttl_ms), rules
