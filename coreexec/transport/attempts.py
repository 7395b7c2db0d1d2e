"""Attempt claims: each step attempt runs at most once, whatever the broker delivers,
and only if the run's coordinator issued it.

Delivery is at least once, so one attempt id (the Celery task id) may arrive twice: a
redelivery after a worker died, a message published again. The worker that starts an
attempt claims it first with ``SET NX`` (announcing its start in the same script); a
second delivery finds the claim and is dropped.
The coordinator uses the same key to *fence* an attempt it has given up on (no worker
picked it up in time, or the run was cancelled): once fenced, no worker can claim it, so
a message that arrives late never runs.

Before publishing, the coordinator records each attempt it issues in the run's issued
hash (:func:`add_issue_commands`, in the publish pipeline where the broker is this
Redis). The claim script claims nothing the hash does not hold with the message's step
key and attempt number, nor anything of a run marked finished (:func:`add_finish_commands`):
a replayed or forged message for a finished or unknown run writes nothing at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from coreexec.errors import CoreExecError
from coreexec.events import Event
from coreexec.redis_clients import Redis, RedisError, client_url, text, wrap_redis_error
from coreexec.transport import keys
from coreexec.transport.redis_events import encode_event

DEFAULT_CLAIM_TTL_S = 24 * 3600
"""How long a claim or fence is kept: far longer than a broker takes to redeliver
(kombu's Redis visibility timeout is 1 hour by default), so a late duplicate still
finds it, yet short enough that a 10,000-step run's claims (~1 MB) do not pile up."""

FENCE_PREFIX = "fenced:"
"""Claim values written by the coordinator start with this; a worker's never do."""


FINISHED_FIELD = "finished"
"""Field of the run's settings hash set when its coordinator ends the run."""


class AttemptIds(Protocol):
    """What identifies an attempt (``StepAttempt`` is one)."""

    @property
    def step_key(self) -> str: ...
    @property
    def number(self) -> int: ...
    @property
    def attempt_id(self) -> str: ...


MAX_STEP_KEY_LENGTH = 512
MAX_JOB_REFERENCE_LENGTH = 1024


def _bad_text(value: object, what: str, longest: int) -> str | None:
    if not isinstance(value, str) or not value or len(value) > longest:
        return f"{what} must be a string of 1 to {longest} characters"
    if not value.isprintable():
        return f"{what} {value[:40]!r} must be printable"
    return None


def invalid_attempt_message(
    run_id: object, step_key: object, number: object, attempt_id: object, job_reference: object
) -> str | None:
    """Why a step message's identifiers cannot be coreexec's (None when they can be);
    checked before anything is written to Redis, so no key is made from them."""
    for value, what in ((run_id, "run id"), (attempt_id, "attempt id")):
        try:
            keys.check_id(value, what=what)  # type: ignore[arg-type]
        except ValueError as exc:
            return str(exc)
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        return f"attempt number {str(number)[:20]!r} must be a positive integer"
    return _bad_text(step_key, "step key", MAX_STEP_KEY_LENGTH) or _bad_text(
        job_reference, "job reference", MAX_JOB_REFERENCE_LENGTH
    )


def issued_value(step_key: str, number: int) -> str:
    """The issued hash's value for an attempt: what its message must name."""
    return f"{number}:{step_key}"


def add_issue_commands(
    pipe: Any,
    run_id: str,
    attempts: Sequence[AttemptIds],
    ttl_s: int | None = DEFAULT_CLAIM_TTL_S,
) -> None:
    """Queue on ``pipe`` the command that records ``attempts`` as issued, and the hash's
    TTL unless ``ttl_s`` is None (a coordinator sets it with its first batch)."""
    key = keys.run_issued(run_id)
    pipe.hset(key, mapping={a.attempt_id: issued_value(a.step_key, a.number) for a in attempts})
    if ttl_s is not None:
        pipe.expire(key, ttl_s)


def add_finish_commands(pipe: Any, run_id: str, ttl_s: int = keys.FINISHED_RUN_TTL_S) -> None:
    """Queue on ``pipe`` the commands that mark the run finished: no attempt of it can be
    claimed any more, and its issued hash lapses with the rest of its keys."""
    pipe.hset(keys.run_settings(run_id), FINISHED_FIELD, "1")
    pipe.expire(keys.run_issued(run_id), ttl_s)


def add_reopen_commands(pipe: Any, run_id: str) -> None:
    """Queue on ``pipe`` the command that lets a resumed run's attempts be claimed again."""
    pipe.hdel(keys.run_settings(run_id), FINISHED_FIELD)


@dataclass(frozen=True)
class ClaimResult:
    """``claimed`` when this caller now owns the attempt; else ``holder`` says who does,
    or ``refused`` why nobody may (never issued, run finished)."""

    claimed: bool
    holder: str | None = None
    refused: str | None = None

    @property
    def fenced(self) -> bool:
        """True when the coordinator gave the attempt up before anyone claimed it."""
        return self.holder is not None and self.holder.startswith(FENCE_PREFIX)


class AttemptClaims:
    """Claims of step attempts on one Redis."""

    def __init__(
        self, client: Redis, *, ttl_s: int = DEFAULT_CLAIM_TTL_S, url: str | None = None
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

    def _fail(self, exc: RedisError, what: str) -> CoreExecError:
        return wrap_redis_error(exc, url=self._url, what=what)

    def claim_and_start(
        self, run_id: str, attempt_id: str, owner: str, start: Event
    ) -> ClaimResult:
        """Claim an attempt and, only if this worker got it, append ``start`` (its
        STEP_START event) to the run's stream; one round trip either way."""
        claim_key = keys.attempt_claim(run_id, attempt_id)
        issued = issued_value(start.step_key or "", start.attempt or 0)
        args = (
            owner,
            self.ttl_s,
            keys.EVENT_STREAM_MAXLEN,
            keys.EVENT_FIELD,
            encode_event(start),
            attempt_id,
            issued,
        )
        run_keys = [keys.run_events(run_id), keys.run_issued(run_id), keys.run_settings(run_id)]
        try:
            won, holder, *claimed_by = self._claim_and_start(keys=[claim_key, *run_keys], args=args)
        except RedisError as exc:
            raise self._fail(exc, f"claim attempt {attempt_id}") from exc
        if int(won) == 1:
            return ClaimResult(claimed=True, holder=owner)
        if int(won) < 0:
            # A refused attempt of a finished run may have been fenced by its cancel.
            previous = text(claimed_by[0]) if claimed_by and claimed_by[0] else None
            return ClaimResult(claimed=False, holder=previous, refused=text(holder))
        return ClaimResult(claimed=False, holder=text(holder))

    def issue(self, run_id: str, attempts: Sequence[AttemptIds]) -> None:
        """Record ``attempts`` as issued, in a pipeline of their own (where the publish
        pipeline cannot carry it: a broker other than this Redis)."""
        if not attempts:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                add_issue_commands(pipe, run_id, attempts, self.ttl_s)
                pipe.execute()
        except RedisError as exc:
            raise self._fail(
                exc, f"record {len(attempts)} issued attempts of run {run_id}"
            ) from exc

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
        except RedisError as exc:
            raise self._fail(exc, f"fence {len(attempt_ids)} attempts of run {run_id}") from exc
        return [bool(reply) for reply in replies]

    def holders(self, run_id: str, attempt_ids: Sequence[str]) -> list[str | None]:
        """:meth:`holder` of each attempt, in one pipeline."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for attempt_id in attempt_ids:
                    pipe.get(keys.attempt_claim(run_id, attempt_id))
                replies = pipe.execute()
        except RedisError as exc:
            raise self._fail(exc, f"read the claims of {len(attempt_ids)} attempts") from exc
        return [None if reply is None else text(reply) for reply in replies]

    def holder(self, run_id: str, attempt_id: str) -> str | None:
        """Who claimed the attempt (a fence starts with ``fenced:``), or None."""
        try:
            value = self.client.get(keys.attempt_claim(run_id, attempt_id))
        except RedisError as exc:
            raise self._fail(exc, f"read the claim of attempt {attempt_id}") from exc
        return None if value is None else text(value)
