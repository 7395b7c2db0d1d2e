"""The execution plan: a job's steps as pure data, ordered, keyed and serialisable."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coreexec.composition import OutputRef
from coreexec.errors import PlanError
from coreexec.retry import Backoff, FailureClass, Jitter, RetryPolicy
from coreexec.tags import PRIORITY_TAG, parse_priority

if TYPE_CHECKING:
    from coreexec.job import JobDefinition

PLAN_FORMAT = 1


@dataclass(frozen=True)
class StepInput:
    """An input and the upstream outputs that feed it (several for fan-in)."""

    name: str
    sources: tuple[OutputRef, ...]
    fan_in: bool = False


@dataclass(frozen=True)
class PlannedStep:
    """One step of a plan."""

    key: str
    step_name: str
    inputs: tuple[StepInput, ...]
    outputs: tuple[str, ...]
    tags: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    retry_policy: RetryPolicy | None = None

    @property
    def upstream_keys(self) -> frozenset[str]:
        return frozenset(src.step_key for item in self.inputs for src in item.sources)


def _policy_to_dict(policy: RetryPolicy | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    return {
        "max_retries": policy.max_retries,
        "delay": policy.delay,
        "backoff": policy.backoff.value if policy.backoff else None,
        "jitter": policy.jitter.value if policy.jitter else None,
        "retry_on": sorted(item.value for item in policy.retry_on),
    }


def _policy_from_dict(body: Mapping[str, Any] | None) -> RetryPolicy | None:
    if body is None:
        return None
    return RetryPolicy(
        max_retries=int(body["max_retries"]),
        delay=body.get("delay"),
        backoff=Backoff(body["backoff"]) if body.get("backoff") else None,
        jitter=Jitter(body["jitter"]) if body.get("jitter") else None,
        retry_on=frozenset(FailureClass(item) for item in body["retry_on"]),
    )


class ExecutionPlan:
    """Steps in dependency order (every step after all of its upstream steps).

    Build one with :meth:`from_job`; :meth:`to_dict`/:meth:`from_dict` round-trip it
    through JSON, and loading checks the wiring again (unknown steps or outputs, cycles).
    """

    def __init__(
        self,
        job_name: str,
        steps: Iterable[PlannedStep],
        *,
        job_reference: str | None = None,
    ) -> None:
        self.job_name = job_name
        self.job_reference = job_reference
        self.steps: tuple[PlannedStep, ...] = tuple(steps)
        self._by_key: dict[str, PlannedStep] = {}
        self._index: dict[str, int] = {}
        for index, planned in enumerate(self.steps):
            if planned.key in self._by_key:
                raise PlanError(f"plan has two steps keyed {planned.key!r}", step_key=planned.key)
            self._by_key[planned.key] = planned
            self._index[planned.key] = index
        self._downstream: dict[str, tuple[str, ...]] | None = None

    @classmethod
    def from_job(cls, job: JobDefinition, *, job_reference: str | None = None) -> ExecutionPlan:
        """The plan of ``job``; step priority comes from the step's tag, else the job's."""
        job_priority = parse_priority(job.tags.get(PRIORITY_TAG), owner=f"job {job.name!r}")
        steps = []
        for node in job.nodes.values():
            tag = node.step.tags.get(PRIORITY_TAG)
            priority = (
                parse_priority(tag, owner=f"step {node.key!r}") if tag is not None else job_priority
            )
            steps.append(
                PlannedStep(
                    key=node.key,
                    step_name=node.step.name,
                    inputs=tuple(
                        StepInput(name, binding.sources, binding.fan_in)
                        for name, binding in node.inputs.items()
                    ),
                    outputs=node.step.outputs,
                    tags=node.step.tags,
                    priority=priority,
                    retry_policy=node.step.retry_policy,
                )
            )
        # Job bodies place a step only after the steps whose outputs it takes, so the
        # placement order is already a topological order.
        return cls(job.name, steps, job_reference=job_reference or job.reference)

    def __len__(self) -> int:
        return len(self.steps)

    def __contains__(self, step_key: object) -> bool:
        return step_key in self._by_key

    def step(self, step_key: str) -> PlannedStep:
        try:
            return self._by_key[step_key]
        except KeyError:
            raise PlanError(
                f"plan of job {self.job_name!r} has no step {step_key!r}", step_key=step_key
            ) from None

    def index_of(self, step_key: str) -> int:
        return self._index[step_key]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._by_key)

    def downstream_of(self, step_key: str) -> tuple[str, ...]:
        """Keys of the steps that take an output of ``step_key``."""
        if self._downstream is None:
            downstream: dict[str, list[str]] = {key: [] for key in self._by_key}
            for planned in self.steps:
                for upstream in planned.upstream_keys:
                    downstream[upstream].append(planned.key)
            self._downstream = {key: tuple(value) for key, value in downstream.items()}
        return self._downstream[step_key]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "job_name": self.job_name,
            "job_reference": self.job_reference,
            "steps": [
                {
                    "key": s.key,
                    "step_name": s.step_name,
                    "inputs": [
                        {
                            "name": i.name,
                            "fan_in": i.fan_in,
                            "sources": [[src.step_key, src.output_name] for src in i.sources],
                        }
                        for i in s.inputs
                    ],
                    "outputs": list(s.outputs),
                    "tags": dict(s.tags),
                    "priority": s.priority,
                    "retry_policy": _policy_to_dict(s.retry_policy),
                }
                for s in self.steps
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ExecutionPlan:
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from exc
        return cls.from_dict(body)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> ExecutionPlan:
        """Load a plan; rejects unknown upstream steps or outputs and cycles, naming the step."""
        if body.get("format") != PLAN_FORMAT:
            raise PlanError(f"plan format {body.get('format')!r} is not {PLAN_FORMAT}")
        try:
            steps = [
                PlannedStep(
                    key=item["key"],
                    step_name=item["step_name"],
                    inputs=tuple(
                        StepInput(
                            name=i["name"],
                            sources=tuple(OutputRef(k, o) for k, o in i["sources"]),
                            fan_in=bool(i.get("fan_in", False)),
                        )
                        for i in item["inputs"]
                    ),
                    outputs=tuple(item["outputs"]),
                    tags=dict(item.get("tags") or {}),
                    priority=int(item.get("priority", 0)),
                    retry_policy=_policy_from_dict(item.get("retry_policy")),
                )
                for item in body["steps"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"plan is malformed: {exc!r}") from exc
        return cls(
            str(body["job_name"]), _topological(steps), job_reference=body.get("job_reference")
        )


def _topological(steps: list[PlannedStep]) -> list[PlannedStep]:
    """The steps in an order where every step comes after the steps it reads from."""
    by_key = {s.key: s for s in steps}
    _check_sources(steps, by_key)
    waiting = {s.key: len(s.upstream_keys) for s in steps}
    downstream: dict[str, list[str]] = {s.key: [] for s in steps}
    for planned in steps:
        for upstream_key in planned.upstream_keys:
            downstream[upstream_key].append(planned.key)
    ordered: list[PlannedStep] = []
    frontier = deque(s.key for s in steps if waiting[s.key] == 0)
    while frontier:
        key = frontier.popleft()
        ordered.append(by_key[key])
        for child in downstream[key]:
            waiting[child] -= 1
            if waiting[child] == 0:
                frontier.append(child)
    if len(ordered) != len(steps):
        stuck = sorted(key for key, count in waiting.items() if count > 0)
        raise PlanError(
            f"plan has a dependency cycle through steps: {', '.join(stuck[:10])}",
            step_key=stuck[0],
        )
    return ordered


def _check_sources(steps: list[PlannedStep], by_key: Mapping[str, PlannedStep]) -> None:
    """Every input reads an output that its upstream step declares."""
    for planned in steps:
        for item in planned.inputs:
            for src in item.sources:
                upstream = by_key.get(src.step_key)
                if upstream is None:
                    raise PlanError(
                        f"step {planned.key!r} input {item.name!r} reads from unknown step "
                        f"{src.step_key!r}",
                        step_key=planned.key,
                    )
                if src.output_name not in upstream.outputs:
                    raise PlanError(
                        f"step {planned.key!r} input {item.name!r} reads output "
                        f"{src.output_name!r} that step {src.step_key!r} does not have "
                        f"(it has: {', '.join(upstream.outputs)})",
                        step_key=planned.key,
                    )
