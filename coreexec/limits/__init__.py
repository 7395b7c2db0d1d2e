"""Tag concurrency limits: rules, the limiter protocol and its implementations.

``InMemoryTagLimiter`` limits one run (local executors without Redis);
``RedisTagLimiter`` limits every run and coordinator sharing a Redis namespace.
"""

from coreexec.limits.base import (
    DEFAULT_LEASE_TTL_MS,
    DEFAULT_WAITER_TTL_MS,
    AcquireResult,
    Lease,
    SlotBlock,
    SlotHolder,
    SlotRequest,
    SlotState,
    TagLimiter,
)
from coreexec.limits.global_rules import GlobalRules, merge_limits, rule_from_target
from coreexec.limits.keys import DEFAULT_NAMESPACE, WAKE_FIELD, LimiterKeys
from coreexec.limits.memory import InMemoryTagLimiter
from coreexec.limits.redis_limiter import RedisTagLimiter
from coreexec.limits.rules import (
    PerUniqueValue,
    SlotSpec,
    TagConcurrencyLimit,
    parse_limits,
    slots_for,
)

__all__ = [
    "DEFAULT_LEASE_TTL_MS",
    "DEFAULT_NAMESPACE",
    "DEFAULT_WAITER_TTL_MS",
    "WAKE_FIELD",
    "AcquireResult",
    "GlobalRules",
    "InMemoryTagLimiter",
    "Lease",
    "LimiterKeys",
    "PerUniqueValue",
    "RedisTagLimiter",
    "SlotBlock",
    "SlotHolder",
    "SlotRequest",
    "SlotSpec",
    "SlotState",
    "TagConcurrencyLimit",
    "TagLimiter",
    "merge_limits",
    "parse_limits",
    "rule_from_target",
    "slots_for",
]
