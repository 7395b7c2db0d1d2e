"""Where priority becomes a queue: a step's tags pick its Celery queue and its message
priority inside that queue.

1. Tag ``coreexec/queue`` names the queue outright.
2. Otherwise the step's priority (tag ``coreexec/priority``, higher runs first) falls
   into the first matching band: by default ``>= 5`` -> ``coreexec.high``,
   ``<= -5`` -> ``coreexec.low``; no band matches -> the default queue.
3. Inside the queue, the priority becomes one of ten message levels (see
   :func:`priority_level`), so a worker takes higher-priority messages first.

Brokers disagree on direction: kombu's Redis transport serves the **lowest** number
first; RabbitMQ the highest. :func:`message_priority` turns a level into the number
the broker wants, so coreexec priorities always mean "higher first".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from celery_app.queues import DEFAULT_QUEUE, HIGH_QUEUE, LOW_QUEUE, PRIORITY_LEVELS
from coreexec.plan import PlannedStep
from coreexec.tags import QUEUE_TAG

# Lower bounds of levels 0..8 (level 9 takes the rest): roughly logarithmic, so small
# priorities stay apart while large ones still rank.
_LEVEL_FLOORS = (20, 10, 5, 2, 1, 0, -1, -4, -9)


class BrokerKind(StrEnum):
    REDIS = "redis"
    """Lower message priority served first (kombu's Redis emulation)."""
    AMQP = "amqp"
    """Higher message priority served first (RabbitMQ ``x-max-priority``)."""

    @classmethod
    def of_url(cls, url: str) -> BrokerKind:
        scheme = url.split("://", 1)[0].lower()
        if scheme in ("redis", "rediss", "unix", "sentinel"):
            return cls.REDIS
        return cls.AMQP


def priority_level(priority: int) -> int:
    """The coreexec priority as a level 0 (most urgent) .. 9 (least).

    ``>=20: 0, 10..19: 1, 5..9: 2, 2..4: 3, 1: 4, 0: 5, -1: 6, -4..-2: 7, -9..-5: 8,
    <=-10: 9``.
    """
    for level, floor in enumerate(_LEVEL_FLOORS):
        if priority >= floor:
            return level
    return PRIORITY_LEVELS - 1


def message_priority(priority: int, broker: BrokerKind) -> int:
    """The ``priority`` message property the broker needs for a coreexec priority."""
    level = priority_level(priority)
    if broker is BrokerKind.REDIS:
        return level
    return PRIORITY_LEVELS - 1 - level


class PriorityBand(BaseModel):
    """Steps whose priority lies in ``[min_priority, max_priority]`` go to ``queue``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue: str = Field(min_length=1)
    min_priority: int | None = None
    max_priority: int | None = None

    @model_validator(mode="after")
    def _bounded(self) -> PriorityBand:
        if self.min_priority is None and self.max_priority is None:
            raise ValueError("give min_priority, max_priority or both")
        if (
            self.min_priority is not None
            and self.max_priority is not None
            and self.min_priority > self.max_priority
        ):
            raise ValueError(
                f"min_priority {self.min_priority} is above max_priority {self.max_priority}"
            )
        return self

    def holds(self, priority: int) -> bool:
        return (self.min_priority is None or priority >= self.min_priority) and (
            self.max_priority is None or priority <= self.max_priority
        )


DEFAULT_BANDS = (
    PriorityBand(queue=HIGH_QUEUE, min_priority=5),
    PriorityBand(queue=LOW_QUEUE, max_priority=-5),
)


@dataclass(frozen=True)
class StepRoute:
    """Where one step's messages go."""

    queue: str
    message_priority: int


class StepRouter:
    """Routes steps by the rules of the module docstring; results are cached per step
    key and priority, since every attempt of a step goes the same way."""

    def __init__(
        self,
        bands: Sequence[PriorityBand] = DEFAULT_BANDS,
        *,
        default_queue: str = DEFAULT_QUEUE,
        broker: BrokerKind = BrokerKind.REDIS,
    ) -> None:
        self.bands = tuple(bands)
        self.default_queue = default_queue
        self.broker = broker
        self._cache: dict[tuple[str, int], StepRoute] = {}

    def queue_for(self, priority: int, tags: dict[str, str] | None = None) -> str:
        """The queue of a step with ``priority`` and ``tags``."""
        named = (tags or {}).get(QUEUE_TAG)
        if named:
            return named
        for band in self.bands:
            if band.holds(priority):
                return band.queue
        return self.default_queue

    def route(self, step: PlannedStep) -> StepRoute:
        key = (step.key, step.priority)
        found = self._cache.get(key)
        if found is None:
            found = StepRoute(
                queue=self.queue_for(step.priority, dict(step.tags)),
                message_priority=message_priority(step.priority, self.broker),
            )
            self._cache[key] = found
        return found
