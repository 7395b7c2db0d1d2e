"""A kill storm against real workers: three step workers, one killed with -9 (its whole
process group) every 3 to 6 seconds and replaced, while runs of 30 steps with retries
go through (ten at least, and on until four kills have struck). Every run succeeds,
every step succeeds exactly once, and no attempt ever runs twice (a kill costs a retry,
never a double execution)."""

from __future__ import annotations

import os
import random
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_app.queues import STEP_QUEUES
from coreexec import execute_job
from coreexec.events import EventKind
from tests.jobs.storm_jobs import WIDTH, marks_of
from tests.support.processes import CeleryWorkerProcess

STORM = "tests.jobs.storm_jobs:storm"
RUNS = 10
MIN_KILLS = 4
MAX_RUNS = 40
WORKERS = 3
WorkerFactory = Callable[..., CeleryWorkerProcess]


class KillStorm:
    """Kills a random worker's process group every 3-6 s and starts a replacement."""

    def __init__(self, start_worker: Callable[[], CeleryWorkerProcess]) -> None:
        self.start_worker = start_worker
        self.workers = [start_worker() for _ in range(WORKERS)]
        self.kills = 0
        self._stop = threading.Event()
        self._random = random.Random(11)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.error: BaseException | None = None

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self._random.uniform(3.0, 6.0)):
                victim = self.workers.pop(self._random.randrange(len(self.workers)))
                os.killpg(victim.pgid, signal.SIGKILL)
                self.kills += 1
                self.workers.append(self.start_worker())
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> KillStorm:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.timeout(420)
def test_runs_succeed_through_a_kill_storm_and_no_attempt_runs_twice(
    env: Path, celery_worker_factory: WorkerFactory
) -> None:
    def start_worker() -> CeleryWorkerProcess:
        return celery_worker_factory(
            queues=list(STEP_QUEUES), concurrency=2, env={"COREEXEC_ORPHAN_GRACE_S": "0"}
        )

    results = []
    with KillStorm(start_worker) as storm:
        # At least RUNS runs, and on until the storm has struck MIN_KILLS times.
        while len(results) < RUNS or (storm.kills < MIN_KILLS and len(results) < MAX_RUNS):
            results.append(execute_job(STORM))
    assert storm.error is None, storm.error
    assert storm.kills >= MIN_KILLS, f"only {storm.kills} kills in {len(results)} runs"

    for result in results:
        assert result.success, result.failed_steps
        successes = Counter(e.step_key for e in result.events if e.kind is EventKind.STEP_SUCCESS)
        assert len(successes) == WIDTH + 2 and set(successes.values()) == {1}
        executions = Counter(marks_of(result.run_id))
        assert [mark for mark, count in executions.items() if count > 1] == []
        assert result.output_for("gather") == WIDTH
