"""Run storage on a real PostgreSQL server: the contract tests of tests/unit/test_storage.py
over SQLite and PostgreSQL, then what only PostgreSQL promises (migrations, many writers
on many connections, masked passwords)."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from coreexec import Event, EventKind
from coreexec.errors import ConfigError, StorageError
from coreexec.instance import Instance
from coreexec.settings import Settings
from coreexec.storage import RunStatus, RunStorage, SqliteRunStorage
from coreexec.storage.from_url import storage_from_url
from coreexec.storage.postgres import PostgresRunStorage, latest_schema_version
from tests.support.postgres import PASSWORD
from tests.unit.test_storage import (
    _record,
    test_a_resumed_run_keeps_its_first_start_and_ends_once_more,
    test_events_are_ordered_and_paged,
    test_runs_round_trip_and_list_newest_first,
    test_status_compare_and_set,
)

__all__ = [
    "test_a_resumed_run_keeps_its_first_start_and_ends_once_more",
    "test_events_are_ordered_and_paged",
    "test_runs_round_trip_and_list_newest_first",
    "test_status_compare_and_set",
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunStorage]:
    if request.param == "sqlite":
        made: RunStorage = SqliteRunStorage(tmp_path / "r.db")
    else:
        made = storage_from_url(request.getfixturevalue("postgres_url"), tmp_path)
    yield made
    made.close()


pg = pytest.mark.postgres


@pg
def test_the_url_chooses_postgres_and_the_schema_is_versioned(
    postgres_url: str, tmp_path: Path
) -> None:
    instance = Instance.from_settings(Settings(home=str(tmp_path), storage_url=postgres_url))
    assert isinstance(instance.storage, PostgresRunStorage)
    instance.storage.add_run(_record("a"))
    # A second process opening the same database finds the schema made and reuses it.
    again = PostgresRunStorage(postgres_url)
    assert again.get_run("a").run_config == {"steps": {}}
    with psycopg.connect(postgres_url) as conn:
        versions = conn.execute("SELECT version, name FROM coreexec_schema_version").fetchall()
    assert versions == [(1, "runs_and_events")] and latest_schema_version() == 1
    again.close()
    instance.storage.close()


@pg
def test_a_schema_newer_than_the_code_is_refused(postgres_url: str) -> None:
    PostgresRunStorage(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO coreexec_schema_version VALUES (99, 'from the future', 0)")
    with pytest.raises(StorageError, match="schema version 99, newer than this coreexec") as err:
        PostgresRunStorage(postgres_url)
    assert PASSWORD not in str(err.value) and "***" in str(err.value)


@pg
def test_concurrent_openers_migrate_once(postgres_url: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_one() -> None:
        start.wait()
        try:
            PostgresRunStorage(postgres_url).close()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM coreexec_schema_version").fetchone() == (1,)


def _append_from_process(url: str, run_id: str, writer: int, count: int) -> None:
    storage = PostgresRunStorage(url, pool_size=2)
    for index in range(count):
        event = Event(EventKind.STEP_LOG, run_id, float(index), f"w{writer}", message=str(index))
        storage.append_events(run_id, [event, event])
    storage.close()


@pg
def test_many_writing_processes_lose_nothing_and_ids_never_repeat(postgres_url: str) -> None:
    storage = PostgresRunStorage(postgres_url)
    storage.add_run(_record("a"))
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_append_from_process, args=(postgres_url, "a", w, 50))
        for w in range(4)
    ]
    for worker in workers:
        worker.start()
    # A reader following the log meanwhile never sees an id below one it already saw.
    seen: list[int] = []
    while any(worker.is_alive() for worker in workers):
        seen += [i for i, _ in storage.events("a", after=seen[-1] if seen else 0)]
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    seen += [i for i, _ in storage.events("a", after=seen[-1] if seen else 0)]
    stored = storage.events("a")
    assert len(stored) == 400 and seen == [i for i, _ in stored]
    assert len(set(seen)) == 400 and seen == sorted(seen)
    for writer in range(4):
        mine = [int(e.message) for _, e in stored if e.step_key == f"w{writer}"]
        assert mine == sorted(mine) and len(mine) == 100
    storage.close()


@pg
def test_compare_and_set_has_one_winner_among_racing_threads(postgres_url: str) -> None:
    storage = PostgresRunStorage(postgres_url, pool_size=8)
    storage.add_run(_record("a"))
    start = threading.Barrier(8)
    won: list[bool] = []

    def race() -> None:
        start.wait()
        won.append(storage.set_status("a", RunStatus.STARTED, expected={RunStatus.QUEUED}))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * 7 + [True]
    storage.close()


@pg
def test_a_wrong_password_is_named_without_showing_it(postgres_url: str) -> None:
    wrong = postgres_url.replace(PASSWORD, "not-the-" + PASSWORD)
    with pytest.raises(StorageError, match="cannot connect to the run storage") as err:
        PostgresRunStorage(wrong)
    message = str(err.value)
    assert PASSWORD not in message and "postgresql://coreexec:***@127.0.0.1" in message
    assert "password authentication failed" in message


def test_an_unknown_storage_scheme_is_refused_with_the_password_masked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown scheme") as err:
        storage_from_url("mysql://root:hunter2@db/runs", tmp_path)
    assert "hunter2" not in str(err.value) and "mysql://root:***@db/runs" in str(err.value)


@pg
def test_reads_go_on_after_the_server_closed_the_pooled_connections(postgres_url: str) -> None:
    storage = PostgresRunStorage(postgres_url, pool_size=4)
    storage.add_run(_record("a"))
    start = threading.Barrier(4)

    def read() -> None:
        start.wait()
        storage.get_run("a")

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert ended is not None and ended[0] >= 1
    assert storage.get_run("a").run_id == "a"
    assert storage.set_status("a", RunStatus.STARTED)
    storage.close()
