"""Async steps of a run on one event loop in the coordinating process.

The in-process and multiprocess executors hand every ``async def`` step of a run to an
:class:`AsyncStepLane`: an event loop in a thread of its own, where ready async steps
run side by side as tasks. A sync step running in the coordinator's thread (in-process
steps) or in a pool worker never blocks that loop, and a step on the loop never blocks
the coordinator. How many run at once is the coordinator's business
(``max_concurrent_async``, counted apart from the executor's sync steps).

What the steps report is held here until the dispatcher's ``wait`` passes it to the
coordinator's sink, so the run's state is only ever touched from the coordinator's
thread. Cancelling an attempt cancels its task: the step sees ``asyncio.CancelledError``
at the ``await`` it is in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.events import Event
from coreexec.execution.dispatcher import LostAttempt
from coreexec.execution.run_context import RunContext
from coreexec.plan import PlannedStep
from coreexec.retry import FailureClass
from coreexec.step_runner import StepOutcome, StepRun, run_step_async

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT_ASYNC = 64
"""Async steps of a run running at once on its event loop, unless configured."""

CANCEL_GRACE_S = 5.0
"""How long a cancelled async step may take to end before it is given up as cancelled."""


def async_step_keys(run: RunContext) -> frozenset[str]:
    """Keys of the run's ``async def`` steps."""
    return frozenset(step.key for step in run.plan.steps if run.job.node(step.key).step.is_async)


@dataclass(frozen=True)
class _Ended:
    """An attempt's task ended; ``outcome`` is None when it was cancelled."""

    step_key: str
    attempt_id: str
    outcome: StepOutcome | None


_Item = Event | _Ended


class AsyncStepLane:
    """An event loop thread running a run's async step attempts.

    ``notify`` is called (from the loop's thread) whenever something waits to be
    :meth:`drain`-ed; it must wake the dispatcher's ``wait``.
    """

    def __init__(self, run: RunContext, keys: frozenset[str], notify: Callable[[], None]) -> None:
        self.run = run
        self.keys = keys
        self._notify = notify
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._inbox: deque[_Item] = deque()
        self._lost: deque[LostAttempt] = deque()
        self._running: set[str] = set()
        self._give_up_at: dict[str, float] = {}
        # Touched from the loop's thread only:
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._cancel_early: set[str] = set()

    def runs(self, step: PlannedStep) -> bool:
        """Whether ``step`` runs on this loop (it is an ``async def`` step)."""
        return step.key in self.keys

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._serve, args=(loop,), name=f"coreexec-async-{self.run.run_id[:8]}"
        )
        self._thread.daemon = True
        self._thread.start()

    def submit(self, step: PlannedStep, attempt: StepAttempt) -> None:
        """Start an attempt as a task on the loop; returns at once."""
        assert self._loop is not None, "start() first"
        self._running.add(attempt.attempt_id)
        asyncio.run_coroutine_threadsafe(self._attempt(step, attempt), self._loop)

    @property
    def has_news(self) -> bool:
        return bool(self._inbox or self._lost)

    def drain(self, sink: EventSink) -> bool:
        """Pass what the steps reported to ``sink``; True when there was anything."""
        heard = bool(self._inbox)
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, Event):
                sink(item)
                continue
            self._running.discard(item.attempt_id)
            self._give_up_at.pop(item.attempt_id, None)
            if item.outcome is not None and item.outcome.error is not None:
                self.run.step_errors[item.step_key] = item.outcome.error
        return heard or bool(self._lost)

    def lost_attempts(self) -> list[LostAttempt]:
        """Attempts whose runner failed, or that outlived their cancellation's grace."""
        lost: list[LostAttempt] = []
        while self._lost:
            lost.append(self._lost.popleft())
        now = time.monotonic()
        for attempt_id, at in list(self._give_up_at.items()):
            if at <= now:
                del self._give_up_at[attempt_id]
                self._running.discard(attempt_id)
                lost.append(
                    LostAttempt(
                        attempt_id,
                        FailureClass.CANCELLED,
                        f"the async step did not end within {CANCEL_GRACE_S:.0f}s of its "
                        "cancellation (it may block the event loop or ignore CancelledError)",
                    )
                )
        return lost

    def terminate(self, attempt_ids: Iterable[str]) -> None:
        """Cancel these attempts' tasks (each sees ``asyncio.CancelledError``)."""
        loop = self._loop
        for attempt_id in attempt_ids:
            if loop is None or attempt_id not in self._running or attempt_id in self._give_up_at:
                continue
            self._give_up_at[attempt_id] = time.monotonic() + CANCEL_GRACE_S
            loop.call_soon_threadsafe(self._cancel_on_loop, attempt_id)

    def close(self) -> None:
        """Cancel what still runs, stop the loop and its thread. Never raises."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = None
        try:
            done = asyncio.run_coroutine_threadsafe(_cancel_all(CANCEL_GRACE_S), loop)
            done.result(CANCEL_GRACE_S + 1.0)
        except (concurrent.futures.TimeoutError, RuntimeError):
            logger.warning("async steps of run %s did not stop in time", self.run.run_id)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CANCEL_GRACE_S)
        if thread.is_alive():
            # A step blocks the loop's thread in a sync call: the daemon thread is left.
            logger.warning("the event loop of run %s is blocked; leaving it", self.run.run_id)
            return
        loop.close()

    # -- the loop's thread --------------------------------------------------------------

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def _put(self, item: _Item) -> None:
        self._inbox.append(item)
        self._notify()

    def _lose(self, attempt: StepAttempt, failure_class: FailureClass, message: str) -> None:
        self._lost.append(LostAttempt(attempt.attempt_id, failure_class, message))
        self._notify()

    def _cancel_on_loop(self, attempt_id: str) -> None:
        task = self._tasks.get(attempt_id)
        if task is not None:
            task.cancel()
        else:
            # Its task has not run yet (cancelled before its first step it would run
            # nothing, not even its report): it sees this flag when it does.
            self._cancel_early.add(attempt_id)

    async def _attempt(self, step: PlannedStep, attempt: StepAttempt) -> None:
        outcome: StepOutcome | None = None
        attempt_id = attempt.attempt_id
        try:
            if attempt_id in self._cancel_early:
                self._cancel_early.discard(attempt_id)
                self._lose(attempt, FailureClass.CANCELLED, "run canceled before the step started")
                return
            task = asyncio.current_task()
            assert task is not None
            self._tasks[attempt_id] = task
            outcome = await run_step_async(self._step_run(step, attempt), self._put)
        except asyncio.CancelledError:
            pass  # reported by the runner as a cancelled attempt
        except Exception as exc:
            logger.exception("the runner of async step %s failed", step.key)
            self._lose(
                attempt,
                FailureClass.INFRASTRUCTURE,
                f"the step runner failed on the event loop: {exc!r}",
            )
        finally:
            self._tasks.pop(attempt_id, None)
            self._put(_Ended(step.key, attempt_id, outcome))

    def _step_run(self, step: PlannedStep, attempt: StepAttempt) -> StepRun:
        run = self.run
        return StepRun(
            run_id=run.run_id,
            job=run.job,
            step=step,
            attempt=attempt,
            run_config=run.run_config,
            io_manager=run.io_manager,
            run_tags=run.run_tags,
            clock=run.clock,
        )


async def _cancel_all(grace_s: float) -> None:
    me = asyncio.current_task()
    tasks: Sequence[asyncio.Task[Any]] = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=grace_s)
