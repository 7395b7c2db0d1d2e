"""Resuming a run: re-execute a failed, canceled or orphaned run without re-running the
steps that already succeeded.

``execute_run(run_id, resume=True)`` skips steps with a STEP_SUCCESS event in the run
storage. Before it starts, :func:`prepare_resume` makes the storage complete:

1. attempts the old coordinator dispatched that have not ended are settled: one still
   queued (no worker claimed it) is claimed here as abandoned, so a late delivery of its
   message is dropped rather than run next to the new attempt; one a worker still runs
   (heartbeats arriving) is waited for, so a step never runs twice at once;
2. the run's Redis stream is drained: step events that arrived while no coordinator
   listened (a step that succeeded after its coordinator died) are written to the run
   storage, so they count.

A run is resumable when it FAILED or was CANCELED, or when its status says it is
running but its coordinator is dead (see :mod:`coreexec.transport.coordinator_heartbeat`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from coreexec.errors import ResumeError
from coreexec.events import STEP_ATTEMPT_ENDINGS, TRANSIENT_KINDS, Event, EventKind
from coreexec.instance import Instance
from coreexec.redis_clients import Redis, RedisError, client_url, wrap_redis_error
from coreexec.transport import keys
from coreexec.transport.attempts import FENCE_PREFIX, AttemptClaims
from coreexec.transport.redis_events import RedisEventStream, StreamEntry

log = logging.getLogger(__name__)

FENCE_REASON = "run resumed"
"""Why a resume fences a never-started attempt (workers log it when they drop it)."""

DEFAULT_IN_FLIGHT_TIMEOUT_S = 300.0
"""How long a resume waits for attempts a worker still runs to end."""

MISSED_HEARTBEATS = 5
"""An attempt silent for this many of its run's heartbeat intervals counts as lost."""

MIN_ATTEMPT_SILENCE_S = 5.0
DEFAULT_HEARTBEAT_INTERVAL_S = 2.0
"""Used when the run's settings (written by its dispatcher) say nothing."""


# -- settling attempts the old coordinator left in flight ------------------------------


@dataclass(frozen=True)
class OpenAttempt:
    """An attempt that was dispatched and has no ending event yet."""

    step_key: str
    attempt: int
    attempt_id: str


@dataclass(frozen=True)
class ResumePreparation:
    """What :func:`prepare_resume` did."""

    drained_events: int = 0
    abandoned_attempts: tuple[str, ...] = ()
    waited_attempts: tuple[str, ...] = ()
    lost_attempts: tuple[str, ...] = ()


def open_attempts(events: Iterable[Event]) -> list[OpenAttempt]:
    """Attempts with a STEP_QUEUED and no ending (success, failure, retry request)."""
    queued: dict[str, OpenAttempt] = {}
    ended: set[str] = set()
    for event in events:
        if event.attempt_id is None or event.step_key is None:
            continue
        if event.kind is EventKind.STEP_QUEUED:
            queued[event.attempt_id] = OpenAttempt(
                event.step_key, event.attempt or 0, event.attempt_id
            )
        elif event.kind in STEP_ATTEMPT_ENDINGS:
            ended.add(event.attempt_id)
    return [attempt for key, attempt in queued.items() if key not in ended]


def _started_elsewhere(
    client: Redis, run_id: str, attempts: Sequence[OpenAttempt]
) -> tuple[list[OpenAttempt], list[OpenAttempt]]:
    """(abandoned, claimed): fence the attempts no worker has claimed, so a late delivery
    of their messages is dropped; the others a worker took (it may still run them)."""
    claims = AttemptClaims(client, url=client_url(client))
    fenced = claims.fence(run_id, [a.attempt_id for a in attempts], FENCE_REASON)
    abandoned: list[OpenAttempt] = []
    claimed: list[OpenAttempt] = []
    for attempt, was_fenced in zip(attempts, fenced, strict=True):
        holder = None if was_fenced else claims.holder(run_id, attempt.attempt_id)
        if holder is None or holder.startswith(FENCE_PREFIX):
            abandoned.append(attempt)  # fenced now, or given up by the old coordinator
        else:
            claimed.append(attempt)
    return abandoned, claimed


def attempt_silence(client: Redis, run_id: str) -> float:
    """How long an attempt of this run may be silent before it counts as lost: a few of
    the heartbeat intervals its dispatcher told workers to keep."""
    raw = client.hget(keys.run_settings(run_id), "heartbeat_interval_s")
    try:
        interval_s = float(raw) if raw is not None else DEFAULT_HEARTBEAT_INTERVAL_S
    except ValueError:
        interval_s = DEFAULT_HEARTBEAT_INTERVAL_S
    return max(MIN_ATTEMPT_SILENCE_S, MISSED_HEARTBEATS * interval_s)


def _entry_ms(entry_id: str) -> int:
    # A stream entry id is "<Redis server time in ms>-<sequence>".
    return int(entry_id.split("-", 1)[0])


