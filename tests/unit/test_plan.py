"""ExecutionPlan: order, priority, serialisation, validation of loaded plans."""

from __future__ import annotations

import json

import pytest

from coreexec import ExecutionPlan, RetryPolicy, job, step
from coreexec.errors import PlanError
from coreexec.retry import Backoff, Jitter
from coreexec.tags import PRIORITY_TAG


@step
def root() -> int:
    return 1


@step(tags={PRIORITY_TAG: 3}, retry_policy=RetryPolicy(2, 0.5, Backoff.LINEAR, Jitter.FULL))
def left(value: int) -> int:
    return value


@step
def right(value: int) -> int:
    return value


@step
def join(a: int, b: int) -> int:
    return a + b


@job(tags={PRIORITY_TAG: -1})
def diamond() -> None:
    start = root()
    join(left(start), right(start))


def test_plan_has_keys_upstreams_tags_and_priority() -> None:
    plan = ExecutionPlan.from_job(diamond)
    assert plan.keys == ("root", "left", "right", "join")
    assert plan.step("join").upstream_keys == {"left", "right"}
    assert plan.step("left").priority == 3
    assert plan.step("right").priority == -1  # the job's tag is the default
    assert plan.downstream_of("root") == ("left", "right")


def test_plan_round_trips_through_json() -> None:
    plan = ExecutionPlan.from_job(diamond, job_reference="pkg.mod:diamond")
    loaded = ExecutionPlan.from_json(plan.to_json())
    assert loaded.to_dict() == plan.to_dict()
    assert loaded.step("left").retry_policy == plan.step("left").retry_policy
    assert loaded.job_reference == "pkg.mod:diamond"


def _body() -> dict:  # type: ignore[type-arg]
    return json.loads(ExecutionPlan.from_job(diamond).to_json())  # type: ignore[no-any-return]


def test_loaded_plan_with_unknown_upstream_names_the_step() -> None:
    body = _body()
    body["steps"][3]["inputs"][0]["sources"] = [["ghost", "result"]]
    with pytest.raises(PlanError, match="step 'join' input 'a' reads from unknown step 'ghost'"):
        ExecutionPlan.from_dict(body)


def test_loaded_plan_with_unknown_output_names_it() -> None:
    body = _body()
    body["steps"][1]["inputs"][0]["sources"] = [["root", "nope"]]
    with pytest.raises(PlanError, match="output 'nope'"):
        ExecutionPlan.from_dict(body)


def test_loaded_plan_with_cycle_is_rejected() -> None:
    body = _body()
    body["steps"][0]["inputs"] = [{"name": "x", "fan_in": False, "sources": [["join", "result"]]}]
    with pytest.raises(PlanError, match="cycle"):
        ExecutionPlan.from_dict(body)


def test_loaded_plan_is_reordered_topologically() -> None:
    body = _body()
    body["steps"].reverse()
    assert ExecutionPlan.from_dict(body).keys[0] == "root"


def test_ten_thousand_step_plan_builds() -> None:
    @step
    def leaf(value: int) -> int:
        return value

    @job
    def wide() -> None:
        start = root()
        for index in range(10_000):
            leaf.alias(f"leaf_{index}")(start)

    plan = ExecutionPlan.from_job(wide)
    assert len(plan) == 10_001
    assert len(plan.downstream_of("root")) == 10_000
    assert ExecutionPlan.from_json(plan.to_json()).keys == plan.keys
