"""Ends of supervised attempts: held by the step entrypoint, published by its supervisor.

An attempt that runs in a container or pod reports its start, logs and heartbeats as
they happen, but the events that end it (outputs and the STEP_SUCCESS / STEP_FAILURE /
STEP_RETRY_REQUESTED after them) go to a Redis list instead of the run's stream. The
supervising process publishes them once it has seen the container end, so:

- the coordinator releases the step's limiter slots when the container has really
  ended, not when the user's function returned;
- an end the entrypoint held is the step's own report, and a container that ended with
  nothing held was killed or crashed: an infrastructure failure the supervisor names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from coreexec.errors import CoreExecError
from coreexec.events import Event
from coreexec.redis_clients import Redis, RedisError, client_url, text, wrap_redis_error
from coreexec.transport import keys
from coreexec.transport.attempts import DEFAULT_CLAIM_TTL_S
from coreexec.transport.redis_events import encode_event


@dataclass(frozen=True)
class PublishedEnd:
    """What :meth:`AttemptEnds.publish` did: ``published`` False when another
    supervisor had published the end already; ``held`` the entrypoint's own events
    (empty when the fallback was published)."""

    published: bool
    held: tuple[Event, ...] = ()

    @property
    def reported(self) -> bool:
        """True when the entrypoint reported the end itself."""
        return bool(self.held)


def _decode(raw: object) -> Event:
    return Event.from_dict(json.loads(text(raw)))


class AttemptEnds:
    """Held ends of supervised attempts on one Redis."""

    def __init__(
        self, client: Redis, *, ttl_s: int = DEFAULT_CLAIM_TTL_S, url: str | None = None
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._url = url or client_url(client)
        self._publish = client.register_script(
            resources.files("coreexec.transport")
            .joinpath("lua", "publish_end.lua")
            .read_text(encoding="utf-8")
        )

    def hold(self, run_id: str, attempt_id: str, events: Sequence[Event]) -> None:
        """Keep ``events`` (in order) for the supervisor; one round trip."""
        key = keys.attempt_end(run_id, attempt_id)
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.rpush(key, *[encode_event(event) for event in events])
                pipe.expire(key, self.ttl_s)
                pipe.execute()
        except RedisError as exc:
            raise wrap_redis_error(
                exc, url=self._url, what=f"hold the end of {attempt_id}"
            ) from exc

    def held(self, run_id: str, attempt_id: str) -> list[Event]:
        """The events held for an attempt (empty when none)."""
        try:
            raw = self.client.lrange(keys.attempt_end(run_id, attempt_id), 0, -1)
        except RedisError as exc:
            raise wrap_redis_error(
                exc, url=self._url, what=f"read the end of {attempt_id}"
            ) from exc
        return [_decode(item) for item in raw]

    def publish(
        self,
        run_id: str,
        attempt_id: str,
        *,
        leading: Sequence[Event],
        fallback: Sequence[Event],
    ) -> PublishedEnd:
        """Publish ``leading`` (logs), then the held events or, when there are none,
        ``fallback``; nothing when the end was published before. One round trip."""
        args: list[str | int] = [
            keys.EVENT_STREAM_MAXLEN,
            keys.EVENT_FIELD,
            self.ttl_s,
            len(leading),
            *[encode_event(event) for event in leading],
            *[encode_event(event) for event in fallback],
        ]
        script_keys = [
            keys.attempt_end(run_id, attempt_id),
            keys.run_events(run_id),
            keys.attempt_end_published(run_id, attempt_id),
        ]
        try:
            reply = self._publish(keys=script_keys, args=args)
        except RedisError as exc:
            raise wrap_redis_error(
                exc, url=self._url, what=f"publish the end of {attempt_id}"
            ) from exc
        if int(reply[0]) == 0:
            return PublishedEnd(published=False)
        try:
            held = tuple(_decode(item) for item in reply[2:])
        except ValueError as exc:
            raise CoreExecError(
                f"the held end of attempt {attempt_id} is malformed: {exc}"
            ) from exc
        return PublishedEnd(published=True, held=held)
