"""execute_in_process and execute_job on the in-process executor: outputs, events, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from coreexec import (
    EventKind,
    Failure,
    Instance,
    RetryPolicy,
    RetryRequested,
    StepContext,
    execute_job,
    job,
    step,
)
from coreexec.errors import ConfigError, StepExecutionError
from coreexec.executors import in_process_executor
from coreexec.storage import RunStatus
from coreexec.tags import PRIORITY_TAG


@step
def one() -> int:
    return 1


@step
def double(x: int) -> int:
    return 2 * x


@step
def triple(x: int) -> int:
    return 3 * x


@step
def add(a: int, b: int) -> int:
    return a + b


@step
def gather(values: list[int]) -> list[int]:
    return values


def test_diamond_runs_and_returns_outputs() -> None:
    @job
    def diamond() -> None:
        root = one()
        add(double(root), triple(root))

    result = diamond.execute_in_process()
    assert result.success
    assert result.output_for("add") == 5
    kinds = [e.kind for e in result.events]
    assert kinds[0] is EventKind.RUN_STARTING and kinds[-1] is EventKind.RUN_SUCCESS
    assert kinds.count(EventKind.STEP_SUCCESS) == 4


def test_fan_out_fan_in_keeps_input_order() -> None:
    @job
    def fan() -> None:
        root = one()
        gather([add.alias(f"add_{i}")(root, double(root)) for i in range(5)])

    result = fan.execute_in_process()
    assert result.output_for("gather") == [3, 3, 3, 3, 3]
    assert len(result.step_keys_with(EventKind.STEP_SUCCESS)) == 12


def test_failing_step_skips_downstream_while_other_branches_finish() -> None:
    @step
    def explode(x: int) -> int:
        raise ValueError("no good")

    @job
    def branches() -> None:
        root = one()
        double(explode(root))
        triple(root)

    result = branches.execute_in_process(raise_on_error=False)
    assert not result.success
    assert result.status is RunStatus.FAILURE
    assert result.failed_steps == ["explode"]
    assert result.skipped_steps == ["double"]
    assert result.output_for("triple") == 3
    failure = next(e for e in result.events if e.kind is EventKind.STEP_FAILURE)
    assert failure.data["failure_class"] == "user_error"
    assert 'raise ValueError("no good")' in failure.data["error"]["traceback"]
    assert "step_runner" not in failure.data["error"]["traceback"]


def test_raise_on_error_keeps_the_users_exception_as_cause() -> None:
    @step
    def explode() -> int:
        raise KeyError("missing-key")

    @job
    def single() -> None:
        explode()

    with pytest.raises(StepExecutionError, match="step 'explode' failed") as info:
        single.execute_in_process()
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.step_key == "explode"


def test_flaky_step_succeeds_on_retry_and_logs_become_events() -> None:
    @step(retry_policy=RetryPolicy(max_retries=2, delay=0.01))
    def flaky(context: StepContext) -> int:
        context.log.info("attempt %d", context.attempt)
        if context.attempt < 3:
            raise ConnectionError("try again")
        return context.attempt

    @job
    def retrying() -> None:
        flaky()

    result = retrying.execute_in_process()
    assert result.output_for("flaky") == 3
    logs = [e.message for e in result.events if e.kind is EventKind.STEP_LOG]
    assert logs == ["attempt 1", "attempt 2", "attempt 3"]
    assert [e.kind for e in result.events].count(EventKind.STEP_UP_FOR_RETRY) == 2


def test_retry_requested_and_failure_without_retry() -> None:
    @step
    def asks(context: StepContext) -> int:
        if context.attempt == 1:
            raise RetryRequested(max_retries=1, seconds_to_wait=0.01)
        return 7

    @step(retry_policy=RetryPolicy(max_retries=5))
    def refuses() -> int:
        raise Failure("bad data, retrying will not help")

    @job
    def both() -> None:
        asks()
        refuses()

    result = both.execute_in_process(raise_on_error=False)
    assert result.output_for("asks") == 7
    assert result.failed_steps == ["refuses"]
    assert len([e for e in result.events_for("refuses") if e.kind is EventKind.STEP_START]) == 1


def test_multiple_outputs_returned_wrongly_fail_with_explanation() -> None:
    from coreexec import Out

    @step(out={"a": Out(), "b": Out()})
    def pair() -> tuple[int, int]:
        return 1  # type: ignore[return-value]

    @job
    def wrong() -> None:
        pair()

    result = wrong.execute_in_process(raise_on_error=False)
    failure = next(e for e in result.events if e.kind is EventKind.STEP_FAILURE)
    assert "must return a tuple of 2 values" in failure.message


def test_priority_decides_dispatch_order() -> None:
    order: list[str] = []

    def make(name: str, priority: int):  # type: ignore[no-untyped-def]
        @step(name=name, tags={PRIORITY_TAG: priority})
        def record(x: int) -> int:
            order.append(name)
            return x

        return record

    low, mid, high = make("low", -10), make("mid", 0), make("high", 10)

    @job
    def prioritised() -> None:
        root = one()
        low(root)
        mid(root)
        high(root)

    prioritised.execute_in_process()
    assert order == ["high", "mid", "low"]


class Limits(BaseModel):
    limit: int


def test_bad_run_config_names_the_field() -> None:
    @step(config_schema=Limits)
    def configured(context: StepContext) -> int:
        assert isinstance(context.config, Limits)
        return context.config.limit

    @job
    def with_config() -> None:
        configured()

    with pytest.raises(ConfigError, match=r"run_config\.steps\.configured\.config\.limit"):
        with_config.execute_in_process({"steps": {"configured": {"config": {"limit": "many"}}}})
    with pytest.raises(
        ConfigError, match=r"run_config\.steps\.configured\.config\.limit: Field required"
    ):
        with_config.execute_in_process()
    with pytest.raises(ConfigError, match="has no step 'nope'"):
        with_config.execute_in_process({"steps": {"nope": {"config": {}}}})
    with pytest.raises(ConfigError, match=r"run_config\.stepz: unknown key"):
        with_config.execute_in_process({"stepz": {}})
    result = with_config.execute_in_process({"steps": {"configured": {"config": {"limit": 4}}}})
    assert result.output_for("configured") == 4


def test_bad_executor_config_names_the_field() -> None:
    @job(executor_def=in_process_executor)
    def plain() -> None:
        one()

    with pytest.raises(ConfigError, match=r"run_config\.execution\.config\.retries\.enabeld"):
        execute_job(
            plain,
            {"execution": {"config": {"retries": {"enabeld": {}}}}},
            instance=Instance.ephemeral_instance(),
        )


def test_execute_job_persists_run_and_outputs(tmp_path: Path) -> None:
    instance = Instance.at(tmp_path)
    result = execute_job("tests.jobs.core_jobs:scale_job", instance=instance)
    assert result.success and result.output_for("total") == 12
    stored = instance.storage.get_run(result.run_id)
    assert stored.status is RunStatus.SUCCESS
    assert stored.job_reference == "tests.jobs.core_jobs:scale_job"
    assert (tmp_path / "storage" / result.run_id / "total" / "result").is_file()


def test_disabled_retries_in_run_config() -> None:
    @step(retry_policy=RetryPolicy(max_retries=3))
    def always_fails() -> int:
        raise RuntimeError("x")

    @job(executor_def=in_process_executor)
    def failing() -> None:
        always_fails()

    result = execute_job(
        failing,
        {"execution": {"config": {"retries": {"disabled": {}}}}},
        instance=Instance.ephemeral_instance(),
    )
    assert not result.success
    starts = [e for e in result.events if e.kind is EventKind.STEP_START]
    assert len(starts) == 1
