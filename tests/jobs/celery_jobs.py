"""Jobs the Celery tests run by reference (``tests.jobs.celery_jobs:<name>``).

Steps that must be observed from the test write small files under ``$COREEXEC_HOME``
(shared by the test and its workers): ``marks/<run_id>/<step_key>`` gets one line per
execution, and gates (``gates/<run_id>/<name>``) let the test hold a step until it is
ready. Where the steps do not share the test's disk (pods on a real Kubernetes cluster),
``$COREEXEC_TEST_MARKS_URL`` names a Redis that both reach, and marks and gates are kept
there instead (keys ``coreexec-test:marks:<run_id>:<step_key>``, a list of pids, and
``coreexec-test:gates:<run_id>:<name>``). Executor settings come from each test's run
config.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis
from pydantic import BaseModel

from celery_app import celery_executor
from coreexec import (
    Event,
    EventKind,
    ExecutionResult,
    Instance,
    RetryPolicy,
    StepContext,
    execute_job,
    job,
    step,
)
from coreexec.retry import FailureClass
from coreexec.tags import PRIORITY_TAG, QUEUE_TAG

T = TypeVar("T")

GATE_WAIT_S = 30.0
FANOUT_WIDTH = 6
MARKS_URL_ENV = "COREEXEC_TEST_MARKS_URL"


def home() -> Path:
    return Path(os.environ["COREEXEC_HOME"])


def _marks_redis() -> redis.Redis | None:
    url = os.environ.get(MARKS_URL_ENV)
    return redis.Redis.from_url(url, decode_responses=True) if url else None


def mark(context: StepContext) -> None:
    """Append one line (the pid) to this step's mark file."""
    client = _marks_redis()
    if client is not None:
        with client:
            client.rpush(f"coreexec-test:marks:{context.run_id}:{context.step_key}", os.getpid())
        return
    path = home() / "marks" / context.run_id / context.step_key
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(f"{os.getpid()}\n")


def marks(run_id: str, step_key: str) -> list[str]:
    client = _marks_redis()
    if client is not None:
        with client:
            return list(client.lrange(f"coreexec-test:marks:{run_id}:{step_key}", 0, -1))
    path = home() / "marks" / run_id / step_key
    return path.read_text(encoding="utf-8").split() if path.exists() else []


def gate_path(run_id: str, name: str) -> Path:
    return home() / "gates" / run_id / name


def _gate_key(run_id: str, name: str) -> str:
    return f"coreexec-test:gates:{run_id}:{name}"


