"""Supervising one attempt through its launcher: claim, launch or adopt, heartbeat,
follow, publish the end, clean up. See :mod:`workers.launcher` for the protocol.

The split of the work between the supervisor and what it launched:

=================== ============================== =====================================
what                supervisor (worker, coordinator) launched entrypoint (container)
=================== ============================== =====================================
claim the attempt   yes, announcing its start       verifies the claim (not fenced)
heartbeat           yes, while it follows           no
step events         the logs, the verdict when      start of the user's code, its logs,
                    nothing was reported            outputs and end (held, see below)
the end             publishes it once the process   holds it in Redis
                    has ended (slots freed then)
cleanup             removes the container           -
=================== ============================== =====================================
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from coreexec.attempt_runner import (
    AttemptIds,
    AttemptResult,
    PreparedAttempt,
    attempt_event,
    claim_attempt,
    drop_delivery,
    failure_event,
    heartbeat_while_running,
    prepare_attempt,
    refuse_delivery,
    screen_message,
)
from coreexec.attempt_runtime import AttemptRuntime
from coreexec.errors import CoreExecError
from coreexec.events import Event, EventKind
from coreexec.retry import FailureClass
from coreexec.step_runner import CANCEL_REPORTED
from coreexec.transport import keys
from coreexec.transport.attempt_ends import AttemptEnds
from coreexec.transport.attempts import ClaimResult
from workers.launcher import EndReason, Launch, LaunchEnd, LaunchError, LaunchRequest, StepLauncher
from workers.registry import launcher_for

log = logging.getLogger(__name__)

LauncherChooser = Callable[[AttemptRuntime, PreparedAttempt], StepLauncher]


class TerminateRequested(BaseException):
    """SIGTERM reached a supervisor while it followed a launched attempt (a cancel)."""


@contextmanager
def _terminable() -> Iterator[None]:
    """SIGTERM raises :class:`TerminateRequested` inside the block (main thread only:
    elsewhere signals cannot be handled, and SIGTERM keeps its usual effect)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise TerminateRequested()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def supervise(
    runtime: AttemptRuntime,
    ids: AttemptIds,
    *,
    owner: str,
    choose: LauncherChooser = launcher_for,
) -> AttemptResult:
    """Run one attempt through the launcher its step picks; see the module docstring.

    Raises :class:`~coreexec.attempt_runner.ClaimUnavailableError` when the attempt
    could not be claimed (nothing ran).
    """
    screened = screen_message(ids)
    if screened is not None:
        return screened
    claim = claim_attempt(runtime, ids, owner)
    if claim.refused is not None:
        return refuse_delivery(ids, claim)
    if not claim.claimed and claim.fenced:
        return drop_delivery(runtime, ids, owner, claim)
    try:
        return _prepare_and_launch(runtime, ids, owner, claim, choose)
    except (KeyboardInterrupt, SystemExit) as exc:
        # A cancel's SIGTERM that lands after the claim announced the start but outside
        # the step runner (loading the run, importing the job, the inputs): say so,
        # rather than leave the coordinator to notice the silence.
        if claim.claimed and CANCEL_REPORTED not in getattr(exc, "__notes__", ()):
            _report_cancelled_before_start(runtime, ids, exc)
        raise


def _prepare_and_launch(
    runtime: AttemptRuntime,
    ids: AttemptIds,
    owner: str,
    claim: ClaimResult,
    choose: LauncherChooser,
) -> AttemptResult:
    prepared = prepare_attempt(runtime, ids, owner, report_failure=claim.claimed)
    if isinstance(prepared, AttemptResult):
        return prepared if claim.claimed else drop_delivery(runtime, ids, owner, claim)
    try:
        launcher = choose(runtime, prepared)
    except CoreExecError as exc:
        # An unknown launcher name, a bad per-step launcher config: no retry mends it.
        return _fail(runtime, prepared, str(exc), FailureClass.USER_ERROR, False, exc)
    request = LaunchRequest(prepared, owner)
    if claim.claimed:
        return _launch_and_follow(runtime, launcher, request, adopt=None)
    found = launcher.find(request)
    if found is None:
        return drop_delivery(runtime, ids, owner, claim)
    log.warning(
        "adopting %s of attempt %s (claimed by %s)", found.name, ids.attempt_id, claim.holder
    )
    return _launch_and_follow(runtime, launcher, request, adopt=found)


def _report_cancelled_before_start(
    runtime: AttemptRuntime, ids: AttemptIds, exc: BaseException
) -> None:
    runtime.stream(ids.run_id).publish(
        failure_event(
            ids.run_id,
            f"cancelled: the attempt was stopped outside its step ({type(exc).__name__})",
            ids=ids,
            failure_class=FailureClass.CANCELLED,
            retryable=False,
            error_type="Cancelled",
        )
    )


