"""Tag concurrency limits on the celery executor, with real ``celery worker`` processes and
a real redis-server: limits hold across concurrent runs, per unique tag value, for steps
needing two tags, through a killed worker or coordinator, and by priority across runs.

Concurrency is read from the run storage after the runs: each attempt runs from its
STEP_START to its STEP_SUCCESS (the worker's clock; the slot is taken before the first
and given back after the coordinator hears the second, so the true hold covers it).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from celery_app.app import make_app
from celery_app.queues import RUNS_QUEUE, STEP_QUEUES
from celery_app.run_launcher import CeleryRunLauncher
from celery_app.settings import CelerySettings
from coreexec import Event, EventKind, Instance, RunStatus, submit_job
from coreexec.limits.base import DEFAULT_LEASE_TTL_MS, SlotState
from coreexec.limits.redis_limiter import RedisTagLimiter
from coreexec.redis_clients import redis_client
from coreexec.transport.redis_events import RedisEventStream
from tests.jobs import limit_jobs
from tests.jobs.celery_jobs import RunWatcher, open_gate
from tests.support.processes import CeleryWorkerProcess, ManagedProcess

REF = "tests.jobs.limit_jobs"
HEARTBEAT_TIMEOUT_S = 1.0
FAST = {
    "heartbeat_interval_s": 0.2,
    "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
    "queued_timeout_s": 30.0,
}
WAREHOUSE = "database=warehouse"
CRM = "api=crm"
RUN_TIMEOUT_S = 90.0
WorkerFactory = Callable[..., CeleryWorkerProcess]


def limit(key: str, value: str | dict[str, bool] | None, n: int) -> dict[str, Any]:
    rule: dict[str, Any] = {"key": key, "limit": n}
    if value is not None:
        rule["value"] = value
    return rule


def run_config(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"execution": {"config": {**FAST, "tag_concurrency_limits": list(rules)}}}


@pytest.fixture
def celery_env(redis_url: str, coreexec_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """This process, its workers and coordinators share one broker, Redis and home."""
    monkeypatch.setenv("COREEXEC_BROKER_URL", redis_url)
    monkeypatch.setenv("COREEXEC_REDIS_URL", redis_url)
    for name in ("COREEXEC_RESULT_BACKEND", "COREEXEC_CELERY_CONFIG", "COREEXEC_RUN_LAUNCHER"):
        monkeypatch.delenv(name, raising=False)
    # Create the run storage before runs open it from several threads at once: opening a
    # new SQLite file concurrently can fail with "database is locked" (switching it to WAL
    # is not retried), a storage bug these tests are not about.
    Instance.from_env().storage.close()
    return redis_url


@pytest.fixture
def limiter(celery_env: str) -> Iterator[RedisTagLimiter]:
    """The limiter every run of these tests shares (default namespace), to look into."""
    shared = RedisTagLimiter.from_url(celery_env)
    yield shared
    shared.close()


# -- reading what happened -----------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """One attempt, from its STEP_START to its STEP_SUCCESS."""

    run_id: str
    step_key: str
    start: float
    end: float


def stored_events(run_id: str) -> list[Event]:
    return [event for _, event in Instance.from_env().storage.events(run_id)]


def spans_of(events: Iterable[Event]) -> list[Span]:
    starts: dict[str, Event] = {}
    spans = []
    for event in events:
        if event.attempt_id is None or event.step_key is None:
            continue
        if event.kind is EventKind.STEP_START:
            starts[event.attempt_id] = event
        elif event.kind is EventKind.STEP_SUCCESS:
            start = starts[event.attempt_id]
            spans.append(Span(event.run_id, event.step_key, start.timestamp, event.timestamp))
    return spans


def max_overlap(spans: Iterable[Span]) -> int:
    """The most spans open at one instant (one ending as another starts do not overlap)."""
    spans = list(spans)
    edges = sorted([(s.start, 1) for s in spans] + [(s.end, -1) for s in spans])
    best = current = 0
    for _, delta in edges:
        current += delta
        best = max(best, current)
    return best


def overlap_across_runs(spans: Sequence[Span]) -> bool:
    """True when steps of two different runs ran at the same time."""
    return any(
        a.run_id != b.run_id and a.start < b.end and b.start < a.end
        for i, a in enumerate(spans)
        for b in spans[i + 1 :]
    )


def only(events: Iterable[Event], kind: EventKind, step_key: str) -> list[Event]:
    return [e for e in events if e.kind is kind and e.step_key == step_key]


EMPTY = SlotState(name="", limit=0, holders=())


def by_name(states: Iterable[SlotState]) -> dict[str, SlotState]:
    return {state.name: state for state in states}


def holders(state: SlotState | None) -> list[tuple[str, str]]:
    return [] if state is None else [(h.run_id, h.step_key) for h in state.holders]


def waiters(state: SlotState | None) -> list[tuple[str, str]]:
    return [] if state is None else [(h.run_id, h.step_key) for h in state.waiters]


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s}s")
        time.sleep(0.02)


def join_all(watchers: Sequence[RunWatcher]) -> list[str]:
    """Wait for every run; their ids, each checked to have succeeded."""
    run_ids = []
    for watcher in watchers:
        result = watcher.join(RUN_TIMEOUT_S)
        assert result.status is RunStatus.SUCCESS, watcher.summary()
        run_ids.append(result.run_id)
    return run_ids


# -- 1. one limit across concurrent runs ----------------------------------------------------


def _coordinated_in_threads(config: dict[str, Any], runs: int) -> list[str]:
    watchers = [RunWatcher(f"{REF}:warehouse_queries", config).start() for _ in range(runs)]
    return join_all(watchers)


def _coordinated_by_a_worker(
    config: dict[str, Any], runs: int, celery_worker_factory: WorkerFactory
) -> list[str]:
    celery_worker_factory(queues=[RUNS_QUEUE], concurrency=runs, hostname="coord")
    launcher = CeleryRunLauncher(make_app(CelerySettings.from_env(), set_as_current=False))
    handles = [
        submit_job(f"{REF}:warehouse_queries", config, launcher=launcher) for _ in range(runs)
    ]
    for handle in handles:
        assert handle.wait(timeout=RUN_TIMEOUT_S) is RunStatus.SUCCESS, handle.events()[-5:]
        handle.close()
    return [handle.run_id for handle in handles]


@pytest.mark.parametrize("coordinators", ["threads", "coordinator_worker"])
def test_three_concurrent_runs_never_run_more_than_the_limit_of_2(
    celery_env: str,
    celery_worker_factory: WorkerFactory,
    limiter: RedisTagLimiter,
    coordinators: str,
) -> None:
    for _ in range(2):
        celery_worker_factory(queues=STEP_QUEUES, concurrency=4)
    config = run_config(limit("database", "warehouse", 2))
    runs = 3
    if coordinators == "threads":
        run_ids = _coordinated_in_threads(config, runs)
    else:
        run_ids = _coordinated_by_a_worker(config, runs, celery_worker_factory)

    events = {run_id: stored_events(run_id) for run_id in run_ids}
    spans = [span for run_id in run_ids for span in spans_of(events[run_id])]
    steps = [f"query_{i:02d}" for i in range(limit_jobs.WAREHOUSE_STEPS)]
    assert sorted((s.run_id, s.step_key) for s in spans) == sorted(
        (run_id, key) for run_id in run_ids for key in steps
    ), "every one of the 60 steps succeeds, once"
    # Eight worker processes could run eight at once; the limit lets two, in all runs.
    assert max_overlap(spans) == 2
    assert overlap_across_runs(spans), "the runs took turns instead of sharing the limit"
    for run_id in run_ids:
        waits = [e for e in events[run_id] if e.kind is EventKind.SLOT_WAIT]
        assert waits and all("database=warehouse limit 2" in e.message for e in waits)
    assert limiter.slots() == ()


# -- 2. one limit per unique value ------------------------------------------------------------


def test_a_per_unique_value_limit_runs_one_step_of_each_team_at_a_time(
    celery_env: str, celery_worker_factory: WorkerFactory, limiter: RedisTagLimiter
) -> None:
    celery_worker_factory(queues=STEP_QUEUES, concurrency=4)
    config = run_config(limit("team", {"applyLimitPerUniqueValue": True}, 1))
    watchers = [RunWatcher(f"{REF}:team_reports", config).start() for _ in range(2)]
    run_ids = join_all(watchers)

    events = [e for run_id in run_ids for e in stored_events(run_id)]
    spans = spans_of(events)
    assert len(spans) == 2 * len(limit_jobs.TEAMS) * limit_jobs.STEPS_PER_TEAM
    for team in limit_jobs.TEAMS:
        assert max_overlap(s for s in spans if s.step_key.startswith(team)) == 1, team
    # One slot per team: three at a time, so the limit did not serialise everything.
    assert max_overlap(spans) == 3
    acquired = {
        (e.step_key or "").split("_")[0]: e.data["slots"]
        for e in events
        if e.kind is EventKind.SLOT_ACQUIRED
    }
    assert acquired == {team: [f"team={team}"] for team in limit_jobs.TEAMS}
    assert limiter.slots() == ()


# -- 3. two tags at once, crossing orders ------------------------------------------------------


class SlotSampler:
    """Snapshots of ``limiter.slots()`` taken as fast as they come, in a thread."""

    def __init__(self, limiter: RedisTagLimiter) -> None:
        self.limiter = limiter
        self.snapshots: list[dict[str, SlotState]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="slot-sampler", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> SlotSampler:
        self._thread.start()
        return self

    def _sample(self) -> None:
        try:
            while not self._stop.is_set():
                self.snapshots.append(by_name(self.limiter.slots()))
                self._stop.wait(0.002)  # the sampling period; nothing waits on it
        except BaseException as exc:
            self.error = exc

    def stop(self) -> list[dict[str, SlotState]]:
        self._stop.set()
        self._thread.join(10)
        assert self.error is None, f"sampling slots failed: {self.error!r}"
        return self.snapshots


def _wait_event(watcher: RunWatcher, kind: EventKind, step_key: str, **data: Any) -> Event:
    def find(events: list[Event]) -> Event | None:
        for event in only(events, kind, step_key):
            if all(event.data.get(name) == value for name, value in data.items()):
                return event
        return None

    return watcher.wait_for(find, 30.0, f"{kind.value} of {step_key} with {data}")


def test_a_step_needing_two_tags_never_holds_one_alone_and_crossing_orders_finish(
    celery_env: str, celery_worker_factory: WorkerFactory, limiter: RedisTagLimiter
) -> None:
    celery_worker_factory(queues=STEP_QUEUES, concurrency=4)
    config = run_config(limit("database", "warehouse", 1), limit("api", "crm", 1))
    sampler = SlotSampler(RedisTagLimiter.from_url(celery_env)).start()
    try:
        # Run 1 holds the warehouse, run 2 the CRM API; the both_* steps of each run need
        # the warehouse and the API (declared in opposite orders): the crossing that
        # deadlocks limiters taking one tag at a time.
        first = RunWatcher(f"{REF}:warehouse_first", config).start()
        first.event(EventKind.STEP_START, "warehouse_holder")
        first.event(EventKind.SLOT_WAIT, "both_0")
        second = RunWatcher(f"{REF}:crm_first", config).start()
        second.event(EventKind.STEP_START, "crm_holder")
        second.event(EventKind.SLOT_WAIT, "both_0")
        slots = by_name(limiter.slots())
        assert holders(slots[WAREHOUSE]) == [(first.run_id, "warehouse_holder")]
        assert holders(slots[CRM]) == [(second.run_id, "crm_holder")]
        queue = [(first.run_id, "both_0"), (second.run_id, "both_0")]
        assert waiters(slots[WAREHOUSE]) == queue
        assert waiters(slots[CRM]) == queue

        # The warehouse comes free; run 1's both_0, still short of the API, leaves it free.
        open_gate(first.run_id, "release")
        _wait_event(first, EventKind.SLOT_WAIT, "both_0", slots=[CRM])
        slots = by_name(limiter.slots())
        assert holders(slots[WAREHOUSE]) == []
        assert waiters(slots[WAREHOUSE]) == queue
        assert holders(slots[CRM]) == [(second.run_id, "crm_holder")]

        open_gate(second.run_id, "release")
        run_ids = join_all([first, second])
    finally:
        snapshots = sampler.stop()
        sampler.limiter.close()

    events = [e for run_id in run_ids for e in stored_events(run_id)]
    acquired = [e for e in events if e.kind is EventKind.SLOT_ACQUIRED]
    two_tag_leases = {
        e.data["lease_id"] for e in acquired if (e.step_key or "").startswith("both_")
    }
    assert len(two_tag_leases) == 2 * limit_jobs.BOTH_STEPS
    for event in acquired:
        expected = [CRM, WAREHOUSE] if event.data["lease_id"] in two_tag_leases else None
        if expected is not None:
            assert event.data["slots"] == expected, event

    held_both = 0
    for snapshot in snapshots:
        warehouse = {h.lease_id for h in snapshot.get(WAREHOUSE, EMPTY).holders}
        crm = {h.lease_id for h in snapshot.get(CRM, EMPTY).holders}
        waiting = {w.lease_id for s in snapshot.values() for w in s.waiters}
        assert (warehouse ^ crm) & two_tag_leases == set(), snapshot
        assert not (warehouse | crm) & waiting, snapshot
        held_both += bool(warehouse & crm & two_tag_leases)
    assert held_both, f"no snapshot of {len(snapshots)} caught a two-tag step holding"

    spans = spans_of(events)
    assert len(spans) == 2 * (1 + limit_jobs.BOTH_STEPS)
    assert max_overlap(s for s in spans if s.step_key != "crm_holder") == 1  # warehouse
    assert max_overlap(s for s in spans if s.step_key != "warehouse_holder") == 1  # API
    assert limiter.slots() == ()


# -- 4. crashes: a killed worker, a killed coordinator --------------------------------------


def test_the_slot_of_a_killed_worker_comes_back_and_the_waiting_step_runs(
    celery_env: str, celery_worker_factory: WorkerFactory, limiter: RedisTagLimiter
) -> None:
    celery_worker_factory(queues=STEP_QUEUES, concurrency=2)
    celery_worker_factory(queues=STEP_QUEUES, concurrency=2)
    config = run_config(limit("database", "warehouse", 1))
    holder = RunWatcher(f"{REF}:killed_holder", config).start()
    started = holder.event(EventKind.STEP_START, "hold_until_killed", attempt=1)
    waiter = RunWatcher(f"{REF}:warehouse_writer", config).start()
    waiting = waiter.event(EventKind.SLOT_WAIT, "warehouse_write")
    assert waiting.data["holders"] == [{"run_id": holder.run_id, "step_key": "hold_until_killed"}]
    (state,) = limiter.slots()
    assert [h.lease_id for h in state.holders] == [started.attempt_id]

    os.kill(int(started.data["pid"]), signal.SIGKILL)
    killed_at = time.time()
    acquired = waiter.event(EventKind.SLOT_ACQUIRED, "warehouse_write", timeout_s=40.0)
    run_ids = join_all([holder, waiter])

    # Freed through the lost heartbeat, well inside the lease's TTL.
    freed_after_s = acquired.timestamp - killed_at
    assert freed_after_s < HEARTBEAT_TIMEOUT_S + 3.0 < DEFAULT_LEASE_TTL_MS / 1000
    held = stored_events(run_ids[0])
    lost = [
        e
        for e in only(held, EventKind.STEP_FAILURE, "hold_until_killed")
        if e.attempt_id == started.attempt_id
    ]
    assert lost and lost[0].data["failure_class"] == "infrastructure", held
    released = [e.data["lease_id"] for e in held if e.kind is EventKind.SLOT_RELEASED]
    assert started.attempt_id in released
    # The waiting step was first in line; the holder's retry came after it.
    retried = only(held, EventKind.STEP_START, "hold_until_killed")[-1]
    assert retried.attempt == 2
    wrote = only(stored_events(run_ids[1]), EventKind.STEP_START, "warehouse_write")[0]
    assert wrote.timestamp < retried.timestamp
    assert limiter.slots() == ()


class ProcessRunLauncher:
    """A run launcher that coordinates each run in a python process of its own."""

    name = "test-process"

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def launch(self, run_id: str, *, resume: bool = False) -> None:
        code = "import sys; from tests.jobs.limit_jobs import coordinate_in_this_process as c; "
        code += "c(sys.argv[1])"
        process = ManagedProcess(
            [sys.executable, "-c", code, run_id], name="coordinator", log_dir=self.log_dir
        )
        self.processes.append(process)
        process.start()

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def process_launcher(tmp_path: Path) -> Iterator[ProcessRunLauncher]:
    launcher = ProcessRunLauncher(tmp_path / "coordinators")
    yield launcher
    launcher.stop_all()


def test_the_leases_of_a_killed_coordinator_lapse_and_another_run_gets_the_slot(
    celery_env: str,
    celery_worker_factory: WorkerFactory,
    limiter: RedisTagLimiter,
    process_launcher: ProcessRunLauncher,
) -> None:
    celery_worker_factory(queues=STEP_QUEUES, concurrency=2)
    config = run_config(limit("database", "warehouse", 1))
    config["execution"]["config"]["slot_lease_ttl_s"] = limit_jobs.SHORT_LEASE_TTL_MS / 1000
    orphaned = submit_job(f"{REF}:orphaned_writer", config, launcher=process_launcher)
    (coordinator,) = process_launcher.processes

    def orphan_started() -> bool:
        return bool(only(orphaned.events(), EventKind.STEP_START, "orphaned_write"))

    coordinator.wait_until(orphan_started, 30.0, "the orphaned step to start")
    assert only(orphaned.events(), EventKind.SLOT_ACQUIRED, "orphaned_write")
    waiter = RunWatcher(f"{REF}:warehouse_writer", config).start()
    waiting = waiter.event(EventKind.SLOT_WAIT, "warehouse_write")
    assert waiting.data["holders"] == [{"run_id": orphaned.run_id, "step_key": "orphaned_write"}]

    coordinator.kill9()
    killed_at = time.time()
    # Its step ends on the worker, but nobody is left to release the slot: only the
    # lease's TTL can give it back.
    open_gate(orphaned.run_id, "release")
    ttl_s = limit_jobs.SHORT_LEASE_TTL_MS / 1000
    got = waiter.event(EventKind.SLOT_ACQUIRED, "warehouse_write", timeout_s=ttl_s + 20.0)
    (run_id,) = join_all([waiter])

    assert got.timestamp - killed_at <= ttl_s + 1.5
    assert orphaned.status() is RunStatus.STARTED  # its coordinator is gone
    assert not [e for e in orphaned.events() if e.kind is EventKind.SLOT_RELEASED]
    assert stored_events(run_id)[-1].kind is EventKind.RUN_SUCCESS
    assert limiter.slots() == ()
    orphaned.close()


# -- 5. priority across runs ----------------------------------------------------------------


def test_a_high_priority_waiter_gets_a_freed_slot_before_earlier_low_priority_ones(
    celery_env: str, celery_worker_factory: WorkerFactory, limiter: RedisTagLimiter
) -> None:
    celery_worker_factory(queues=STEP_QUEUES, concurrency=2)
    config = run_config(limit("resource", "ledger", 1))
    blocker = RunWatcher(f"{REF}:ledger_block", config).start()
    blocker.event(EventKind.STEP_START, "ledger_blocker")
    low_1 = RunWatcher(f"{REF}:ledger_low", config).start()
    low_1.event(EventKind.SLOT_WAIT, "write")
    low_2 = RunWatcher(f"{REF}:ledger_low", config).start()
    low_2.event(EventKind.SLOT_WAIT, "write")
    high = RunWatcher(f"{REF}:ledger_high", config).start()
    high.event(EventKind.SLOT_WAIT, "write")
    (state,) = limiter.slots()
    assert [w.run_id for w in state.waiters] == [high.run_id, low_1.run_id, low_2.run_id]

    open_gate(blocker.run_id, "release")
    join_all([blocker, low_1, low_2, high])

    order = [high, low_1, low_2]
    acquired = [w.event(EventKind.SLOT_ACQUIRED, "write").timestamp for w in order]
    started = [w.event(EventKind.STEP_START, "write").timestamp for w in order]
    assert acquired == sorted(acquired)
    assert started == sorted(started)
    # All three waited until the blocker had ended (its SLOT_RELEASED event is recorded
    # after the release, so it may come after the high-priority grant).
    assert blocker.event(EventKind.STEP_SUCCESS, "ledger_blocker").timestamp < acquired[0]
    assert limiter.slots() == ()


# -- wake-ups and the run's stream ----------------------------------------------------------


def test_a_slot_wake_up_never_trims_the_runs_event_stream(
    celery_env: str, limiter: RedisTagLimiter
) -> None:
    """The celery executor's wake key is the run's event stream: a wake-up must not drop
    events its coordinator has not read yet (nor the history a resume replays)."""
    from coreexec.limits.base import SlotRequest
    from coreexec.limits.rules import SlotSpec

    client = redis_client(celery_env)
    stream = RedisEventStream(client, "run-with-a-long-history", url=celery_env)
    count = 12_000
    for first in range(0, count, 1000):
        stream.publish_many(
            [
                Event(kind=EventKind.STEP_LOG, run_id=stream.run_id, timestamp=0.0, message=str(i))
                for i in range(first, first + 1000)
            ]
        )
    first_id = stream.history()[0].entry_id
    slot = SlotSpec(name=WAREHOUSE, limit=1, rule="database=warehouse limit 1")
    holder = limiter.try_acquire(SlotRequest("other-run", "a", "lease-a", 0, (slot,))).lease
    assert holder is not None
    request = SlotRequest(stream.run_id, "b", "lease-b", 0, (slot,), wake_key=stream.key)
    assert not limiter.try_acquire(request).granted

    assert limiter.release(holder)

    entries = stream.history()
    assert len(entries) == count + 1
    assert entries[0].entry_id == first_id
    assert entries[-1].wake == WAREHOUSE
    limiter.withdraw(request)
    client.close()
