"""Retry policies and the exceptions user code raises to steer retries."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum


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
            raise ValueError(f"RetryPolicy.max_retries must be >= 0, got {self.max_retries}")
        if self.delay is not None and self.delay < 0:
            raise ValueError(f"RetryPolicy.delay must be >= 0 seconds, got {self.delay}")
        if FailureClass.CANCELLED in self.retry_on:
            raise ValueError("RetryPolicy.retry_on cannot include CANCELLED: cancellation is final")

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


class RetryRequested(Exception):
    """Raise inside a step to ask for another attempt after ``seconds_to_wait``.

    Logged as information, not as an error: the step is retried while the attempt
    number is within ``max_retries``.
    """

    def __init__(self, max_retries: int = 1, seconds_to_wait: float = 0.0) -> None:
        super().__init__(f"retry requested (max_retries={max_retries}, wait {seconds_to_wait}s)")
        self.max_retries = max_retries
        self.seconds_to_wait = seconds_to_wait


class Failure(Exception):
    """Raise inside a step to fail it with ``description``; retried only if allowed."""

    def __init__(self, description: str = "", *, allow_retries: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.allow_retries = allow_retries
