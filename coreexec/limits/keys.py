"""Every Redis key the tag limiter uses, in one place.

All keys of one namespace carry the cluster hash tag ``{<namespace>}``, so they live in
one cluster slot and a Lua script may touch any of them::

    coreexec:{ns}:seq                       STRING  arrival counter for waiters
    coreexec:{ns}:slots                     HASH    slot name -> limit last asked with
    coreexec:{ns}:leases                    HASH    lease id -> JSON [run_id, step_key]
    coreexec:{ns}:lease_deadlines           ZSET    lease id, score = expiry (ms)
    coreexec:{ns}:waiters                   HASH    lease id -> JSON waiter record
    coreexec:{ns}:waiter_deadlines          ZSET    lease id, score = expiry (ms)
    coreexec:{ns}:rules                     HASH    rule identity -> JSON rule
    coreexec:{ns}:slot:<name>:holders       ZSET    lease id, score = expiry (ms)
    coreexec:{ns}:slot:<name>:queue         ZSET    waiter member, score = -priority
    coreexec:{ns}:slot:<name>:waiting       ZSET    waiter member, score = expiry (ms)

A waiter member is ``<16-digit arrival number>:<lease id>``: members with the same
score sort by member, so a queue is ordered by priority (higher first), then arrival.

Wake-up streams (``SlotRequest.wake_key``) belong to their owners, are written outside
the scripts, and never trimmed by the limiter (the owner bounds and expires them; a run's
event stream, in :mod:`coreexec.transport.keys`, holds events its coordinator may not
have read yet). The one named here belongs to a run of the multiprocess executor, whose
``RedisWakeListener`` reads and deletes it::

    coreexec:<ns>:wake:<run_id>             STREAM  slot wake-ups for that run
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from coreexec.errors import LimiterError

PREFIX = "coreexec"
"""First component of every coreexec Redis key."""

DEFAULT_NAMESPACE = "default"
"""Namespace shared by every run and coordinator unless configured otherwise."""

WAKE_FIELD = "wake"
"""Field of the stream entry a wake-up adds; its value is the slot that freed. The same
field as :data:`coreexec.transport.keys.WAKE_FIELD`: a run's event stream reads these."""


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` or raise LimiterError when it cannot be used in a hash tag."""
    if not namespace or any(ch in namespace for ch in "{}\r\n"):
        raise LimiterError(
            f"limiter namespace {namespace!r} is invalid: use a non-empty name without "
            "braces or newlines, e.g. 'default' or 'prod'"
        )
    return namespace


@dataclass(frozen=True)
class LimiterKeys:
    """Key names for one limiter namespace."""

    namespace: str = DEFAULT_NAMESPACE
    base: str = field(init=False)

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        object.__setattr__(self, "base", f"{PREFIX}:{{{self.namespace}}}")

    @property
    def seq(self) -> str:
        return f"{self.base}:seq"

    @property
    def slot_registry(self) -> str:
        return f"{self.base}:slots"

    @property
    def leases(self) -> str:
        return f"{self.base}:leases"

    @property
    def lease_deadlines(self) -> str:
        return f"{self.base}:lease_deadlines"

    @property
    def waiters(self) -> str:
        return f"{self.base}:waiters"

    @property
    def waiter_deadlines(self) -> str:
        return f"{self.base}:waiter_deadlines"

    @property
    def rules(self) -> str:
        return f"{self.base}:rules"

    def holders(self, slot_name: str) -> str:
        return f"{self.base}:slot:{slot_name}:holders"

    def queue(self, slot_name: str) -> str:
        return f"{self.base}:slot:{slot_name}:queue"

    def waiting(self, slot_name: str) -> str:
        return f"{self.base}:slot:{slot_name}:waiting"

    def wake_stream(self, run_id: str) -> str:
        """The wake-up stream of a run that has no event stream on this Redis (the
        multiprocess executor's runs)."""
        return f"{PREFIX}:{self.namespace}:wake:{run_id}"

    def namespace_keys(self) -> tuple[str, ...]:
        """The namespace-wide keys in the order the scripts expect them as KEYS[1..6]."""
        return (
            self.seq,
            self.slot_registry,
            self.leases,
            self.lease_deadlines,
            self.waiters,
            self.waiter_deadlines,
        )

    def script_keys(self, slot_names: tuple[str, ...]) -> tuple[str, ...]:
        """KEYS for a limiter script touching ``slot_names`` (cached: called per acquire)."""
        return _script_keys(self, slot_names)


@lru_cache(maxsize=4096)
def _script_keys(keys: LimiterKeys, slot_names: tuple[str, ...]) -> tuple[str, ...]:
    out = list(keys.namespace_keys())
    for name in slot_names:
        out.extend((keys.holders(name), keys.queue(name), keys.waiting(name)))
    return tuple(out)


def waiter_member(seq: int, lease_id: str) -> str:
    """The queue member of a waiter: arrival number first, so ties sort first come first."""
    return f"{seq:016d}:{lease_id}"


def lease_id_of_member(member: str) -> str:
    """The lease id inside a waiter member."""
    return member.split(":", 1)[1]