def _redis_now_ms(client: Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _settle(
    stream: RedisEventStream,
    open_ones: Sequence[OpenAttempt],
    *,
    timeout_s: float,
    silence_s: float,
) -> tuple[list[str], list[str], list[str]]:
    """Abandon unclaimed attempts, wait for live ones; (abandoned, waited, lost).

    Times come from Redis (entry ids and TIME), so hosts' clocks do not matter.
    """
    client, run_id = stream.client, stream.run_id
    given_up, claimed = _started_elsewhere(client, run_id, open_ones)
    abandoned = [attempt.attempt_id for attempt in given_up]
    running = {attempt.attempt_id: attempt for attempt in claimed}
    if not running:
        return abandoned, [], []
    # Last heard of: any entry of the attempt (heartbeats included); never heard: now.
    start_ms = _redis_now_ms(client)
    heard_ms = dict.fromkeys(running, 0)
    cursor = _hear(stream.history(), running, heard_ms, "0-0")
    for attempt_id, at_ms in heard_ms.items():
        if at_ms == 0:
            heard_ms[attempt_id] = start_ms
    waited = list(running)
    lost = _wait_for_ends(
        stream, running, heard_ms, cursor, timeout_s=timeout_s, silence_s=silence_s
    )
    return abandoned, [a for a in waited if a not in lost], lost


def _hear(
    entries: Iterable[StreamEntry],
    running: dict[str, OpenAttempt],
    heard_ms: dict[str, int],
    cursor: str,
) -> str:
    """Note when each running attempt was last heard of in ``entries``, dropping those
    that ended; returns the id of the last entry read."""
    for entry in entries:
        cursor = entry.entry_id
        event = entry.event
        if event is None or event.attempt_id not in running:
            continue
        heard_ms[event.attempt_id] = _entry_ms(entry.entry_id)
        if event.kind in STEP_ATTEMPT_ENDINGS:
            running.pop(event.attempt_id)
    return cursor


def _wait_for_ends(
    stream: RedisEventStream,
    running: dict[str, OpenAttempt],
    heard_ms: dict[str, int],
    cursor: str,
    *,
    timeout_s: float,
    silence_s: float,
) -> list[str]:
    """Follow the stream until every running attempt ended or went silent for longer
    than ``silence_s`` (lost, returned); :class:`ResumeError` after ``timeout_s``."""
    lost: list[str] = []
    deadline = time.monotonic() + timeout_s
    while running:
        now_ms = _redis_now_ms(stream.client)
        for attempt_id in [a for a in running if now_ms - heard_ms[a] > silence_s * 1000]:
            lost.append(attempt_id)
            running.pop(attempt_id)
        remaining_s = deadline - time.monotonic()
        if not running:
            break
        if remaining_s <= 0:
            steps = ", ".join(
                sorted(f"{a.step_key} (attempt {a.attempt})" for a in running.values())
            )
            raise ResumeError(
                f"run {stream.run_id}: steps still running on workers after {timeout_s:g}s: "
                f"{steps}; resume again when they end",
                run_id=stream.run_id,
            )
        entries = stream.read(cursor, block_ms=max(1, int(min(remaining_s, 1.0) * 1000)))
        cursor = _hear(entries, running, heard_ms, cursor)
    return lost


# -- draining the stream ---------------------------------------------------------------


def _identity(event: Event) -> str:
    return json.dumps(event.to_dict(), sort_keys=True, separators=(",", ":"), default=str)


def missing_step_events(stored: Iterable[Event], entries: Iterable[StreamEntry]) -> list[Event]:
    """Step events on the stream that the run storage lacks, in stream order."""
    have = {_identity(event) for event in stored}
    missing: list[Event] = []
    for entry in entries:
        event = entry.event
        if event is None or not event.is_step_event or event.kind in TRANSIENT_KINDS:
            continue
        identity = _identity(event)
        if identity not in have:
            have.add(identity)
            missing.append(event)
    return missing


def prepare_resume(
    instance: Instance,
    run_id: str,
    stream: RedisEventStream | None,
    *,
    in_flight_timeout_s: float = DEFAULT_IN_FLIGHT_TIMEOUT_S,
    attempt_silence_s: float | None = None,
) -> ResumePreparation:
    """Settle the old coordinator's open attempts and drain the stream into storage.

    Without a stream (no Redis configured) there is nothing to drain or settle.
    """
    if stream is None:
        return ResumePreparation()
    storage = instance.storage
    try:
        # A finished run's stream was given an expiry; the resumed run needs it again.
        stream.client.persist(stream.key)
        stored = [event for _, event in storage.events(run_id)]
        stream_events = [e for e in (entry.event for entry in stream.history()) if e is not None]
        open_ones = open_attempts([*stored, *stream_events])
        abandoned, waited, lost = _settle(
            stream,
            open_ones,
            timeout_s=in_flight_timeout_s,
            silence_s=attempt_silence_s or attempt_silence(stream.client, run_id),
        )
        missing = missing_step_events(stored, stream.history())
    except RedisError as exc:
        raise wrap_redis_error(
            exc, url=client_url(stream.client), what="drain the run's stream"
        ) from exc
    if missing:
        storage.append_events(run_id, missing)
    log.info(
        "resume of run %s: %d events drained, attempts abandoned %s, waited for %s, lost %s",
        run_id,
        len(missing),
        abandoned,
        waited,
        lost,
    )
    return ResumePreparation(
        drained_events=len(missing),
        abandoned_attempts=tuple(abandoned),
        waited_attempts=tuple(waited),
        lost_attempts=tuple(lost),
    )


def done_steps(instance: Instance, run_id: str) -> tuple[frozenset[str], dict[str, int]]:
    """Steps that already succeeded in a run (for resume) and attempts made so far."""
    succeeded: set[str] = set()
    attempts: dict[str, int] = {}
    for _, event in instance.storage.events(run_id):
        if event.step_key is None:
            continue
        if event.kind is EventKind.STEP_SUCCESS:
            succeeded.add(event.step_key)
        elif event.kind is EventKind.STEP_QUEUED and event.attempt is not None:
            attempts[event.step_key] = max(attempts.get(event.step_key, 0), event.attempt)
    return frozenset(succeeded), attempts
