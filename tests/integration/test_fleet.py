"""A fleet without a shared disk: real Celery workers, PostgreSQL run storage and outputs
in a local S3 server, each process with its own empty ``$COREEXEC_HOME``.

What a machine of the fleet shares with the others is only what its environment names
(COREEXEC_STORAGE_URL, COREEXEC_IO_URL, the broker and Redis, AWS_* credentials): the
same variables a container or pod gets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_app.app import make_app
from celery_app.queues import RUNS_QUEUE, STEP_QUEUES
from celery_app.run_launcher import CeleryRunLauncher
from celery_app.settings import CelerySettings
from coreexec import RunStatus, submit_job
from coreexec.events import EventKind
from coreexec.instance import Instance
from coreexec.io_managers import OutputKey
from coreexec.redis_clients import redis_client
from coreexec.storage.postgres import PostgresRunStorage
from coreexec.transport import keys
from coreexec.transport.coordinator_heartbeat import CoordinatorInfo
from coreexec.transport.redis_events import RedisEventStream
from tests.jobs.fleet_jobs import WIDE_STEPS, key
from tests.jobs.submission_jobs import wait_until
from tests.support.postgres import PASSWORD
from tests.support.processes import REPO_ROOT, CeleryWorkerProcess, child_env, pid_alive

pytestmark = pytest.mark.postgres
WorkerFactory = Callable[..., CeleryWorkerProcess]
EXPECTED_TOTAL = sum(v * v + offset for offset in range(3) for v in (1, 2, 3))


@pytest.fixture
def fleet(
    postgres_url: str,
    s3_env: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Path]:
    """The shared URLs exported; one empty home per process, this one's included."""
    homes = {name: tmp_path / f"home-{name}" for name in ("test", "coordinator", "steps")}
    for home in homes.values():
        home.mkdir()
    monkeypatch.setenv("COREEXEC_HOME", str(homes["test"]))
    monkeypatch.setenv("COREEXEC_STORAGE_URL", postgres_url)
    monkeypatch.setenv("COREEXEC_IO_URL", s3_env)
    monkeypatch.setenv("COREEXEC_BROKER_URL", redis_url)
    monkeypatch.setenv("COREEXEC_REDIS_URL", redis_url)
    monkeypatch.delenv("COREEXEC_RESULT_BACKEND", raising=False)
    monkeypatch.delenv("COREEXEC_RUN_LAUNCHER", raising=False)
    return homes


@pytest.fixture
def launcher(fleet: dict[str, Path]) -> CeleryRunLauncher:
    return CeleryRunLauncher(make_app(CelerySettings.from_env(), set_as_current=False))


def _start_fleet(
    factory: WorkerFactory,
    homes: dict[str, Path],
    *,
    coordinators: int = 1,
    steps: int = 2,
    steps_env: dict[str, str] | None = None,
) -> tuple[CeleryWorkerProcess, CeleryWorkerProcess]:
    coordinator = factory(
        queues=[RUNS_QUEUE],
        concurrency=coordinators,
        hostname="coord",
        env={"COREEXEC_HOME": str(homes["coordinator"])},
    )
    workers = factory(
        queues=list(STEP_QUEUES),
        concurrency=steps,
        hostname="steps",
        env={"COREEXEC_HOME": str(homes["steps"]), **(steps_env or {})},
    )
    return coordinator, workers


def _assert_homes_unused(homes: dict[str, Path]) -> None:
    for name, home in homes.items():
        assert list(home.iterdir()) == [], f"the {name} process wrote to its home"


def _marks(run_id: str, what: str, steps: list[str]) -> list[str | None]:
    with redis_client(os.environ["COREEXEC_REDIS_URL"]) as client:
        return [
            raw.decode() if raw is not None else None
            for raw in (client.get(key(run_id, what, step)) for step in steps)
        ]


def test_a_run_across_workers_shares_only_postgres_and_the_object_store(
    fleet: dict[str, Path], launcher: CeleryRunLauncher, celery_worker_factory: WorkerFactory
) -> None:
    # The step workers are not told the outputs URL: they learn it from the run.
    processes = _start_fleet(celery_worker_factory, fleet, steps_env={"COREEXEC_IO_URL": ""})
    handle = submit_job("tests.jobs.fleet_jobs:fanout", launcher=launcher)
    assert handle.wait(timeout=120) is RunStatus.SUCCESS
    instance = Instance.from_env()
    assert isinstance(instance.storage, PostgresRunStorage)
    assert instance.io_manager().load(OutputKey(handle.run_id, "total", "result")) == (
        EXPECTED_TOTAL
    )
    steps = ["source", "square_0", "square_1", "square_2", "total"]
    assert _marks(handle.run_id, "home", steps) == [str(fleet["steps"])] * 5
    assert _marks(handle.run_id, "runs", steps) == ["1"] * 5
    _assert_homes_unused(fleet)
    # The storage password shows in no event and no worker log.
    shown = json.dumps([event.to_dict() for event in handle.events()], default=str)
    assert PASSWORD not in shown and "@127.0.0.1" not in shown
    assert all(PASSWORD not in process.read_log() for process in processes)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coreexec", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
        timeout=180,
        check=False,
    )


