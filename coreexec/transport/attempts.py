"""Attempt claims: each step attempt runs at most once, whatever the broker delivers.

Delivery is at least once, so one attempt id (the Celery task id) may arrive twice: a
redelivery after a worker died, a message published again. The worker that starts an
attempt claims it first with ``SET NX`` (announcing its start in the same script); a
second delivery finds the claim and is dropped.
The coordinator uses the same key to *fence* an attempt it has given up on (no worker
picked it up in time, or the run was cancelled): once fenced, no worker can claim it, so
a message that arrives late never runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import redis

from coreexec.errors import CoreExecError
from coreexec.events import Event
from coreexec.redis_urls import client_url
from coreexec.transport import keys
from coreexec.transport.redis_events import encode_event, wrap_redis_error

DEFAULT_CLAIM_TTL_S = 24 * 3600
"""How long a claim or fence is kept: far longer than a broker takes to redeliver
(kombu's Redis visibility timeout is 1 hour by default), so a late duplicate still
finds it, yet short enough that a 10,000-step run's claims (~1 MB) do not pile up."""

FENCE_PREFIX = "fenced:"
"""Claim values written by the coordinator start with this; a worker's never do."""


@dataclass(frozen=True)
class ClaimResult:
    """``claimed`` when this caller now owns the attempt; else ``holder`` says who does."""

    claimed: bool
    holder: str | None = None

    @property
    def fenced(self) -> bool:
        """True when the coordinator gave the attempt up before anyone claimed it."""
        return self.holder is not None and self.holder.startswith(FENCE_PREFIX)


class AttemptClaims:
    """Claims of step attempts on one Redis."""

    def __init__(
        self, client: redis.Redis, *, ttl_s: int = DEFAULT_CLAIM_TTL_S, url: str | None = None
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.client = client
        self.ttl_s = ttl_s
        self._url = url or client_url(client)
        self._claim_and_start = client.register_script(
            resources.files("coreexec.transport")
            .joinpath("lua", "claim_and_start.lua")
            .read_text(encoding="utf-8")
        )

    def _fail(self, exc: redis.RedisError, what: str) -> CoreExecError:
        return wrap_redis_error(exc, url=self._url, what=what)

    def claim_and_start(
        self, run_id: str, attempt_id: str, owner: str, start: Event
    ) -> ClaimResult:
        """Claim an attempt and, only if this worker got it, append ``start`` (its
        STEP_START event) to the run's stream; one round trip either way."""
        claim_key = keys.attempt_claim(run_id, attempt_id)
        args = (owner, self.ttl_s, keys.EVENT_STREAM_MAXLEN, keys.EVENT_FIELD, encode_event(start))
        try:
            won, holder = self._claim_and_start(
                keys=[claim_key, keys.run_events(run_id)], args=args
            )
        except redis.RedisError as exc:
            raise self._fail(exc, f"claim attempt {attempt_id}") from exc
        if int(won) == 1:
            return ClaimResult(claimed=True, holder=owner)
        return ClaimResult(claimed=False, holder=_text(holder))

    def fence(self, run_id: str, attempt_ids: Sequence[str], reason: str) -> list[bool]:
        """Stop these attempts from ever starting; one pipeline for all of them.

        Returns, per attempt, True when it was fenced (no worker had claimed it) and
        False when a worker holds it already (it is running or has run).
        """
        if not attempt_ids:
            return []
        value = FENCE_PREFIX + reason
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for attempt_id in attempt_ids:
                    pipe.set(keys.attempt_claim(run_id, attempt_id), value, nx=True, ex=self.ttl_s)
                replies = pipe.execute()
        except redis.RedisError as exc:
            raise self._fail(exc, f"fence {len(attempt_ids)} attempts of run {run_id}") from exc
        return [bool(reply) for reply in replies]

    def holders(self, run_id: str, attempt_ids: Sequence[str]) -> list[str | None]:
        """:meth:`holder` of each attempt, in one pipeline."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for attempt_id in attempt_ids:
                    pipe.get(keys.attempt_claim(run_id, attempt_id))
                replies = pipe.execute()
        except redis.RedisError as exc:
            raise self._fail(exc, f"read the claims of {len(attempt_ids)} attempts") from exc
        return [_text(reply) for reply in replies]

    def holder(self, run_id: str, attempt_id: str) -> str | None:
        """Who claimed the attempt (a fence starts with ``fenced:``), or None."""
        try:
            value = self.client.get(keys.attempt_claim(run_id, attempt_id))
        except redis.RedisError as exc:
            raise self._fail(exc, f"read the claim of attempt {attempt_id}") from exc
        return _text(value)


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
