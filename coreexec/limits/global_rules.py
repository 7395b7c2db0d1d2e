"""Tag concurrency rules stored in Redis, for every run of a namespace.

``coreexec limits set database=warehouse 2`` stores a rule here; executors merge the
stored rules with the ``tag_concurrency_limits`` of their own config
(:func:`merge_limits`): when both name the same slot, the smaller limit wins.

Targets on the command line: ``key=value`` limits that value, ``key`` or ``key=*`` limits
every value of the key together, and ``key`` with ``per_unique_value=True`` gives each
value of the key its own limit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import ValidationError

from coreexec.errors import BrokerConnectionError, CoreExecError, LimiterError
from coreexec.limits.keys import DEFAULT_NAMESPACE, LimiterKeys
from coreexec.limits.redis_limiter import redis_command
from coreexec.limits.rules import PerUniqueValue, TagConcurrencyLimit
from coreexec.redis_clients import (
    Redis,
    RedisError,
    client_url,
    redis_client,
    text,
    wrap_redis_error,
)
from coreexec.redis_urls import safe_url

RuleValue = str | PerUniqueValue | None


def rule_identity(key: str, value: RuleValue) -> str:
    """What makes two rules the same rule (the limit aside): ``["database","value","x"]``."""
    if value is None or (isinstance(value, PerUniqueValue) and not value.applyLimitPerUniqueValue):
        return json.dumps([key, "any"])
    if isinstance(value, PerUniqueValue):
        return json.dumps([key, "each"])
    return json.dumps([key, "value", value])


def rule_from_target(
    target: str, limit: int, *, per_unique_value: bool = False
) -> TagConcurrencyLimit:
    """The rule for ``coreexec limits set TARGET LIMIT`` (see the module docstring)."""
    key, sep, value = target.partition("=")
    key = key.strip()
    value = value.strip()
    if not key:
        raise LimiterError(
            f"limit target {target!r} names no tag key; write key=value (database=warehouse), "
            "key (every value together) or key with per-unique-value"
        )
    rule_value: RuleValue
    if per_unique_value:
        if sep and value not in ("", "*"):
            raise LimiterError(
                f"limit target {target!r}: a per-unique-value limit takes a key only "
                f"(write {key!r}), not a value"
            )
        rule_value = PerUniqueValue()
    elif not sep or value in ("", "*"):
        rule_value = None
    else:
        rule_value = value
    try:
        return TagConcurrencyLimit(key=key, value=rule_value, limit=limit)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise LimiterError(f"limit {target} {limit}: {field}: {first['msg']}") from exc


def merge_limits(
    configured: Sequence[TagConcurrencyLimit], stored: Sequence[TagConcurrencyLimit]
) -> tuple[TagConcurrencyLimit, ...]:
    """Configured rules and stored rules as one list: one rule per identity, the smaller
    limit winning. (Rules of different identity that name the same slot are settled the
    same way by ``rules.slots_for``.)"""
    merged: dict[str, TagConcurrencyLimit] = {}
    for rule in (*configured, *stored):
        identity = rule_identity(rule.key, rule.value)
        known = merged.get(identity)
        if known is None or rule.limit < known.limit:
            merged[identity] = rule
    return tuple(merged.values())


class GlobalRules:
    """The rules stored for one limiter namespace (a Redis hash, one field per rule)."""

    def __init__(
        self, client: Redis, *, namespace: str = DEFAULT_NAMESPACE, url: str | None = None
    ) -> None:
        self.client = client
        self.keys = LimiterKeys(namespace)
        self.url = safe_url(url) if url else client_url(client)

    @classmethod
    def from_url(cls, url: str, *, namespace: str = DEFAULT_NAMESPACE) -> GlobalRules:
        """Stored rules of ``namespace`` on the Redis at ``url``."""
        try:
            client = redis_client(url, check=False)
        except BrokerConnectionError as exc:
            raise LimiterError(f"bad Redis URL for limits: {exc}") from exc
        return cls(client, namespace=namespace, url=url)

    def _fail(self, exc: RedisError, what: str) -> CoreExecError:
        return wrap_redis_error(exc, url=self.url, what=what, refused=LimiterError)

    def set_limit(self, rule: TagConcurrencyLimit) -> None:
        """Store ``rule``, replacing a stored rule of the same key and value."""
        identity = rule_identity(rule.key, rule.value)
        try:
            redis_command(self.client, "HSET", self.keys.rules, identity, rule.model_dump_json())
        except RedisError as exc:
            raise self._fail(exc, f"store limit {rule.describe()}") from exc

    def list_limits(self) -> tuple[TagConcurrencyLimit, ...]:
        """Every stored rule, ordered by key then value."""
        try:
            raw = redis_command(self.client, "HGETALL", self.keys.rules)
        except RedisError as exc:
            raise self._fail(exc, "list stored limits") from exc
        rules = []
        for identity, body in sorted(dict(raw).items()):
            try:
                rules.append(TagConcurrencyLimit.model_validate_json(body))
            except ValidationError as exc:
                raise LimiterError(
                    f"stored limit {text(identity)} in {self.keys.rules} at {self.url} is not a "
                    f"valid rule ({exc.errors()[0]['msg']}); delete it and set it again"
                ) from exc
        return tuple(rules)

    def delete_limit(self, key: str, value: RuleValue = None) -> bool:
        """Remove the stored rule for ``key`` (and ``value``); False when none was stored."""
        identity = rule_identity(key, value)
        try:
            removed = redis_command(self.client, "HDEL", self.keys.rules, identity)
        except RedisError as exc:
            raise self._fail(exc, f"delete limit {key}") from exc
        return int(removed) == 1

    def effective_limits(
        self, configured: Sequence[TagConcurrencyLimit]
    ) -> tuple[TagConcurrencyLimit, ...]:
        """``configured`` merged with the stored rules (the smaller limit wins)."""
        return merge_limits(configured, self.list_limits())

    def close(self) -> None:
        """Close the Redis client."""
        self.client.close()
