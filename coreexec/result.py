"""The result of a run executed in this process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coreexec.errors import CoreExecError
from coreexec.events import Event, EventKind
from coreexec.io_managers import IOManager, OutputKey
from coreexec.step import DEFAULT_OUTPUT
from coreexec.storage.base import RunStatus


@dataclass(frozen=True)
class ExecutionResult:
    """``success``, ``run_id``, the events, and the outputs through ``output_for``."""

    run_id: str
    status: RunStatus
    events: Sequence[Event]
    io_manager: IOManager

    @property
    def success(self) -> bool:
        return self.status is RunStatus.SUCCESS

    def output_for(self, step_key: str, output_name: str = DEFAULT_OUTPUT) -> Any:
        """The value a step returned (or one of its named outputs)."""
        key = OutputKey(self.run_id, step_key, output_name)
        if not self.io_manager.has(key):
            succeeded = self.step_keys_with(EventKind.STEP_SUCCESS)
            why = "it did not succeed" if step_key not in succeeded else "no such output"
            raise CoreExecError(
                f"no output {output_name!r} of step {step_key!r} in run {self.run_id}: {why}"
            )
        return self.io_manager.load(key)

    def step_keys_with(self, kind: EventKind) -> list[str]:
        seen: dict[str, None] = {}
        for event in self.events:
            if event.kind is kind and event.step_key is not None:
                seen[event.step_key] = None
        return list(seen)

    @property
    def failed_steps(self) -> list[str]:
        """Steps whose last attempt failed (retried failures excluded)."""
        last: dict[str, EventKind] = {}
        for event in self.events:
            if event.step_key is not None and event.kind in (
                EventKind.STEP_SUCCESS,
                EventKind.STEP_FAILURE,
                EventKind.STEP_UP_FOR_RETRY,
            ):
                last[event.step_key] = event.kind
        return [key for key, kind in last.items() if kind is EventKind.STEP_FAILURE]

    @property
    def skipped_steps(self) -> list[str]:
        return self.step_keys_with(EventKind.STEP_SKIPPED)

    def events_for(self, step_key: str) -> list[Event]:
        return [event for event in self.events if event.step_key == step_key]
