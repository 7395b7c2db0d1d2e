"""Step summaries of a run whose coordinator ended it with steps still open."""

from __future__ import annotations

from coreexec.events import Event, EventKind
from coreexec.runs.summary import summarize


def _event(kind: EventKind, step_key: str | None = None, at: float = 1.0) -> Event:
    return Event(
        kind=kind, run_id="r", timestamp=at, step_key=step_key, attempt=1, message=kind.value
    )


OPEN = [
    _event(EventKind.RUN_START),
    _event(EventKind.STEP_QUEUED, "running"),
    _event(EventKind.STEP_START, "running", at=2.0),
    _event(EventKind.STEP_QUEUED, "queued"),
]


def test_steps_open_when_the_run_failed_end_with_it() -> None:
    rows = summarize([*OPEN, _event(EventKind.RUN_FAILURE, at=5.0)], ["running", "queued", "never"])
    by_key = {row.step_key: row for row in rows}
    assert by_key["running"].status == "failed"
    assert by_key["running"].error is not None and "infrastructure" in by_key["running"].error
    assert by_key["running"].duration_s == 3.0
    assert by_key["queued"].status == "not run"
    assert by_key["never"].status == "not run"


def test_a_resumed_run_s_steps_stay_open() -> None:
    events = [*OPEN, _event(EventKind.RUN_FAILURE), _event(EventKind.RUN_START)]
    assert [row.status for row in summarize(events)] == ["running", "queued"]