def open_gate(run_id: str, name: str) -> None:
    client = _marks_redis()
    if client is not None:
        with client:
            client.set(_gate_key(run_id, name), 1)
        return
    path = gate_path(run_id, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def wait_for_gate(run_id: str, name: str) -> None:
    """Block until the test opens the gate (a step waiting on the test, not a timer)."""
    client = _marks_redis()
    key = _gate_key(run_id, name)
    path = None if client else gate_path(run_id, name)
    where = f"{MARKS_URL_ENV} key {key}" if client else str(path)

    def opened() -> bool:
        return bool(client.exists(key)) if client else bool(path and path.exists())

    deadline = time.monotonic() + GATE_WAIT_S
    try:
        while not opened():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {where} was not opened within {GATE_WAIT_S}s")
            time.sleep(0.01)
    finally:
        if client is not None:
            client.close()


# -- fan-out / fan-in ---------------------------------------------------------------


@step
def source() -> list[int]:
    return list(range(1, FANOUT_WIDTH + 1))


@step
def square(context: StepContext, values: list[int]) -> int:
    index = int(context.step_key.rsplit("_", 1)[1])
    mark(context)
    time.sleep(0.15)  # long enough that both workers get some of the leaves
    return values[index] ** 2


@step
def join(parts: list[int]) -> int:
    return sum(parts)


@job(executor_def=celery_executor)
def fanout_job() -> None:
    values = source()
    join([square.alias(f"square_{i}")(values) for i in range(FANOUT_WIDTH)])


# -- priority -----------------------------------------------------------------------


def _started(context: StepContext) -> float:
    mark(context)
    return time.time()


@step(tags={PRIORITY_TAG: 10})
def urgent(context: StepContext) -> float:
    return _started(context)


@step(tags={PRIORITY_TAG: 0})
def normal(context: StepContext) -> float:
    return _started(context)


@step(tags={PRIORITY_TAG: -10})
def background(context: StepContext) -> float:
    return _started(context)


@job(executor_def=celery_executor)
def priority_job() -> None:
    background()
    normal()
    urgent()


SAME_QUEUE = "coreexec.test.prio"


@job(executor_def=celery_executor)
def priority_one_queue_job() -> None:
    """The same three priorities on one queue: only message priority orders them."""
    background.with_tags({QUEUE_TAG: SAME_QUEUE}).alias("background")()
    normal.with_tags({QUEUE_TAG: SAME_QUEUE}).alias("normal")()
    urgent.with_tags({QUEUE_TAG: SAME_QUEUE}).alias("urgent")()


# -- queues -------------------------------------------------------------------------

SPECIAL_QUEUE = "coreexec.test.special"


@step(tags={QUEUE_TAG: SPECIAL_QUEUE})
def special(context: StepContext) -> int:
    mark(context)
    return os.getpid()


@step
def ordinary(context: StepContext) -> int:
    mark(context)
    return os.getpid()


@job(executor_def=celery_executor)
def queue_tag_job() -> None:
    special()
    ordinary()


NOWHERE_QUEUE = "coreexec.test.nobody"


@step(tags={QUEUE_TAG: NOWHERE_QUEUE})
def stranded() -> int:
    return 1


@job(executor_def=celery_executor)
def no_worker_job() -> None:
    stranded()


@step
def nap(context: StepContext) -> int:
    mark(context)
    time.sleep(0.6)
    return 1


@job(executor_def=celery_executor)
def busy_queue_job() -> None:
    for i in range(3):
        nap.alias(f"nap_{i}")()


# -- tag limits ---------------------------------------------------------------------

WAREHOUSE_STEPS = 4


@step(tags={"database": "warehouse"})
def warehouse_load(context: StepContext) -> float:
    """Records when it ran (``start end`` in its mark file) for the overlap check."""
    started = time.time()
    time.sleep(0.3)
    path = home() / "marks" / context.run_id / context.step_key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{started!r} {time.time()!r}\n", encoding="utf-8")
    return started


@job(executor_def=celery_executor)
def warehouse_job() -> None:
    for i in range(WAREHOUSE_STEPS):
        warehouse_load.alias(f"load_{i}")()


def intervals(run_id: str) -> list[tuple[float, float]]:
    found = []
    for path in (home() / "marks" / run_id).glob("load_*"):
        start, end = path.read_text(encoding="utf-8").split()
        found.append((float(start), float(end)))
    return found


# -- failures -----------------------------------------------------------------------

LONG_STEP_S = 2.0


@step
def long_step(context: StepContext) -> int:
    """Runs for several heartbeat timeouts; only its heartbeats keep it alive."""
    mark(context)
    time.sleep(LONG_STEP_S)
    return context.attempt


@job(executor_def=celery_executor)
def long_step_job() -> None:
    long_step()


@step(retry_policy=RetryPolicy(max_retries=1, retry_on=frozenset({FailureClass.INFRASTRUCTURE})))
def victim(context: StepContext) -> int:
    """First attempt hangs until killed; the retry returns at once."""
    mark(context)
    if context.attempt == 1:
        time.sleep(60)
    return context.attempt


@step
def after_victim(attempt: int) -> int:
    return attempt * 10


@job(executor_def=celery_executor)
def kill_job() -> None:
    after_victim(victim())


@step
def gated(context: StepContext) -> str:
    """Runs once per attempt; holds until the test opens gate 'go'."""
    mark(context)
    wait_for_gate(context.run_id, "go")
    return "done"


@job(executor_def=celery_executor)
def gated_job() -> None:
    gated()


@step
def sleeper(context: StepContext) -> str:
    mark(context)
    time.sleep(60)
    return "never"


@job(executor_def=celery_executor)
def cancel_job() -> None:
    """On a worker of concurrency 1: ``sleeper`` runs, ``sleeper_2`` waits in the queue."""
    sleeper()
    sleeper.alias("sleeper_2")()


class SecretConfig(BaseModel):
    api_key: str


@step(config_schema=SecretConfig)
def use_secret(context: StepContext) -> int:
    config = context.config
    assert isinstance(config, SecretConfig)
    return len(config.api_key)


@job(executor_def=celery_executor)
def secret_job() -> None:
    use_secret()


# -- watching a run from a test -------------------------------------------------------


class RunWatcher:
    """``execute_job`` in a background thread, with the coordinator's events collected as
    they are recorded, so a test can wait on what happened (with a deadline) instead of
    sleeping."""

    def __init__(self, reference: str, run_config: dict[str, Any] | None = None) -> None:
        self.reference = reference
        self.run_config = run_config
        self.events: list[Event] = []
        self.result: ExecutionResult | None = None
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.ended_at = 0.0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="coordinator", daemon=True)

    def start(self) -> RunWatcher:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def _listen(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            self.result = execute_job(
                self.reference,
                self.run_config,
                instance=Instance.from_env(),
                listeners=[self._listen],
            )
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            with self._cond:
                self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[list[Event]], T | None], timeout_s: float, what: str
    ) -> T:
        """The first truthy ``predicate(events)``; fails after ``timeout_s`` or if the run
        ended without it."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = predicate(list(self.events))
                if found:
                    return found
                if not self._thread.is_alive():
                    raise AssertionError(f"the run ended without {what}: {self.summary()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout_s}s: {self.summary()}")
                self._cond.wait(left)

    def event(self, kind: EventKind, step_key: str, timeout_s: float = 20.0, **match: Any) -> Event:
        """Wait for the first event of ``kind`` for ``step_key`` (and ``match`` fields)."""

        def find(events: list[Event]) -> Event | None:
            for event in events:
                if (
                    event.kind is kind
                    and event.step_key == step_key
                    and all(getattr(event, name) == value for name, value in match.items())
                ):
                    return event
            return None

        return self.wait_for(find, timeout_s, f"{kind.value} of {step_key}")

    @property
    def run_id(self) -> str:
        return self.wait_for(lambda events: events[0].run_id if events else None, 20.0, "a run id")

    def join(self, timeout_s: float = 30.0) -> ExecutionResult:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"the run did not end within {timeout_s}s: {self.summary()}")
        if self.error is not None:
            raise AssertionError(f"the run raised {self.error!r}") from self.error
        assert self.result is not None
        return self.result

    @property
    def elapsed_s(self) -> float:
        return self.ended_at - self.started_at

    def summary(self) -> str:
        return "; ".join(
            f"{e.kind.value}:{e.step_key or ''}:{e.attempt or ''} {e.message[:80]}"
            for e in self.events[-25:]
        )


# -- what Flower shows ------------------------------------------------------------------


class StepBroke(ValueError):
    """The error a step of ``flower_states_job`` raises on purpose."""


@step
def fine() -> int:
    return 1


@step(retry_policy=RetryPolicy(max_retries=0))
def broken() -> int:
    raise StepBroke("the warehouse said no")


@job(executor_def=celery_executor)
def flower_states_job() -> None:
    """One step that succeeds, one that fails, one that waits on a gate (for a cancel)."""
    fine()
    broken()
    gated()
