"""Retry policies and the exceptions user code raises to steer retries."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum

from coreexec.errors import ConfigError


class Backoff(StrEnum):
    """How the delay grows with each attempt."""

    LINEAR = "linear"
    EXPONENTIAL = "exponential"


class Jitter(StrEnum):
    """Randomness added to a delay so retries of many steps do not move in lockstep."""

    FULL = "full"
    PLUS_MINUS = "plus_minus"


class FailureClass(StrEnum):
    """Why a step attempt failed; retry policies choose which classes they retry."""

    USER_ERROR = "user_error"
    TIMEOUT = "timeout"
    INFRASTRUCTURE = "infrastructure"
    CANCELLED = "cancelled"


RETRYABLE_BY_DEFAULT = frozenset(
    {FailureClass.USER_ERROR, FailureClass.TIMEOUT, FailureClass.INFRASTRUCTURE}
)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a failed step up to ``max_retries`` times.

    The n-th retry (n = 1, 2, ...) waits ``delay`` seconds with no backoff,
    ``delay * n`` with linear backoff and ``delay * 2**(n-1)`` with exponential backoff;
    jitter then spreads it: FULL draws from ``[0, d]``, PLUS_MINUS from
    ``[d - delay, d + delay]`` (never below 0). Cancellation is never retried.
    """

    max_retries: int = 1
    delay: float | None = None
    backoff: Backoff | None = None
    jitter: Jitter | None = None
    retry_on: frozenset[FailureClass] = field(default=RETRYABLE_BY_DEFAULT)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(
                f"RetryPolicy.max_retries must be >= 0, got {self.max_retries}",
                path="max_retries",
            )
        if self.delay is not None and self.delay < 0:
            raise ConfigError(
                f"RetryPolicy.delay must be >= 0 seconds, got {self.delay}", path="delay"
            )
        if FailureClass.CANCELLED in self.retry_on:
            raise ConfigError(
                "RetryPolicy.retry_on cannot include CANCELLED: cancellation is final",
                path="retry_on",
            )

    def retries(self, failure_class: FailureClass) -> bool:
        return failure_class in self.retry_on

    def delay_for(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        base = self.delay or 0.0
        if self.backoff is Backoff.LINEAR:
            wait = base * retry_number
        elif self.backoff is Backoff.EXPONENTIAL:
            wait = base * 2 ** (retry_number - 1)
        else:
            wait = base
        draw = (rng or random).uniform
        if self.jitter is Jitter.FULL:
            wait = draw(0.0, wait)
        elif self.jitter is Jitter.PLUS_MINUS:
            wait = max(0.0, wait + draw(-base, base))
        return wait
