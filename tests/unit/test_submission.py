"""Submission, run handles, cancel and resume without a network: the run launcher here
coordinates each run in a thread of the test process, and handles read the run storage.
The same paths through Redis and Celery workers are in tests/integration."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from coreexec import RunHandle, RunStatus, submit_job
from coreexec.errors import (
    BrokerConnectionError,
    ConfigError,
    JobReferenceError,
    RequirementError,
    ResumeError,
    RunNotFoundError,
    RunWaitTimeout,
)
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.runs.cancel import request_cancel
from coreexec.runs.coordinate import coordinate_claimed_run, coordinate_launched_run, last_event_id
from coreexec.runs.create import create_run
from coreexec.runs.launcher import RUN_LAUNCHER_ENV, get_run_launcher
from coreexec.runs.resume import check_resumable, resume_run
from coreexec.runs.resume_prep import missing_step_events, open_attempts
from coreexec.transport.coordinator_heartbeat import CoordinatorInfo, _pid_exists
from coreexec.transport.redis_events import StreamEntry
from tests.jobs.submission_jobs import runs_of

THIS = "tests.unit.test_submission"
CHAIN = "tests.jobs.submission_jobs:chain_local"
FLAKY = "tests.jobs.submission_jobs:flaky_local"


class ThreadLauncher:
    """Coordinates every launched run in a thread of this process; no broker."""

    name = "thread"
    redis_url = None
    threads: ClassVar[list[threading.Thread]] = []

    def launch(self, run_id: str, *, resume: bool = False) -> None:
        thread = threading.Thread(
            target=coordinate_launched_run,
            args=(run_id,),
            kwargs={"instance": Instance.from_env(), "redis_url": None, "resume": resume},
        )
        ThreadLauncher.threads.append(thread)
        thread.start()


class IdleLauncher:
    """Accepts runs and starts nothing (a coordinator queue nobody consumes)."""

    name = "idle"

    def launch(self, run_id: str, *, resume: bool = False) -> None:
        return None


class DownLauncher:
    """Fails like a launcher whose broker is down."""

    name = "down"

    def launch(self, run_id: str, *, resume: bool = False) -> None:
        raise BrokerConnectionError(
            "cannot reach the broker at redis://127.0.0.1:1/0; start redis-server there",
            url="redis://127.0.0.1:1/0",
        )


not_a_launcher = 42


@pytest.fixture
def instance(coreexec_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Instance]:
    monkeypatch.setenv(RUN_LAUNCHER_ENV, f"{THIS}:ThreadLauncher")
    monkeypatch.delenv("COREEXEC_REDIS_URL", raising=False)
    yield Instance.from_env()
    for thread in ThreadLauncher.threads:
        thread.join(timeout=30)
    ThreadLauncher.threads.clear()


def _kinds(handle: RunHandle) -> list[EventKind]:
    return [event.kind for event in handle.events()]


# -- launcher selection -----------------------------------------------------------------


def test_launcher_is_chosen_by_env_reference(instance: Instance) -> None:
    launcher = get_run_launcher()
    assert isinstance(launcher, ThreadLauncher)
    assert isinstance(get_run_launcher(f"{THIS}:IdleLauncher"), IdleLauncher)


def test_unknown_launcher_names_the_entry_point_group_and_setting() -> None:
    with pytest.raises(ConfigError, match=r"no run launcher named 'nope'.*coreexec\.run_launchers"):
        get_run_launcher("nope")
    with pytest.raises(ConfigError, match="not a class or factory"):
        get_run_launcher(f"{THIS}:not_a_launcher")
    with pytest.raises(ConfigError, match="has no attribute 'Missing'"):
        get_run_launcher(f"{THIS}:Missing")
    with pytest.raises(ConfigError, match="lacks `name` and `launch"):
        get_run_launcher("pathlib:PurePath")


# -- submit and wait ----------------------------------------------------------------------


def test_submit_job_runs_the_job_elsewhere_and_wait_returns_its_status(
    instance: Instance,
) -> None:
    handle = submit_job(CHAIN, tags={"team": "a"})
    assert handle.wait(timeout=60) is RunStatus.SUCCESS
    assert handle.status() is RunStatus.SUCCESS
    record = handle.record()
    assert record.tags["team"] == "a" and record.job_reference == CHAIN
    assert _kinds(handle)[0] is EventKind.RUN_STARTING
    assert _kinds(handle)[-1] is EventKind.RUN_SUCCESS
    from coreexec.io_managers import OutputKey

    assert instance.io_manager().load(OutputKey(handle.run_id, "third", "result")) == 20
    assert [runs_of(key) for key in ("first", "second", "third")] == [1, 1, 1]


def test_follow_yields_every_stored_event_once_until_the_end(instance: Instance) -> None:
    handle = submit_job(CHAIN)
    followed = list(handle.follow(timeout=60))
    assert [e.kind for e in followed] == _kinds(handle)
    assert followed[-1].kind is EventKind.RUN_SUCCESS


def test_wait_times_out_naming_the_run(instance: Instance) -> None:
    handle = submit_job(CHAIN, launcher=IdleLauncher())
    started = time.monotonic()
    with pytest.raises(RunWaitTimeout, match=f"run {handle.run_id} did not end within 0.3s"):
        handle.wait(timeout=0.3)
    assert time.monotonic() - started < 5
    assert issubclass(RunWaitTimeout, TimeoutError)


def test_launch_failure_marks_the_stored_run_failed_with_the_reason(instance: Instance) -> None:
    with pytest.raises(BrokerConnectionError, match="start redis-server"):
        submit_job(CHAIN, launcher=DownLauncher())
    (record,) = instance.storage.list_runs()
    assert record.status is RunStatus.FAILURE
    (event,) = [event for _, event in instance.storage.events(record.run_id)]
    assert event.kind is EventKind.RUN_FAILURE
    assert "could not hand the run to the 'down' run launcher" in event.message
    assert "start redis-server" in event.message
    assert event.data["reason"] == "launch_failed"


def test_bad_input_is_refused_before_anything_is_stored(instance: Instance) -> None:
    with pytest.raises(JobReferenceError, match="must look like"):
        submit_job("no_colon_here")
    with pytest.raises(JobReferenceError, match="has no attribute 'nope'"):
        submit_job("tests.jobs.submission_jobs:nope")
    with pytest.raises(ConfigError, match=r"run_config\.steps\.nope"):
        submit_job(CHAIN, {"steps": {"nope": {"config": {}}}})
    with pytest.raises(RequirementError, match="ephemeral"):
        submit_job(CHAIN, instance=Instance.ephemeral_instance())
    assert instance.storage.list_runs() == []


# -- cancel -------------------------------------------------------------------------------


def test_cancel_of_a_queued_run_cancels_it_and_its_coordinator_does_nothing(
    instance: Instance,
) -> None:
    handle = submit_job(CHAIN, launcher=IdleLauncher())
    outcome = handle.cancel()
    assert (outcome.before, outcome.after) == (RunStatus.QUEUED, RunStatus.CANCELED)
    assert handle.wait(timeout=5) is RunStatus.CANCELED
    late = coordinate_launched_run(handle.run_id, instance=instance, redis_url=None)
    assert not late.coordinated and late.status is RunStatus.CANCELED
    assert runs_of("first") == 0


def test_cancel_requested_while_the_coordinator_starts_is_not_lost(instance: Instance) -> None:
    record = create_run(CHAIN, instance=instance)
    # A coordinator has claimed the run; the request lands before execute_run marks it
    # STARTED (which overwrites CANCELING).
    before_claim = last_event_id(instance.storage, record.run_id)
    assert instance.storage.set_status(record.run_id, RunStatus.STARTING)
    request_cancel(instance, record.run_id, None)
    outcome = coordinate_claimed_run(
        instance,
        record.run_id,
        None,
        claimed_after_id=before_claim,
        resume=False,
        owner="test",
        listeners=(),
        in_flight_timeout_s=1,
    )
    assert outcome.status is RunStatus.CANCELED
    assert runs_of("first") == 0


def test_cancel_of_an_unknown_or_finished_run(instance: Instance) -> None:
    with pytest.raises(RunNotFoundError):
        request_cancel(instance, "nope", None)
    handle = submit_job(CHAIN)
    handle.wait(timeout=60)
    outcome = handle.cancel()
    assert outcome.after is RunStatus.SUCCESS and "already ended" in outcome.message


# -- resume -------------------------------------------------------------------------------


def test_resume_of_a_failed_run_reruns_only_what_did_not_succeed(
    instance: Instance, coreexec_home: Path
) -> None:
    handle = submit_job(FLAKY)
    assert handle.wait(timeout=60) is RunStatus.FAILURE
    assert [runs_of(k) for k in ("first", "flaky", "last")] == [1, 1, 0]
    (coreexec_home / "flaky-ok").touch()
    outcome = resume_run(handle.run_id, instance=instance, redis_url=None)
    assert outcome.coordinated and outcome.status is RunStatus.SUCCESS
    assert [runs_of(k) for k in ("first", "flaky", "last")] == [1, 2, 1]
    starts = [e for e in handle.events() if e.kind is EventKind.RUN_START]
    assert [e.data["resumed"] for e in starts] == [False, True]


def test_resume_submitted_goes_through_the_launcher(
    instance: Instance, coreexec_home: Path
) -> None:
    handle = submit_job(FLAKY)
    assert handle.wait(timeout=60) is RunStatus.FAILURE
    (coreexec_home / "flaky-ok").touch()
    outcome = resume_run(handle.run_id, instance=instance, redis_url=None, submit=True)
    assert not outcome.coordinated and outcome.status is RunStatus.QUEUED
    assert handle.wait(timeout=60) is RunStatus.SUCCESS
    assert [runs_of(k) for k in ("first", "flaky", "last")] == [1, 2, 1]


def test_resume_refuses_what_it_cannot_prove_safe(instance: Instance) -> None:
    done = submit_job(CHAIN)
    done.wait(timeout=60)
    with pytest.raises(ResumeError, match="already succeeded"):
        check_resumable(instance, done.run_id, None)
    record = create_run(CHAIN, instance=instance)
    instance.storage.set_status(record.run_id, RunStatus.STARTED)
    with pytest.raises(ResumeError, match=r"no Redis is configured.*--force"):
        check_resumable(instance, record.run_id, None)
    assert check_resumable(instance, record.run_id, None, force=True).run_id == record.run_id
    with pytest.raises(RunNotFoundError):
        check_resumable(instance, "nope", None)


# -- pure helpers -------------------------------------------------------------------------


def _event(kind: EventKind, step: str | None, attempt_id: str | None, ts: float = 1.0) -> Event:
    return Event(kind=kind, run_id="r", timestamp=ts, step_key=step, attempt_id=attempt_id)


def test_open_attempts_are_queued_without_an_ending() -> None:
    events = [
        _event(EventKind.STEP_QUEUED, "a", "a1"),
        _event(EventKind.STEP_SUCCESS, "a", "a1"),
        _event(EventKind.STEP_QUEUED, "b", "b1"),
        _event(EventKind.STEP_START, "b", "b1"),
        _event(EventKind.STEP_QUEUED, "c", "c1"),
        _event(EventKind.STEP_RETRY_REQUESTED, "c", "c1"),
    ]
    assert [a.attempt_id for a in open_attempts(events)] == ["b1"]


def test_missing_step_events_are_the_streams_step_events_not_stored() -> None:
    stored = [_event(EventKind.STEP_START, "b", "b1", ts=2.0)]
    entries = [
        StreamEntry("1-0", event=_event(EventKind.STEP_START, "b", "b1", ts=2.0)),
        StreamEntry("2-0", wake="slot"),
        StreamEntry("3-0", event=_event(EventKind.STEP_HEARTBEAT, "b", "b1", ts=3.0)),
        StreamEntry("4-0", event=_event(EventKind.STEP_SUCCESS, "b", "b1", ts=4.0)),
        StreamEntry("5-0", event=_event(EventKind.RUN_SUCCESS, None, None, ts=5.0)),
        StreamEntry("6-0"),
        StreamEntry("7-0", event=_event(EventKind.STEP_SUCCESS, "b", "b1", ts=4.0)),
    ]
    assert [(e.kind, e.timestamp) for e in missing_step_events(stored, entries)] == [
        (EventKind.STEP_SUCCESS, 4.0)
    ]


def test_a_zombie_or_missing_pid_is_a_dead_coordinator() -> None:
    assert _pid_exists(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Until it is reaped the exited child is a zombie: dead, though its pid exists.
        deadline = time.monotonic() + 30
        while _pid_exists(child.pid):
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        assert Path(f"/proc/{child.pid}").exists()
    finally:
        child.wait()
    assert not _pid_exists(child.pid)


def test_coordinator_info_round_trips_and_refuses_garbage() -> None:
    info = CoordinatorInfo(host="h", pid=12, started_at=1.5, owner="coord@h")
    assert CoordinatorInfo.from_json(info.to_json()) == info
    assert CoordinatorInfo.from_json(b"not json") is None
    assert CoordinatorInfo.from_json('{"host": "h"}') is None
    assert info.describe() == "coord@h (pid 12 on h)"
