"""The Redis tag limiter: one set of limits for every run and coordinator of a namespace.

Each operation is one Lua script (``lua/*.lua``, run with EVALSHA), so all slots of a
request are taken at once or not at all, and fencing holds without client clocks: the
scripts read the time from Redis. Scripts return the wake keys of the waiters that freed
capacity may let on; this class then adds a ``wake`` entry to each of those streams, so a
coordinator blocked on XREAD of its run's event stream wakes up at once.

Public methods check their arguments; ``_do_*`` methods do the Redis work.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script

from coreexec.errors import BrokerConnectionError, CoreExecError, LimiterError
from coreexec.limits.base import (
    DEFAULT_LEASE_TTL_MS,
    DEFAULT_WAITER_TTL_MS,
    AcquireResult,
    Lease,
    SlotBlock,
    SlotHolder,
    SlotRequest,
    SlotState,
    check_request,
    check_ttl_ms,
)
from coreexec.limits.keys import (
    DEFAULT_NAMESPACE,
    WAKE_FIELD,
    LimiterKeys,
    lease_id_of_member,
)
from coreexec.limits.rules import SlotSpec
from coreexec.redis_clients import (
    blocking_read_slice_s,
    client_url,
    redis_client,
    text,
    wrap_redis_error,
)
from coreexec.redis_urls import safe_url

log = logging.getLogger(__name__)

WakeList = list[tuple[str, str]]

SNAPSHOT_TRIES = 5
"""Reads of ``slots()`` before it settles for the slots it knows (others keep changing)."""


@cache
def load_script(name: str) -> str:
    """The text of ``lua/<name>`` with the shared prelude ``lua/lib.lua`` in front."""
    folder = resources.files("coreexec.limits").joinpath("lua")
    prelude = folder.joinpath("lib.lua").read_text(encoding="utf-8")
    return prelude + "\n" + folder.joinpath(name).read_text(encoding="utf-8")


def redis_command(client: redis.Redis | Pipeline, *args: str | int | float) -> Any:
    """Send one raw command (redis-py leaves ``execute_command`` untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _pairs(flat: Sequence[Any]) -> WakeList:
    return [(text(flat[i]), text(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


def _newest_id(reply: Any) -> str | None:
    # XREAD replies are a list of [stream, entries] (RESP2) or a dict (RESP3).
    streams = reply.values() if isinstance(reply, dict) else [item[1] for item in reply]
    newest: str | None = None
    for entries in streams:
        for entry in entries:
            newest = text(entry[0])
    return newest


def _slot_args(slots: Iterable[SlotSpec]) -> list[str | int]:
    args: list[str | int] = []
    for slot in slots:
        args.append(slot.name)
        args.append(slot.limit)
    return args


class RedisTagLimiter:
    """Tag limiter shared by every run and coordinator using one Redis and namespace.

    ``client`` is a ``redis.Redis`` (either ``decode_responses`` setting works);
    ``url`` names that Redis in errors (derived from the client when omitted).
    ``lease_ttl_ms``: a lease not refreshed for this long lapses and its slots come
    back. ``waiter_ttl_ms``: a refused request keeps its place in the queues this long
    after its last try.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
        waiter_ttl_ms: int = DEFAULT_WAITER_TTL_MS,
        url: str | None = None,
    ) -> None:
        self.lease_ttl_ms = check_ttl_ms("lease_ttl_ms", lease_ttl_ms)
        self.waiter_ttl_ms = check_ttl_ms("waiter_ttl_ms", waiter_ttl_ms)
        self.keys = LimiterKeys(namespace)
        self.client = client
        self.url = safe_url(url) if url else client_url(client)
        self._owns_client = False
        self._acquire = client.register_script(load_script("acquire.lua"))
        self._release = client.register_script(load_script("release.lua"))
        self._refresh = client.register_script(load_script("refresh.lua"))
        self._withdraw = client.register_script(load_script("withdraw.lua"))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
        waiter_ttl_ms: int = DEFAULT_WAITER_TTL_MS,
    ) -> RedisTagLimiter:
        """A limiter with its own client for ``url`` (``redis://host:port/db``)."""
        try:
            client = redis_client(url, check=False)
        except BrokerConnectionError as exc:
            raise LimiterError(f"bad Redis URL for the tag limiter: {exc}") from exc
        limiter = cls(
            client,
            namespace=namespace,
            lease_ttl_ms=lease_ttl_ms,
            waiter_ttl_ms=waiter_ttl_ms,
            url=url,
        )
        limiter._owns_client = True
        return limiter

    def close(self) -> None:
        """Close the client if this limiter made it (``from_url``)."""
        if self._owns_client:
            self.client.close()

    # -- the TagLimiter protocol ------------------------------------------------------

    def try_acquire(self, request: SlotRequest, *, place_only: bool = False) -> AcquireResult:
        """Take every slot of ``request`` at once, or none and queue it as a waiter.

        A refused request keeps its place (priority, then its first try) while it asks
        again within ``waiter_ttl_ms``; ask again on a wake-up on ``request.wake_key``
        or after ``retry_in_ms``, whichever comes first. A lease id must ask for the same
        slots every time. ``place_only``: take or keep the place, never the slots.
        """
        check_request(request)
        if not request.slots:
            return AcquireResult(lease=self._lease(request))
        result, wakes = self._do_acquire(request, place_only)
        self._send_wakes(wakes)
        return result

    def refresh(self, lease: Lease, *, reclaim: bool = False) -> bool:
        """Extend the lease by its TTL; False when it had lapsed. A lapsed lease is then
        gone for good, or with ``reclaim`` held again for its holder, even past a slot's
        limit (see :meth:`TagLimiter.refresh`)."""
        if not lease.lease_id:
            raise LimiterError("cannot refresh a lease with an empty lease_id")
        if not lease.slots:
            return False
        check_ttl_ms("lease.ttl_ms", lease.ttl_ms)
        ok, wakes = self._do_refresh(lease, reclaim)
        self._send_wakes(wakes)
        return ok

    def release(self, lease: Lease, *, skip_wake_key: str | None = None) -> bool:
        """Give the slots back; False when the lease had already lapsed (nothing freed).
        No wake-up goes to ``skip_wake_key`` (see :meth:`TagLimiter.release`)."""
        if not lease.lease_id:
            raise LimiterError("cannot release a lease with an empty lease_id")
        if not lease.slots:
            return False
        ok, wakes = self._do_release(lease)
        self._send_wakes([wake for wake in wakes if wake[0] != skip_wake_key])
        return ok

    def withdraw(self, request: SlotRequest) -> None:
        """Stop waiting (a cancelled or failed run); idempotent. Holds are not released."""
        if not request.lease_id:
            raise LimiterError("cannot withdraw a request with an empty lease_id")
        if not request.slots:
            return
        self._send_wakes(self._do_withdraw(request))

    def slots(self) -> tuple[SlotState, ...]:
        """Every slot with live holders or waiters, waiters in the order they will be served."""
        try:
            return self._do_slots()
        except redis.RedisError as exc:
            raise self._fail(exc, "list slots") from exc

    # -- wake-ups -------------------------------------------------------------------------

    def wake_cursor(self, wake_key: str) -> str:
        """The id of the newest entry of stream ``wake_key`` (``0-0`` when empty).

        Take it before ``try_acquire`` and pass it to ``wait_for_wake``, so a wake-up sent
        between the refused try and the wait is not missed.
        """
        try:
            reply = redis_command(self.client, "XREVRANGE", wake_key, "+", "-", "COUNT", 1)
        except redis.RedisError as exc:
            raise self._fail(exc, f"read stream {wake_key}") from exc
        return text(reply[0][0]) if reply else "0-0"

    def wait_for_wake(self, wake_key: str, last_id: str, timeout_s: float) -> str | None:
        """Block until stream ``wake_key`` has an entry after ``last_id``, or ``timeout_s``.

        Returns the id of the newest entry read (the next ``last_id``), or None on timeout.
        Any entry counts (a run's event stream also carries other events): on return,
        ask again with ``try_acquire``.
        """
        if timeout_s <= 0:
            raise LimiterError(f"wait_for_wake needs a positive timeout_s, got {timeout_s!r}")
        # A blocking read longer than the client's socket timeout (redis-py's default one
        # too) would fail as a timeout of the connection: block in slices inside it.
        slice_s = blocking_read_slice_s(self.client) or timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return None
            block_ms = max(1, round(min(remaining_s, slice_s) * 1000))
            try:
                reply = redis_command(
                    self.client,
                    "XREAD",
                    "COUNT",
                    1000,
                    "BLOCK",
                    block_ms,
                    "STREAMS",
                    wake_key,
                    last_id,
                )
            except redis.RedisError as exc:
                what = f"wait on stream {wake_key}"
                raise self._fail(exc, what) from exc
            if reply:
                return _newest_id(reply)

    def _send_wakes(self, wakes: WakeList) -> None:
        # Sent after the script: a wake-up lost to a crash here only delays the waiter
        # until its retry_in_ms, it cannot wrongly grant anything. No MAXLEN: the stream
        # is its owner's (usually the run's event stream, whose unread events a trim of
        # ours would destroy); the owner caps and expires it.
        if not wakes:
            return
        pipe = self.client.pipeline(transaction=False)
        for wake_key, slot_name in wakes:
            pipe.xadd(wake_key, {WAKE_FIELD: slot_name})
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            log.warning("could not send slot wake-ups to %s via %s: %s", wakes, self.url, exc)
            return
        for (wake_key, _), outcome in zip(wakes, results, strict=False):
            if isinstance(outcome, Exception):
                log.warning("could not send a slot wake-up to stream %s: %s", wake_key, outcome)

    # -- the Redis work -------------------------------------------------------------------

    def _fail(self, exc: redis.RedisError, what: str) -> CoreExecError:
        return wrap_redis_error(exc, url=self.url, what=what, refused=LimiterError)

    def _run(
        self, script: Script, keys: Sequence[str], args: Sequence[str | int], what: str
    ) -> Any:
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise self._fail(exc, what) from exc

    def _do_acquire(self, request: SlotRequest, place_only: bool) -> tuple[AcquireResult, WakeList]:
        names = tuple(slot.name for slot in request.slots)
        args: list[str | int] = [
            request.lease_id,
            request.run_id,
            request.step_key,
            request.priority,
            self.lease_ttl_ms,
            self.waiter_ttl_ms,
            request.wake_key or "",
            "1" if place_only else "0",
        ]
        args.extend(_slot_args(request.slots))
        reply = self._run(
            self._acquire,
            self.keys.script_keys(names),
            args,
            f"acquire slots {list(names)} for lease {request.lease_id}",
        )
        wakes = _pairs(reply[3:])
        if int(reply[0]) == 1:
            full = tuple(request.slots[int(i) - 1].name for i in json.loads(text(reply[2])))
            return AcquireResult(lease=self._lease(request, int(reply[1])), full=full), wakes
        blocks = []
        for index, ahead, holders in json.loads(text(reply[2])):
            blocks.append(
                SlotBlock(
                    slot=request.slots[int(index) - 1],
                    holders=tuple(
                        SlotHolder(run_id=run_id, step_key=step_key, lease_id=lease_id)
                        for lease_id, run_id, step_key in (holders or [])
                    ),
                    waiters_ahead=int(ahead),
                )
            )
        return (
            AcquireResult(lease=None, blocked_on=tuple(blocks), retry_in_ms=int(reply[1])),
            wakes,
        )

    def _do_release(self, lease: Lease) -> tuple[bool, WakeList]:
        names = tuple(slot.name for slot in lease.slots)
        reply = self._run(
            self._release,
            self.keys.script_keys(names),
            [lease.lease_id, *_slot_args(lease.slots)],
            f"release lease {lease.lease_id}",
        )
        return int(reply[0]) == 1, _pairs(reply[1:])

    def _do_refresh(self, lease: Lease, reclaim: bool) -> tuple[bool, WakeList]:
        names = tuple(slot.name for slot in lease.slots)
        args: list[str | int] = [lease.lease_id, lease.ttl_ms, "1" if reclaim else "0"]
        args.extend([lease.run_id, lease.step_key, *_slot_args(lease.slots)])
        reply = self._run(
            self._refresh,
            self.keys.script_keys(names),
            args,
            f"refresh lease {lease.lease_id}",
        )
        return int(reply[0]) == 1, _pairs(reply[1:])

    def _do_withdraw(self, request: SlotRequest) -> WakeList:
        names = tuple(slot.name for slot in request.slots)
        reply = self._run(
            self._withdraw,
            self.keys.script_keys(names),
            [request.lease_id, *_slot_args(request.slots)],
            f"withdraw waiter {request.lease_id}",
        )
        return _pairs(reply[1:])

    def _do_slots(self) -> tuple[SlotState, ...]:
        names: list[str] = []
        for attempt in range(SNAPSHOT_TRIES):
            registry, now_ms, replies = self._snapshot(names)
            current = sorted(registry)
            if current == names or attempt == SNAPSHOT_TRIES - 1:
                break
            # A slot came or went since the names were read: read again with the new ones.
            names = current
        per_slot: list[tuple[str, list[str], list[str]]] = []
        for i, name in enumerate(names):
            holders_reply, queue_reply, waiting_reply = replies[3 * i : 3 * i + 3]
            holder_ids = [text(m) for m, expiry in holders_reply if expiry > now_ms]
            waiting = {text(m) for m, expiry in waiting_reply if expiry > now_ms}
            queued = [lease_id_of_member(text(m)) for m in queue_reply if text(m) in waiting]
            if holder_ids or queued:
                per_slot.append((name, holder_ids, queued))
        lease_ids = sorted({h for _, holders, _ in per_slot for h in holders})
        waiter_ids = sorted({w for _, _, waiters in per_slot for w in waiters})
        lease_records = self._records(self.keys.leases, lease_ids)
        waiter_records = self._records(self.keys.waiters, waiter_ids)
        states = []
        for name, holder_ids, queued in per_slot:
            states.append(
                SlotState(
                    name=name,
                    limit=registry.get(name, 0),
                    holders=tuple(_holder(i, lease_records.get(i), 0) for i in holder_ids),
                    waiters=tuple(_holder(i, waiter_records.get(i), 1) for i in queued),
                )
            )
        return tuple(states)

    def _snapshot(self, names: list[str]) -> tuple[dict[str, int], int, list[Any]]:
        """The registry, the server's time and every key of ``names`` read in one
        MULTI/EXEC, so no script runs half-way through what is shown (a step's two slots
        are seen held together or not at all)."""
        keys = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(keys.slot_registry)
        pipe.time()
        for name in names:
            pipe.zrange(keys.holders(name), 0, -1, withscores=True)
            pipe.zrange(keys.queue(name), 0, -1)
            pipe.zrange(keys.waiting(name), 0, -1, withscores=True)
        registry_reply, time_reply, *replies = pipe.execute()
        registry = {text(k): int(v) for k, v in dict(registry_reply).items()}
        now_ms = int(time_reply[0]) * 1000 + int(time_reply[1]) // 1000
        return registry, now_ms, replies

    def _records(self, hash_key: str, ids: list[str]) -> dict[str, list[Any]]:
        if not ids:
            return {}
        values = redis_command(self.client, "HMGET", hash_key, *ids)
        return {i: json.loads(text(v)) for i, v in zip(ids, values, strict=True) if v is not None}

    def _lease(self, request: SlotRequest, ttl_ms: int | None = None) -> Lease:
        return Lease(
            lease_id=request.lease_id,
            run_id=request.run_id,
            step_key=request.step_key,
            slots=request.slots,
            ttl_ms=self.lease_ttl_ms if ttl_ms is None else ttl_ms,
        )


def _holder(lease_id: str, record: list[Any] | None, offset: int) -> SlotHolder:
    # Lease records are [run id, step key]; waiter records [member, run id, step key, wake].
    if record is None:
        return SlotHolder(run_id="", step_key="", lease_id=lease_id)
    return SlotHolder(run_id=record[offset], step_key=record[offset + 1], lease_id=lease_id)