def _launch_and_follow(
    runtime: AttemptRuntime, launcher: StepLauncher, request: LaunchRequest, adopt: Launch | None
) -> AttemptResult:
    prepared = request.prepared
    ids = prepared.ids
    with heartbeat_while_running(runtime, prepared):
        try:
            launch = adopt if adopt is not None else launcher.launch(request)
        except LaunchError as exc:
            return _fail(
                runtime, prepared, str(exc), FailureClass.INFRASTRUCTURE, exc.retryable, exc
            )
        except CoreExecError as exc:
            return _fail(runtime, prepared, str(exc), FailureClass.INFRASTRUCTURE, True, exc)
        if launch.end is not None and launch.end.result is not None:
            return launch.end.result
        cancelled = False
        try:
            with _terminable():
                end = launcher.follow(launch)
        except TerminateRequested:
            cancelled = True
            log.warning("cancel: stopping %s of attempt %s", launch.name, ids.attempt_id)
            launcher.terminate(launch)
            end = launcher.follow(launch)
        result = publish_end(runtime, prepared, launch, end, cancelled=cancelled)
    try:
        launcher.cleanup(launch)
    except CoreExecError as exc:
        log.warning("cleaning up %s of attempt %s failed: %s", launch.name, ids.attempt_id, exc)
    return result


def _fail(
    runtime: AttemptRuntime,
    prepared: PreparedAttempt,
    message: str,
    failure_class: FailureClass,
    retryable: bool,
    exc: BaseException,
) -> AttemptResult:
    ids = prepared.ids
    event = failure_event(
        ids.run_id,
        message,
        ids=ids,
        failure_class=failure_class,
        retryable=retryable,
        error_type=type(exc).__name__,
    )
    prepared.info.stream.publish(event)
    return AttemptResult("failure", ids, error=event.data["error"])


def verdict(launch: Launch, end: LaunchEnd, *, cancelled: bool) -> tuple[str, FailureClass]:
    """What the supervisor says of an attempt that ended without reporting its end."""
    what = f"{launch.launcher} {launch.name} of step {launch.ids.step_key!r}"
    if cancelled or end.reason is EndReason.TERMINATED:
        return f"{what} was stopped: run canceled", FailureClass.CANCELLED
    detail = end.detail or end.reason.value
    if end.reason is EndReason.OOM_KILLED:
        return f"{what} was killed: {detail}", FailureClass.INFRASTRUCTURE
    if end.reason is EndReason.NOT_STARTED:
        return f"{what} could not start: {detail}", FailureClass.INFRASTRUCTURE
    if end.reason is EndReason.TIMED_OUT:
        return f"{what} timed out: {detail}", FailureClass.TIMEOUT
    return (
        f"{what} ended without reporting the step's end ({detail}); the process was "
        "killed or crashed",
        FailureClass.INFRASTRUCTURE,
    )


def publish_end(
    runtime: AttemptRuntime,
    prepared: PreparedAttempt,
    launch: Launch,
    end: LaunchEnd,
    *,
    cancelled: bool = False,
) -> AttemptResult:
    """Publish the logs, then the entrypoint's held end or the supervisor's verdict."""
    ids = prepared.ids
    leading: list[Event] = []
    if end.logs:
        leading.append(
            attempt_event(
                ids.run_id,
                EventKind.STEP_LOG,
                f"last {len(end.logs)} lines of {launch.name}:\n" + "\n".join(end.logs),
                ids=ids,
                level="INFO",
                source=launch.launcher,
                container=launch.name,
                logs=list(end.logs),
            )
        )
    message, failure_class = verdict(launch, end, cancelled=cancelled)
    fallback = failure_event(
        ids.run_id,
        message,
        ids=ids,
        failure_class=failure_class,
        retryable=failure_class is not FailureClass.CANCELLED,
        error_type=f"Launch{end.reason.value.title().replace('_', '')}",
        exit_code=end.exit_code,
        end_reason=end.reason.value,
        # The step never ran: the coordinator does not count it against its retries.
        not_started=end.reason is EndReason.NOT_STARTED,
    )
    ends = AttemptEnds(runtime.client, url=runtime.redis_url)
    if end.reason is EndReason.TIMED_OUT:
        # The deadline stopped it: what the entrypoint held when SIGTERM reached it
        # ("cancelled") is not why it ended, so the supervisor's verdict is published.
        runtime.client.delete(keys.attempt_end(ids.run_id, ids.attempt_id))
    published = ends.publish(ids.run_id, ids.attempt_id, leading=leading, fallback=[fallback])
    if not published.published:
        return AttemptResult("dropped", ids, holder="another supervisor")
    if not published.reported:
        return AttemptResult("failure", ids, error=fallback.data["error"])
    last = published.held[-1]
    if last.kind is EventKind.STEP_SUCCESS:
        return AttemptResult("success", ids)
    return AttemptResult("failure", ids, error=last.data.get("error") or {})
