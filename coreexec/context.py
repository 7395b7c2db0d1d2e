"""What a running step sees: its identity, its config and a logger whose lines become events."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from coreexec.events import Event, EventKind

EventSink = Callable[[Event], None]

_user_logger = logging.getLogger("coreexec.step")


class StepLogger:
    """``context.log``: each line is a STEP_LOG event and also goes to Python logging."""

    def __init__(
        self,
        *,
        run_id: str,
        step_key: str,
        attempt: int,
        attempt_id: str,
        emit: EventSink,
        now: Callable[[], float],
    ) -> None:
        self._run_id = run_id
        self._step_key = step_key
        self._attempt = attempt
        self._attempt_id = attempt_id
        self._emit = emit
        self._now = now

    def log(self, level: int, message: str, *args: Any) -> None:
        text = message % args if args else message
        _user_logger.log(level, "[%s] %s", self._step_key, text)
        self._emit(
            Event(
                kind=EventKind.STEP_LOG,
                run_id=self._run_id,
                timestamp=self._now(),
                step_key=self._step_key,
                attempt=self._attempt,
                attempt_id=self._attempt_id,
                message=text,
                data={"level": logging.getLevelName(level)},
            )
        )

    def debug(self, message: str, *args: Any) -> None:
        self.log(logging.DEBUG, message, *args)

    def info(self, message: str, *args: Any) -> None:
        self.log(logging.INFO, message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self.log(logging.WARNING, message, *args)

    def error(self, message: str, *args: Any) -> None:
        self.log(logging.ERROR, message, *args)


@dataclass(frozen=True)
class StepContext:
    """The first parameter of a step that asks for it (``def f(context: StepContext)``)."""

    run_id: str
    step_key: str
    attempt: int
    """1 for the first attempt, 2 for the first retry, ..."""
    job_name: str
    tags: Mapping[str, str]
    config: BaseModel | None
    log: StepLogger
    run_tags: Mapping[str, str]
