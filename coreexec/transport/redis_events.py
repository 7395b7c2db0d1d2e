"""A run's events on a Redis stream: workers publish, the coordinator reads with blocking
XREAD, so nobody polls.

Each entry holds either one event (field ``e``: the JSON of ``Event.to_dict()``) or a
wake-up (field ``wake``: a reason such as ``"cancel"`` or the slot a tag limiter freed)
whose only purpose is to end a blocked read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coreexec.errors import CoreExecError
from coreexec.events import Event
from coreexec.redis_clients import (
    Redis,
    RedisError,
    blocking_read_slice_s,
    client_url,
    text,
    wrap_redis_error,
)
from coreexec.redis_urls import safe_url
from coreexec.transport import keys

log = logging.getLogger(__name__)

_EVENT_FIELDS = (keys.EVENT_FIELD, keys.EVENT_FIELD.encode())
_WAKE_FIELDS = (keys.WAKE_FIELD, keys.WAKE_FIELD.encode())


@dataclass(frozen=True)
class StreamEntry:
    """One entry of a run's stream.

    ``event`` is set for an event, ``wake`` for a wake-up; both are None for a malformed
    entry (logged and otherwise ignored; it is returned so the reader's cursor moves past it).
    """

    entry_id: str
    event: Event | None = None
    wake: str | None = None


def _field(fields: Mapping[Any, Any], names: tuple[str, bytes]) -> Any:
    for name in names:
        if name in fields:
            return fields[name]
    return None


def encode_event(event: Event) -> str:
    """The JSON stored in field ``e``; values JSON cannot hold are written with ``str``."""
    return json.dumps(event.to_dict(), separators=(",", ":"), default=str)


class RedisEventStream:
    """The event stream of one run (``coreexec:run:{<run_id>}:events``).

    Safe to share between threads: redis-py clients are thread-safe.
    """

    def __init__(self, client: Redis, run_id: str, *, url: str | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self._key = keys.run_events(run_id)
        self._url = url or client_url(client)

    @property
    def url(self) -> str:
        """The Redis this stream lives on (password hidden), for messages."""
        return safe_url(self._url)

    @property
    def key(self) -> str:
        """The stream's Redis key (also the tag limiter's ``wake_key`` for this run)."""
        return self._key

    def _fail(self, exc: RedisError, what: str) -> CoreExecError:
        return wrap_redis_error(exc, url=self._url, what=f"{what} stream {self._key}")

    def publish(self, event: Event, *, create: bool = True) -> str | None:
        """Append one event; returns its entry id. With ``create`` False, a stream that
        does not exist (an unknown run, or one whose keys lapsed) is not made, and None
        is returned."""
        try:
            entry_id = self.client.xadd(
                self._key,
                {keys.EVENT_FIELD: encode_event(event)},
                maxlen=keys.EVENT_STREAM_MAXLEN,
                approximate=True,
                nomkstream=not create,
            )
        except RedisError as exc:
            raise self._fail(exc, "append to") from exc
        return None if entry_id is None else text(entry_id)

    def publish_many(self, events: Iterable[Event]) -> list[str]:
        """Append several events in one round trip (a pipeline, in order)."""
        batch = list(events)
        if not batch:
            return []
        if len(batch) == 1:
            return [self.publish(batch[0]) or ""]
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for event in batch:
                    pipe.xadd(
                        self._key,
                        {keys.EVENT_FIELD: encode_event(event)},
                        maxlen=keys.EVENT_STREAM_MAXLEN,
                        approximate=True,
                    )
                ids = pipe.execute()
        except RedisError as exc:
            raise self._fail(exc, "append to") from exc
        return [text(entry_id) for entry_id in ids]

    def publish_wake(self, reason: str) -> None:
        """Append a wake-up, so a reader blocked in :meth:`read` returns at once."""
        try:
            self.client.xadd(
                self._key,
                {keys.WAKE_FIELD: reason},
                maxlen=keys.EVENT_STREAM_MAXLEN,
                approximate=True,
            )
        except RedisError as exc:
            raise self._fail(exc, "wake readers of") from exc

    def last_id(self) -> str:
        """The id of the newest entry (``"0-0"`` when the stream is empty or absent),
        so a reader can start from "now"."""
        try:
            newest = self.client.xrevrange(self._key, count=1)
        except RedisError as exc:
            raise self._fail(exc, "read") from exc
        return text(newest[0][0]) if newest else "0-0"

    def read(self, last_id: str, block_ms: int | None, count: int = 500) -> list[StreamEntry]:
        """Entries after ``last_id``, oldest first.

        ``block_ms`` None returns at once; otherwise waits up to that many milliseconds
        for a first entry (0 as long as the client's socket timeout allows). A wait
        longer than that timeout returns nothing after a slice inside it (see
        :func:`~coreexec.redis_clients.blocking_read_slice_s`): callers loop to their own
        deadline. A malformed entry is logged with the stream and entry id and returned as
        a ``StreamEntry`` with neither event nor wake-up.
        """
        if block_ms is not None:
            slice_s = blocking_read_slice_s(self.client)
            if slice_s is not None:
                slice_ms = max(1, int(slice_s * 1000))
                block_ms = slice_ms if block_ms == 0 else min(block_ms, slice_ms)
        try:
            reply = self.client.xread({self._key: last_id}, count=count, block=block_ms)
        except RedisError as exc:
            raise self._fail(exc, "read") from exc
        return self._decode(reply)

    def _decode(self, reply: Any) -> list[StreamEntry]:
        if not reply:
            return []
        # RESP2 replies [[key, entries]]; RESP3 replies {key: [entries]}.
        streams = reply.items() if isinstance(reply, dict) else reply
        entries: list[StreamEntry] = []
        for _, items in streams:
            if items and isinstance(items[0], list) and items[0] and isinstance(items[0][0], list):
                items = items[0]
            entries.extend(self.decode_entry(raw_id, fields) for raw_id, fields in items)
        return entries

    def decode_entry(self, raw_id: Any, fields: Mapping[Any, Any] | None) -> StreamEntry:
        """One raw XREAD/XRANGE entry as a :class:`StreamEntry` (never raises)."""
        entry_id = text(raw_id)
        fields = fields or {}
        body = _field(fields, _EVENT_FIELDS)
        if body is not None:
            try:
                return StreamEntry(entry_id, event=Event.from_dict(json.loads(text(body))))
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning(
                    "skipping malformed event %s on stream %s: %s", entry_id, self._key, exc
                )
                return StreamEntry(entry_id)
        wake = _field(fields, _WAKE_FIELDS)
        if wake is not None:
            return StreamEntry(entry_id, wake=text(wake))
        log.warning(
            "skipping entry %s on stream %s: it has neither an %r nor a %r field",
            entry_id,
            self._key,
            keys.EVENT_FIELD,
            keys.WAKE_FIELD,
        )
        return StreamEntry(entry_id)

    def history(self, count: int | None = None) -> list[StreamEntry]:
        """Every entry from the start (XRANGE), for late watchers and tests."""
        try:
            items = self.client.xrange(self._key, count=count)
        except RedisError as exc:
            raise self._fail(exc, "read") from exc
        return [self.decode_entry(raw_id, fields) for raw_id, fields in items or ()]

    def expire(self, ttl_s: int = keys.FINISHED_RUN_TTL_S) -> None:
        """Let the stream (and the run's settings) lapse ``ttl_s`` after the run ended."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.expire(self._key, ttl_s)
                pipe.expire(keys.run_settings(self.run_id), ttl_s)
                pipe.execute()
        except RedisError as exc:
            raise self._fail(exc, "set the expiry of") from exc


def events_of(entries: Sequence[StreamEntry]) -> list[Event]:
    """The events among ``entries``, in order."""
    return [entry.event for entry in entries if entry.event is not None]
