"""What `runs show` and `runs watch` say about a step: cancels read as cancels, and a
wait's detail goes when the step moves on."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from coreexec.active_execution import StepAttempt
from coreexec.cli.progress import ProgressPrinter, format_summary
from coreexec.events import Event, EventKind
from coreexec.runs.summary import summarize
from coreexec.step_runner import _stopped_by


def _event(kind: EventKind, step_key: str, message: str = "", **data: Any) -> Event:
    return Event(
        kind=kind, run_id="r1", timestamp=1.0, step_key=step_key, message=message, data=data
    )


WAIT = "waiting for database=warehouse limit 2; held by r0/load"


def test_a_skipped_step_loses_its_wait_detail() -> None:
    events = [
        _event(EventKind.SLOT_WAIT, "load", WAIT),
        _event(EventKind.STEP_SKIPPED, "load", "run canceled"),
    ]
    (row,) = summarize(events)
    assert row.status == "skipped"
    assert row.waiting_for is None
    assert "waiting for" not in format_summary([row])
    assert "run canceled" in format_summary([row])


def test_a_waiting_step_shows_what_it_waits_for() -> None:
    (row,) = summarize([_event(EventKind.SLOT_WAIT, "load", WAIT)])
    assert row.status == "waiting for slot"
    assert WAIT in format_summary([row])


def test_a_cancelled_step_reads_cancelled_not_failed() -> None:
    events = [
        _event(EventKind.STEP_START, "load"),
        _event(
            EventKind.STEP_FAILURE,
            "load",
            "cancelled: the step was stopped by SIGTERM",
            failure_class="cancelled",
            retryable=False,
        ),
    ]
    (row,) = summarize(events)
    assert row.status == "cancelled"
    table = format_summary([row])
    assert "failed" not in table and "SystemExit" not in table
    assert "cancelled: the step was stopped by SIGTERM" in table


def test_watch_labels_a_cancelled_step_cancel(capsys: pytest.CaptureFixture[str]) -> None:
    printer = ProgressPrinter(total_steps=1, color=False)
    printer(_event(EventKind.STEP_FAILURE, "load", "cancelled: x", failure_class="cancelled"))
    printer(_event(EventKind.STEP_FAILURE, "other", "ValueError: y", failure_class="user_error"))
    lines = capsys.readouterr().out.splitlines()
    assert "cancel load cancelled: x" in lines[0] and "FAIL" not in lines[0]
    assert "FAIL other ValueError: y" in lines[1]


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        # How billiard's pool processes exit on SIGTERM: sys.exit(-(256 - signum)).
        (SystemExit(-(256 - signal.SIGTERM)), "the step was stopped by SIGTERM"),
        (KeyboardInterrupt(), "the step was interrupted (the run was canceled)"),
    ],
)
def test_an_interrupted_step_says_how_it_was_stopped(exc: BaseException, reason: str) -> None:
    assert _stopped_by(exc) == reason
    assert "-241" not in _stopped_by(exc)


def test_the_step_runner_reports_a_stopped_step_as_cancelled() -> None:
    from coreexec import job, step
    from coreexec.io_managers import InMemoryIOManager
    from coreexec.plan import ExecutionPlan
    from coreexec.step_runner import StepRun, run_step

    @step
    def stopped() -> None:
        raise SystemExit(-(256 - signal.SIGTERM))

    @job
    def stopped_job() -> None:
        stopped()

    events: list[Event] = []
    plan = ExecutionPlan.from_job(stopped_job)
    run = StepRun(
        run_id="r1",
        job=stopped_job,
        step=plan.step("stopped"),
        attempt=StepAttempt("stopped", 1, "a1"),
        run_config={},
        io_manager=InMemoryIOManager(),
        run_tags={},
    )
    with pytest.raises(SystemExit):
        run_step(run, events.append)
    failure = events[-1]
    assert failure.kind is EventKind.STEP_FAILURE
    assert failure.message == "cancelled: the step was stopped by SIGTERM"
    assert failure.data["failure_class"] == "cancelled"
    assert failure.data["error"] == {
        "type": "Cancelled",
        "message": "the step was stopped by SIGTERM",
        "traceback": "",
    }