def test_resume_after_the_coordinator_is_killed_with_no_shared_home(
    fleet: dict[str, Path], launcher: CeleryRunLauncher, celery_worker_factory: WorkerFactory
) -> None:
    coordinator, _ = _start_fleet(celery_worker_factory, fleet)
    handle = submit_job("tests.jobs.fleet_jobs:gated_fanout", launcher=launcher)
    run_id = handle.run_id
    wait_until(lambda: _marks(run_id, "pid", ["gated"]) != [None], 60, "gated to start")
    with redis_client(os.environ["COREEXEC_REDIS_URL"]) as client:
        raw = client.get(keys.run_coordinator(run_id))
        assert raw is not None
        info = CoordinatorInfo.from_json(raw)
        assert info is not None
        coordinator.kill9()
        os.kill(info.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(info.pid), 10, "the coordinator to die")
        # The step ends while no coordinator listens; a resume from this machine, whose
        # home holds nothing, finds the run in PostgreSQL and its inputs in S3.
        client.set(key(run_id, "gate"), 1)
    resumed = _cli("runs", "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.rstrip().endswith(f"run {run_id} resumed: SUCCESS")
    steps = ["source", "gated", "square_0", "square_1", "total"]
    assert _marks(run_id, "runs", steps) == ["1"] * 5
    expected = sum((v + 100) ** 2 + offset for offset in range(2) for v in (1, 2, 3))
    output = Instance.from_env().io_manager().load(OutputKey(run_id, "total", "result"))
    assert output == expected
    starts = [e for e in handle.events() if e.kind is EventKind.RUN_START]
    assert [e.data["resumed"] for e in starts] == [False, True]
    _assert_homes_unused(fleet)


RUNS = 20


def _check_run_events(instance: Instance, run_id: str, failed: bool) -> list[int]:
    stored = instance.storage.events(run_id)
    ids = [event_id for event_id, _ in stored]
    assert ids == sorted(set(ids)), f"run {run_id}: ids out of order or repeated"
    events = [event for _, event in stored]
    kinds = Counter(event.kind for event in events)
    assert kinds[EventKind.RUN_START] == 1 and kinds[EventKind.RUN_STARTING] == 1
    assert kinds[EventKind.RUN_FAILURE if failed else EventKind.RUN_SUCCESS] == 1
    per_step = Counter((event.kind, event.step_key) for event in events if event.step_key)
    ended = {k for (kind, k) in per_step if kind is EventKind.STEP_SUCCESS}
    assert all(count == 1 for count in per_step.values()), per_step.most_common(3)
    if failed:
        assert per_step[(EventKind.STEP_FAILURE, "leaf_7")] == 1
        assert per_step[(EventKind.STEP_SKIPPED, "gather")] == 1
        assert len(ended) == WIDE_STEPS
    else:
        assert len(ended) == WIDE_STEPS + 2
    # Every step event the workers sent on the run's stream is stored exactly once.
    with redis_client(os.environ["COREEXEC_REDIS_URL"]) as client:
        sent = [entry.event for entry in RedisEventStream(client, run_id).history()]
    step_kinds = {EventKind.STEP_START, EventKind.STEP_SUCCESS, EventKind.STEP_FAILURE}
    from_workers = Counter(
        (e.kind, e.step_key, e.attempt_id) for e in sent if e is not None and e.kind in step_kinds
    )
    stored_from_workers = Counter(
        (e.kind, e.step_key, e.attempt_id) for e in events if e.kind in step_kinds
    )
    assert stored_from_workers == from_workers
    assert sum(from_workers.values()) == 2 * len(ended | {"leaf_7"} if failed else ended)
    return ids


@pytest.mark.timeout(300)
def test_twenty_concurrent_runs_of_fifty_steps_lose_and_double_nothing(
    fleet: dict[str, Path], launcher: CeleryRunLauncher, celery_worker_factory: WorkerFactory
) -> None:
    _start_fleet(celery_worker_factory, fleet, coordinators=RUNS, steps=4)
    handles = []
    for index in range(RUNS):
        config = {"steps": {"leaf_7": {"config": {"fail": True}}}} if index % 4 == 3 else None
        handles.append(submit_job("tests.jobs.fleet_jobs:wide", config, launcher=launcher))
    statuses: dict[str, RunStatus] = {}

    def wait(handle_index: int) -> None:
        handle = handles[handle_index]
        statuses[handle.run_id] = handle.wait(timeout=240)

    waiters = [threading.Thread(target=wait, args=(index,)) for index in range(RUNS)]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join()
    instance = Instance.from_env()
    all_ids: list[int] = []
    for index, handle in enumerate(handles):
        failed = index % 4 == 3
        expected = RunStatus.FAILURE if failed else RunStatus.SUCCESS
        assert statuses[handle.run_id] is expected, f"run {index}: {statuses[handle.run_id]}"
        assert instance.storage.get_run(handle.run_id).status is expected
        all_ids += _check_run_events(instance, handle.run_id, failed)
        if not failed:
            output = instance.io_manager().load(OutputKey(handle.run_id, "gather", "result"))
            assert output == 2 * WIDE_STEPS
    assert len(all_ids) == len(set(all_ids)), "an event id was given twice"
    _assert_homes_unused(fleet)
