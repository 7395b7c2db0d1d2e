"""Following one attempt's Job to its end from what the namespace watch delivers.

The decision is taken afresh on every change (:meth:`Follower.decide`): the pod ended
(exit code, ``OOMKilled`` with the limit as the spec gave it, ``Evicted`` or preempted);
the pod cannot start (an image or config error: at once, with the kubelet's reason); no
pod was created (the Job's ``FailedCreate`` event: at once); the pod is not scheduled
within ``schedule_timeout_s`` of its creation (the scheduler's reason) or not running
within ``start_timeout_s`` of being scheduled; the Job's deadline passed
(``activeDeadlineSeconds``: a timeout); the pod or the Job vanished. Between changes the
follower sleeps on its tracker until the next of those deadlines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from workers.k8s.api import KubeApi, Obj
from workers.k8s.config import K8sConfig
from workers.k8s.pod_state import PodView, blocking_problem, pod_view
from workers.k8s.pod_watch import Tracker
from workers.launcher import EndReason, Launch, LaunchEnd

_MAX_WAIT_S = 30.0
_GONE_RECHECK_S = 1.0
_DEADLINE_STATUS_WAIT_S = 5.0
"""How long after its deadline a pod's end waits for the Job to say DeadlineExceeded: the
Job controller stops the pods first and writes the Job's condition after."""
_DEADLINE_SLACK_S = 2.0
"""The Job's deadline counts from its ``startTime``, whole seconds on the API server's
clock: a pod may be stopped for it this much before our own reckoning says."""


@dataclass(frozen=True)
class Decision:
    end: LaunchEnd | None
    check_at: float | None = None
    """When to decide again even if nothing arrives (a timeout falling due)."""


def warning_lines(events: list[Obj]) -> list[str]:
    return [f"{e.get('reason')}: {e.get('message')}" for e in events]


def memory_limit(pod: Obj) -> str:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    return str(limits["memory"]) if "memory" in limits else "none set"


