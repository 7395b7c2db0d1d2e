"""Run storage contract over the in-memory and SQLite implementations."""

from __future__ import annotations

import json
import multiprocessing
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coreexec import Event, EventKind, Instance, execute_job
from coreexec.errors import RunNotFoundError
from coreexec.storage import InMemoryRunStorage, RunRecord, RunStatus, RunStorage, SqliteRunStorage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunStorage]:
    made: RunStorage = (
        InMemoryRunStorage() if request.param == "memory" else SqliteRunStorage(tmp_path / "r.db")
    )
    yield made
    made.close()


def _record(run_id: str, created_at: float = 1.0) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        job_name="job",
        status=RunStatus.QUEUED,
        job_reference="pkg:job",
        tags={"team": "a"},
        run_config={"steps": {}},
        created_at=created_at,
        updated_at=created_at,
    )


def test_runs_round_trip_and_list_newest_first(storage: RunStorage) -> None:
    storage.add_run(_record("a", 1.0))
    storage.add_run(_record("b", 2.0))
    assert storage.get_run("a").tags == {"team": "a"}
    assert [r.run_id for r in storage.list_runs()] == ["b", "a"]
    assert [r.run_id for r in storage.list_runs(limit=1)] == ["b"]
    with pytest.raises(RunNotFoundError, match="coreexec runs ls"):
        storage.get_run("zzz")


def test_status_compare_and_set(storage: RunStorage) -> None:
    storage.add_run(_record("a"))
    assert storage.set_status("a", RunStatus.STARTED, at=5.0)
    assert storage.get_run("a").started_at == 5.0
    assert not storage.set_status("a", RunStatus.SUCCESS, expected={RunStatus.QUEUED})
    assert storage.set_status("a", RunStatus.SUCCESS, expected={RunStatus.STARTED}, at=9.0)
    finished = storage.get_run("a")
    assert finished.status is RunStatus.SUCCESS and finished.ended_at == 9.0
    assert [r.run_id for r in storage.list_runs(statuses={RunStatus.SUCCESS})] == ["a"]
    with pytest.raises(RunNotFoundError):
        storage.set_status("nope", RunStatus.FAILURE)


def test_a_resumed_run_keeps_its_first_start_and_ends_once_more(storage: RunStorage) -> None:
    storage.add_run(_record("a"))
    storage.set_status("a", RunStatus.STARTED, at=5.0)
    storage.set_status("a", RunStatus.FAILURE, at=9.0)
    storage.set_status("a", RunStatus.STARTED, at=20.0)  # resumed
    running = storage.get_run("a")
    assert (running.started_at, running.ended_at) == (5.0, None)
    storage.set_status("a", RunStatus.SUCCESS, at=30.0)
    ended = storage.get_run("a")
    assert (ended.started_at, ended.ended_at) == (5.0, 30.0)


def test_a_new_run_storage_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    SqliteRunStorage(home / "runs.db").close()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for path in home.iterdir():  # runs.db and SQLite's WAL files
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_events_are_ordered_and_paged(storage: RunStorage) -> None:
    storage.add_run(_record("a"))
    events = [
        Event(EventKind.STEP_LOG, "a", float(i), "s", 1, "x", f"line {i}", {"i": i})
        for i in range(5)
    ]
    storage.append_events("a", events[:2])
    storage.append_events("a", events[2:])
    stored = storage.events("a")
    assert [e for _, e in stored] == events
    ids = [i for i, _ in stored]
    assert ids == sorted(ids)
    assert [e.message for _, e in storage.events("a", after=ids[2])] == ["line 3", "line 4"]
    assert len(storage.events("a", limit=2)) == 2


def _append_many(path: str, run_id: str, count: int) -> None:
    storage = SqliteRunStorage(path)
    for index in range(count):
        storage.append_events(
            run_id, [Event(EventKind.STEP_LOG, run_id, float(index), "s", message=str(index))]
        )


def test_sqlite_is_safe_with_several_writing_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    SqliteRunStorage(path).add_run(_record("a"))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(path, "a", 100)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(SqliteRunStorage(path).events("a")) == 400


def test_events_are_readable_from_another_process_after_the_run(tmp_path: Path) -> None:
    result = execute_job("tests.jobs.core_jobs:scale_job", instance=Instance.at(tmp_path))
    reader = (
        "import json, sys\n"
        "from coreexec import Instance\n"
        "storage = Instance.at(sys.argv[1]).storage\n"
        "record = storage.get_run(sys.argv[2])\n"
        "print(json.dumps({'status': record.status.value,"
        " 'kinds': [e.kind.value for _, e in storage.events(sys.argv[2])],"
        " 'logs': [e.message for _, e in storage.events(sys.argv[2])"
        " if e.kind.value == 'STEP_LOG']}))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", reader, str(tmp_path), result.run_id],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    seen = json.loads(output)
    assert seen["status"] == "SUCCESS"
    assert seen["kinds"][0] == "RUN_STARTING" and seen["kinds"][-1] == "RUN_SUCCESS"
    assert seen["kinds"].count("STEP_SUCCESS") == 3
    assert seen["logs"] == ["scaling by 2"]


def test_sqlite_opened_by_many_threads_at_once_on_a_new_file(tmp_path: Path) -> None:
    import threading

    for trial in range(20):
        path = tmp_path / f"fresh-{trial}.db"
        errors: list[BaseException] = []
        start = threading.Barrier(4)

        def open_and_write(
            path: Path = path,
            start: threading.Barrier = start,
            errors: list[BaseException] = errors,
        ) -> None:
            start.wait()
            try:
                storage = SqliteRunStorage(path)
                storage.add_run(_record(f"run-{threading.get_ident()}"))
            except BaseException as exc:  # collected for the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=open_and_write) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(SqliteRunStorage(path).list_runs()) == 4
