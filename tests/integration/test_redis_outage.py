"""Redis outages against real processes: ``redis-server`` killed with -9 and started
again on the same port (with and without persistence) while a run is in flight on real
coordinator and step workers.

An outage shorter than the tolerance fails nothing: the workers stay up, the step that
ended while Redis was down reports once it is back, the attempts that were queued are
published again, and every step runs exactly once; the tag-limit slot a running step
holds is taken back by its coordinator (lost with the data, or lapsed in an outage longer
than the lease TTL), so nobody new is granted it. A longer one fails the run, naming
the tolerance, and a resume finishes it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from celery_app.app import make_app
from celery_app.dispatcher import CeleryDispatcher
from celery_app.queues import DEFAULT_QUEUE, HIGH_QUEUE, RUNS_QUEUE, STEP_QUEUES
from celery_app.run_launcher import CeleryRunLauncher
from celery_app.settings import CelerySettings
from coreexec import RunStatus, execute_job, submit_job
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.limits import RedisTagLimiter, SlotRequest, SlotSpec
from coreexec.runs.handle import RunHandle
from tests.jobs.celery_jobs import open_gate
from tests.jobs.submission_jobs import gate_path, pid_path, runs_of, wait_until
from tests.support.processes import REPO_ROOT, CeleryWorkerProcess, RedisServerProcess, child_env

OUTAGE = "tests.jobs.outage_jobs:outage"
SHORT_TOLERANCE = "tests.jobs.outage_jobs:outage_short_tolerance"
CHAIN = "tests.jobs.submission_jobs:chain"
OUTAGE_S = 3.0
"""How long Redis stays down in the short outage (the scenario, not a wait)."""
STEPS = ("root", "hold", "part_0", "part_1", "part_2", "join")
HOLDER = "tests.jobs.limit_jobs:orphaned_writer"
WAREHOUSE = SlotSpec(name="database=warehouse", limit=1, rule="database=warehouse limit 1")
WorkerFactory = Callable[..., CeleryWorkerProcess]


class FlakyRedis:
    """A redis-server that a test kills with -9 and starts again on the same port."""

    def __init__(self, log_dir: Path, *, persistent: bool) -> None:
        self.log_dir = log_dir
        self.persistent = persistent
        self.server = RedisServerProcess(log_dir=log_dir, persistent=persistent).start()
        self.port = self.server.port
        self.url = self.server.url

    def kill(self) -> None:
        self.server.kill9()

    def restart(self) -> None:
        self.server.stop()
        self.server = RedisServerProcess(
            port=self.port, log_dir=self.log_dir, persistent=self.persistent
        ).start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def flaky_redis(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    coreexec_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[FlakyRedis]:
    persistent = bool(getattr(request, "param", False))
    redis = FlakyRedis(tmp_path / "flaky-redis", persistent=persistent)
    monkeypatch.setenv("COREEXEC_BROKER_URL", redis.url)
    monkeypatch.setenv("COREEXEC_REDIS_URL", redis.url)
    monkeypatch.delenv("COREEXEC_RESULT_BACKEND", raising=False)
    monkeypatch.delenv("COREEXEC_RUN_LAUNCHER", raising=False)
    try:
        yield redis
    finally:
        redis.stop()


def _launcher() -> CeleryRunLauncher:
    return CeleryRunLauncher(make_app(CelerySettings.from_env(), set_as_current=False))


def _events(instance: Instance, run_id: str) -> list[Event]:
    return [event for _, event in instance.storage.events(run_id)]


def _queued(instance: Instance, run_id: str) -> set[str]:
    events = _events(instance, run_id)
    return {e.step_key or "" for e in events if e.kind is EventKind.STEP_QUEUED}


def _start_in_flight(
    job: str, instance: Instance, celery_worker_factory: WorkerFactory
) -> tuple[RunHandle, CeleryWorkerProcess, CeleryWorkerProcess]:
    """A coordinator worker, a worker of coreexec.high with a free process, and a run
    whose ``hold`` is running while its parts wait on coreexec.default (no consumer)."""
    coordinator = celery_worker_factory(queues=[RUNS_QUEUE], concurrency=2, hostname="coord")
    high = celery_worker_factory(queues=[HIGH_QUEUE], concurrency=2, hostname="high")
    handle = submit_job(job, instance=instance, launcher=_launcher())
    wait_until(pid_path("hold").exists, 60, "step hold to start")
    parts = {"part_0", "part_1", "part_2"}
    wait_until(lambda: parts <= _queued(instance, handle.run_id), 30, "the parts to be queued")
    return handle, coordinator, high


@pytest.mark.parametrize(
    "flaky_redis", [False, True], ids=["no-persistence", "appendfsync-always"], indirect=True
)
def test_a_run_rides_out_a_short_redis_outage(
    flaky_redis: FlakyRedis, celery_worker_factory: WorkerFactory
) -> None:
    instance = Instance.from_env()
    handle, coordinator, high = _start_in_flight(OUTAGE, instance, celery_worker_factory)

    flaky_redis.kill()
    # hold ends while Redis is down: its worker must keep the events until Redis is back.
    gate_path("hold").parent.mkdir(parents=True, exist_ok=True)
    gate_path("hold").touch()
    wait_until(lambda: runs_of("hold") == 1, 30, "step hold to end")
    time.sleep(OUTAGE_S)
    flaky_redis.restart()
    celery_worker_factory(queues=[DEFAULT_QUEUE], concurrency=2, hostname="default")

    assert handle.wait(timeout=120) is RunStatus.SUCCESS, _events(instance, handle.run_id)
    assert {key: runs_of(key) for key in STEPS} == dict.fromkeys(STEPS, 1)
    assert coordinator.is_running(), coordinator.log_tail()
    assert high.is_running(), high.log_tail()
    later = submit_job(CHAIN, instance=instance, launcher=_launcher())
    assert later.wait(timeout=90) is RunStatus.SUCCESS


def test_an_outage_longer_than_the_tolerance_fails_the_run_and_resume_finishes_it(
    flaky_redis: FlakyRedis, celery_worker_factory: WorkerFactory
) -> None:
    instance = Instance.from_env()
    handle, coordinator, _ = _start_in_flight(SHORT_TOLERANCE, instance, celery_worker_factory)

    flaky_redis.kill()
    wait_until(lambda: handle.status() is RunStatus.FAILURE, 60, "the run to fail")
    failure = [e for e in _events(instance, handle.run_id) if e.kind is EventKind.RUN_FAILURE]
    assert "redis_outage_tolerance_s=1" in failure[-1].message
    flaky_redis.restart()
    gate_path("hold").parent.mkdir(parents=True, exist_ok=True)
    gate_path("hold").touch()
    celery_worker_factory(queues=[DEFAULT_QUEUE], concurrency=2, hostname="default")

    resumed = subprocess.run(
        [sys.executable, "-m", "coreexec", "runs", "resume", handle.run_id],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
        timeout=180,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert handle.status() is RunStatus.SUCCESS
    assert {key: runs_of(key) for key in STEPS} == dict.fromkeys(STEPS, 1)
    assert coordinator.is_running(), coordinator.log_tail()


def _holder_config(lease_ttl_s: float | None) -> dict[str, object]:
    config: dict[str, object] = {
        "heartbeat_interval_s": 0.5,
        "heartbeat_timeout_s": 3.0,
        "tag_concurrency_limits": [{"key": "database", "value": "warehouse", "limit": 1}],
    }
    if lease_ttl_s is not None:
        config["slot_lease_ttl_s"] = lease_ttl_s
    return {"execution": {"config": config}}


def _held_by(limiter: RedisTagLimiter) -> list[str]:
    return [h.run_id for state in limiter.slots() for h in state.holders]


@pytest.mark.parametrize(
    ("flaky_redis", "lease_ttl_s"),
    [(False, None), (True, 1.0)],
    ids=["lost-with-the-data", "lapsed-in-the-outage"],
    indirect=["flaky_redis"],
)
def test_a_slot_held_through_an_outage_is_taken_back_and_not_granted_again(
    flaky_redis: FlakyRedis, celery_worker_factory: WorkerFactory, lease_ttl_s: float | None
) -> None:
    # Without persistence the restarted Redis has no lease; with it, the 1 s lease lapsed
    # during the 3 s outage. Either way the step still runs and holds the one unit.
    celery_worker_factory(queues=[RUNS_QUEUE], concurrency=2, hostname="coord")
    celery_worker_factory(queues=STEP_QUEUES, concurrency=2, hostname="steps")
    instance = Instance.from_env()
    handle = submit_job(
        HOLDER, _holder_config(lease_ttl_s), instance=instance, launcher=_launcher()
    )
    wait_until(
        lambda: any(e.kind is EventKind.STEP_START for e in _events(instance, handle.run_id)),
        60,
        "the slot holder to start",
    )
    flaky_redis.kill()
    time.sleep(OUTAGE_S)
    flaky_redis.restart()

    limiter = RedisTagLimiter.from_url(flaky_redis.url)
    newcomer = SlotRequest(
        run_id="newcomer",
        step_key="write",
        lease_id="lease-newcomer",
        priority=0,
        slots=(WAREHOUSE,),
    )
    try:
        wait_until(lambda: _held_by(limiter) == [handle.run_id], 30, "the slot to be taken back")
        assert limiter.try_acquire(newcomer).lease is None
        limiter.withdraw(newcomer)
        open_gate(handle.run_id, "release")
        assert handle.wait(timeout=90) is RunStatus.SUCCESS, _events(instance, handle.run_id)
        assert limiter.slots() == ()
    finally:
        limiter.close()


@pytest.mark.parametrize(
    "flaky_redis", [False, True], ids=["no-persistence", "appendfsync-always"], indirect=True
)
def test_a_publish_that_meets_an_outage_is_sent_once_redis_is_back(
    flaky_redis: FlakyRedis,
    celery_worker_factory: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Redis dies right after the coordinator heard ``first`` end and before it publishes
    # ``second``: the one window the stream read's retries do not cover.
    celery_worker_factory(queues=STEP_QUEUES, concurrency=2, hostname="steps")
    publish = CeleryDispatcher._publish
    publishes: list[int] = []
    restart = threading.Timer(OUTAGE_S, flaky_redis.restart)

    def publish_after_a_kill(self: CeleryDispatcher, batch: Sequence[object]) -> None:
        publishes.append(len(batch))
        if len(publishes) == 2:
            flaky_redis.kill()
            restart.start()
        publish(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(CeleryDispatcher, "_publish", publish_after_a_kill)
    try:
        result = execute_job(CHAIN, instance=Instance.from_env())
    finally:
        restart.join()
    assert result.success, [e.message for e in result.events if e.message]
    assert {key: runs_of(key) for key in ("first", "second", "third")} == {
        "first": 1,
        "second": 1,
        "third": 1,
    }