class Follower:
    """Decides the state of one launched attempt; see the module docstring."""

    def __init__(
        self,
        api: KubeApi,
        config: K8sConfig,
        launch: Launch,
        tracker: Tracker,
        *,
        created_at: float,
        image: str,
        terminated: Callable[[], bool],
    ) -> None:
        self.api = api
        self.config = config
        self.launch = launch
        self.tracker = tracker
        self.created_at = created_at
        self.image = image
        self.terminated = terminated

    def run(self) -> LaunchEnd:
        while True:
            seen = self.tracker.version
            decision = self.decide()
            if decision.end is not None:
                return decision.end
            wait_s = _MAX_WAIT_S
            if decision.check_at is not None:
                wait_s = max(0.0, min(wait_s, decision.check_at - time.time()))
            self.tracker.wait(seen, wait_s)

    def decide(self) -> Decision:
        with self.tracker.cond:
            pod = self.tracker.pod
            gone = self.tracker.pod_gone
            events = list(self.tracker.events)
        view = pod_view(pod) if pod is not None else None
        if view is not None and view.ended:  # even if the pod is gone since (a TTL)
            assert pod is not None
            if self._past_deadline(view):
                if self._deadline_passed():
                    return Decision(
                        self._end(EndReason.TIMED_OUT, None, self._deadline_text(), view, events)
                    )
                wait_until = self._deadline_at() + _DEADLINE_STATUS_WAIT_S
                if time.time() < wait_until:
                    return Decision(None, min(wait_until, time.time() + _GONE_RECHECK_S))
            return Decision(self.ended(pod, view, events))
        job_events = [e for e in events if (e.get("involvedObject") or {}).get("kind") == "Job"]
        for event in job_events:
            if event.get("reason") == "DeadlineExceeded":
                return Decision(
                    self._end(EndReason.TIMED_OUT, None, self._deadline_text(), view, events)
                )
        if view is None or gone:
            return self._without_pod(gone, job_events, events)
        return self._before_end(view, events)

    def _deadline_at(self) -> float:
        deadline_s = self.config.job_wait_timeout_s
        return self.created_at + deadline_s if deadline_s is not None else float("inf")

    def _past_deadline(self, view: PodView) -> bool:
        """Whether a pod that failed may have been stopped by the Job's deadline."""
        ended = view.terminated
        failed = ended is None or ended.exit_code != 0
        due = self._deadline_at() - _DEADLINE_SLACK_S
        return failed and not self.terminated() and time.time() >= due

    def _deadline_passed(self) -> bool:
        """Whether the Job failed by its deadline (a pod deleted under a running step:
        the Job controller's doing when activeDeadlineSeconds passed)."""
        if self.terminated():
            return False
        job = self.api.read_job(self.config.namespace, self.launch.name)
        conditions = ((job or {}).get("status") or {}).get("conditions") or []
        return any(
            c.get("type") == "Failed" and c.get("reason") == "DeadlineExceeded" for c in conditions
        )

    def _deadline_text(self) -> str:
        return (
            f"the Job ran longer than job_wait_timeout_s={self.config.job_wait_timeout_s}s "
            "(activeDeadlineSeconds)"
        )

    def _without_pod(self, gone: bool, job_events: list[Obj], events: list[Obj]) -> Decision:
        failed = [e for e in job_events if e.get("reason") == "FailedCreate"]
        if failed and not gone:
            return Decision(
                self._end(
                    EndReason.NOT_STARTED,
                    None,
                    f"the Job's pod could not be created: {failed[-1].get('message')}",
                    None,
                    events,
                )
            )
        if gone or self.terminated():
            # The pod (or, after a cancel, the Job) went away: ask the API what is left.
            job = self.api.read_job(self.config.namespace, self.launch.name)
            if job is None or gone:
                return Decision(self._vanished(job, events))
            return Decision(None, time.time() + _GONE_RECHECK_S)
        due = self.created_at + self.config.schedule_timeout_s
        if time.time() >= due:
            return Decision(
                self._end(
                    EndReason.NOT_STARTED,
                    None,
                    f"no pod was created within schedule_timeout_s="
                    f"{self.config.schedule_timeout_s:g}s",
                    None,
                    events,
                )
            )
        return Decision(None, due)

    def _vanished(self, job: Obj | None, events: list[Obj]) -> LaunchEnd:
        if self.terminated():
            return self._end(EndReason.TERMINATED, None, "the Job was deleted", None, events)
        if job is None:
            return self._end(
                EndReason.GONE,
                None,
                f"Job {self.launch.name} was deleted (its TTL, or by hand) before its end was seen",
                None,
                events,
            )
        return self._end(
            EndReason.KILLED, None, "the pod was deleted before it ended", None, events
        )

    def _before_end(self, view: PodView, events: list[Obj]) -> Decision:
        now = time.time()
        if view.scheduled_at is None:
            due = (view.created_at or self.created_at) + self.config.schedule_timeout_s
            if now < due:
                return Decision(None, due)
            reason = view.unschedulable or "no node was assigned"
            return Decision(
                self._end(
                    EndReason.NOT_STARTED,
                    None,
                    f"pod {view.name} was not scheduled within "
                    f"schedule_timeout_s={self.config.schedule_timeout_s:g}s: "
                    f"{reason}",
                    view,
                    events,
                )
            )
        if view.running:
            return Decision(None)
        problem = blocking_problem(view, self.image)
        if problem is not None:
            return Decision(self._end(EndReason.NOT_STARTED, None, problem, view, events))
        due = view.scheduled_at + self.config.start_timeout_s
        if now < due:
            return Decision(None, due)
        waiting = view.waiting_reason or "not running"
        return Decision(
            self._end(
                EndReason.NOT_STARTED,
                None,
                f"pod {view.name} was not running within start_timeout_s="
                f"{self.config.start_timeout_s:g}s of being scheduled "
                f"({waiting})",
                view,
                events,
            )
        )

    def ended(self, pod: Obj, view: PodView, events: list[Obj]) -> LaunchEnd:
        ended = view.terminated
        code = ended.exit_code if ended is not None else None
        if ended is not None and ended.reason == "OOMKilled":
            return self._end(
                EndReason.OOM_KILLED,
                code,
                f"out of memory (limit {memory_limit(pod)})",
                view,
                events,
            )
        if view.pod_reason == "Evicted" or view.disruption:
            why = view.pod_message or view.disruption
            return self._end(
                EndReason.KILLED,
                code,
                f"pod {view.name} was {view.pod_reason or 'disrupted'}: {why}",
                view,
                events,
            )
        if self.terminated():
            return self._end(EndReason.TERMINATED, code, f"stopped, exit code {code}", view, events)
        detail = f"exit code {code}" + (f" ({ended.reason})" if ended and ended.reason else "")
        return self._end(EndReason.EXITED, code, detail, view, events)

    def _end(
        self,
        reason: EndReason,
        code: int | None,
        detail: str,
        view: PodView | None,
        events: list[Obj],
    ) -> LaunchEnd:
        warnings = warning_lines(events)
        if warnings and reason is not EndReason.EXITED:
            detail += "; warning events: " + "; ".join(warnings[-5:])
        logs: tuple[str, ...] = ()
        if view is not None and self.config.log_lines and (view.running or view.ended):
            logs = self._logs(view.name)
        return LaunchEnd(reason, code, detail, logs=logs)

    def _logs(self, pod_name: str) -> tuple[str, ...]:
        try:
            text = self.api.read_log(self.config.namespace, pod_name, self.config.log_lines)
        except Exception:  # the pod went away or never ran: no log to save
            return ()
        return tuple(text.splitlines()[-self.config.log_lines :])
