"""Waiting for a condition with a deadline: the one polling loop of the test suite.

Tests wait on state they cannot be told about (a pid file, a Redis key, a process gone):
``wait_until`` re-checks the condition every ``interval_s`` and fails the test with an
:class:`WaitTimeout` (an ``AssertionError``) naming what it waited for and the last value
the condition returned. It is not a sleep: it returns as soon as the condition holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.02


class WaitTimeout(AssertionError):
    """The condition did not hold in time; carries what was awaited and the last value."""

    def __init__(self, what: str, timeout_s: float, last: object, state: str = "") -> None:
        self.what = what
        self.timeout_s = timeout_s
        self.last = last
        message = f"timed out after {timeout_s:g}s waiting for {what} (last value seen: {last!r})"
        super().__init__(f"{message}; {state}" if state else message)


def wait_until(
    condition: Callable[[], T],
    what: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    interval_s: float = POLL_INTERVAL_S,
    show: Callable[[], object] | None = None,
) -> T:
    """The first truthy value of ``condition()``, re-checked every ``interval_s``.

    Raises :class:`WaitTimeout` after ``timeout_s``; its message names ``what``, the
    condition's last value and, if given, ``show()`` (the state worth reading on failure).
    An exception raised by the condition propagates at once.
    """
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        last = condition()
        if last:
            return last
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            state = f"state:\n{show()}" if show is not None else ""
            raise WaitTimeout(what, timeout_s, last, state)
        pause.wait(min(interval_s, remaining_s))


def holds_within(
    condition: Callable[[], object], timeout_s: float, *, interval_s: float = POLL_INTERVAL_S
) -> bool:
    """Whether ``condition()`` became true within ``timeout_s`` (for teardown code that
    escalates, a kill after a polite stop, rather than failing a test)."""
    try:
        wait_until(condition, "the condition", timeout_s, interval_s=interval_s)
    except WaitTimeout:
        return False
    return True
