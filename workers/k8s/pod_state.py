"""What a pod's status says about an attempt: scheduled yet, started yet, ended how.

Pure functions over the pod as the API returns it (JSON), so the launcher's decisions
can be read and tested apart from any watch: :func:`pod_view` reads the fields, and
:func:`blocking_problem` names a waiting reason that no amount of waiting mends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

IMAGE_ERRORS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}
)
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
FAIL_AT_ONCE = IMAGE_ERRORS | CONFIG_ERRORS
"""Waiting reasons that fail the attempt at once: the container will not start."""


def parse_time(stamp: str | None) -> float | None:
    """An RFC 3339 timestamp of the API (``2026-12-02T00:41:00Z``) as epoch seconds."""
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str
    message: str


@dataclass(frozen=True)
class PodView:
    """The fields of a pod the launcher decides on."""

    name: str
    uid: str
    phase: str
    created_at: float | None
    scheduled_at: float | None
    unschedulable: str
    """The scheduler's message while PodScheduled is False (``0/3 nodes are available...``)."""
    waiting_reason: str
    waiting_message: str
    running: bool
    terminated: Terminated | None
    pod_reason: str
    """The pod's own reason once failed: ``Evicted``, ``Preempting``, ``DeadlineExceeded``."""
    pod_message: str
    disruption: str
    """A DisruptionTarget condition's reason (preemption, eviction, taint manager)."""
    deleting: bool

    @property
    def ended(self) -> bool:
        return self.terminated is not None or self.phase in ("Succeeded", "Failed")


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in status.get("conditions") or []}


def _container(status: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = status.get("containerStatuses") or []
    return statuses[0] if statuses else {}


def pod_view(pod: Mapping[str, Any]) -> PodView:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    conds = _conditions(status)
    scheduled = conds.get("PodScheduled", {})
    state = _container(status).get("state") or {}
    waiting = state.get("waiting") or {}
    ended = state.get("terminated")
    terminated = None
    if ended:
        terminated = Terminated(
            int(ended.get("exitCode", -1)), ended.get("reason") or "", ended.get("message") or ""
        )
    disruption = conds.get("DisruptionTarget", {})
    return PodView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        phase=status.get("phase") or "Pending",
        created_at=parse_time(meta.get("creationTimestamp")),
        scheduled_at=(
            parse_time(scheduled.get("lastTransitionTime"))
            if scheduled.get("status") == "True"
            else None
        ),
        unschedulable=(
            scheduled.get("message") or scheduled.get("reason") or ""
            if scheduled.get("status") == "False"
            else ""
        ),
        waiting_reason=waiting.get("reason") or "",
        waiting_message=waiting.get("message") or "",
        running="running" in state,
        terminated=terminated,
        pod_reason=status.get("reason") or "",
        pod_message=status.get("message") or "",
        disruption=(disruption.get("reason") or "") if disruption.get("status") == "True" else "",
        deleting=bool(meta.get("deletionTimestamp")),
    )


def blocking_problem(view: PodView, image: str) -> str | None:
    """A message when the container cannot start (image or config), else None."""
    if view.waiting_reason not in FAIL_AT_ONCE:
        return None
    if view.waiting_reason in IMAGE_ERRORS:
        what = f"image {image!r} cannot be pulled ({view.waiting_reason})"
    else:
        what = f"the container cannot be created ({view.waiting_reason})"
    return f"{what}: {view.waiting_message}" if view.waiting_message else what
