"""The executor framework: definitions, config validation, requirements, precedence.

Nothing here starts a worker process: runs use the in-process executor, and the
multiprocess executor is only configured and checked.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from coreexec import Definitions, EventKind, Instance, RetryPolicy, execute_job, job, step
from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.errors import ConfigError, RequirementError
from coreexec.execution.dispatcher import StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors import (
    DispatchingExecutor,
    Executor,
    ExecutorDefinition,
    ExecutorRequirement,
    InitExecutorContext,
    default_executor_def,
    executor,
    in_process_executor,
    multi_or_in_process_executor,
    multiprocess_executor,
)
from coreexec.executors.base import RetriesConfig
from coreexec.executors.multi_or_in_process import MultiOrInProcessConfig
from coreexec.executors.multiprocess import (
    MultiprocessConfig,
    StartMethodConfig,
    default_preload,
    usable_cpus,
)
from coreexec.executors.process_pool import StartMethod, describe_exit
from coreexec.plan import PlannedStep
from coreexec.reference import load_job
from coreexec.runs.create import create_run, resolve_executor_def
from coreexec.step_runner import StepRun, run_step

JOBS = "tests.jobs.multiprocess_jobs"


@step
def where() -> int:
    return os.getpid()


@job
def local_job() -> None:
    where()


def executors_of(result: Any) -> list[str]:
    return [e.message for e in result.events if e.kind is EventKind.RUN_STARTING]


# -- config validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "config", "path"),
    [
        (multiprocess_executor, {"max_concurrent": -1}, "config.max_concurrent"),
        (multiprocess_executor, {"max_concurent": 2}, "config.max_concurent"),
        (multiprocess_executor, {"retries": {"enabeld": {}}}, "config.retries.enabeld"),
        (multiprocess_executor, {"start_method": {"fork": {}}}, "config.start_method.fork"),
        (
            multiprocess_executor,
            {"start_method": {"forkserver": {"preload_module": ["x"]}}},
            "config.start_method.forkserver.preload_module",
        ),
        (
            multiprocess_executor,
            {"tag_concurrency_limits": [{"key": "db", "value": "w"}]},
            "config.tag_concurrency_limits.0.limit",
        ),
        (
            multiprocess_executor,
            {"tag_concurrency_limits": [{"key": "db", "limit": -2}]},
            "config.tag_concurrency_limits.0.limit",
        ),
        (
            multi_or_in_process_executor,
            {"multiprocess": {"max_concurrent": "many"}},
            "config.multiprocess.max_concurrent",
        ),
        (
            multi_or_in_process_executor,
            {"in_process": {"retries": {"sometimes": {}}}},
            "config.in_process.retries.sometimes",
        ),
        (multi_or_in_process_executor, {"threads": {}}, "config.threads"),
    ],
)
def test_bad_executor_config_names_the_field(
    definition: ExecutorDefinition, config: dict[str, Any], path: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        definition.resolve_config(config)
    assert caught.value.path == f"run_config.execution.{path}"
    assert str(caught.value).startswith(f"run_config.execution.{path}:")


@pytest.mark.parametrize(
    ("definition", "config", "words"),
    [
        (
            multiprocess_executor,
            {"start_method": {"spawn": {}, "forkserver": {}}},
            "either forkserver",
        ),
        (multiprocess_executor, {"retries": {"enabled": {}, "disabled": {}}}, "not both"),
        (
            multi_or_in_process_executor,
            {"multiprocess": {}, "in_process": {}},
            "either multiprocess",
        ),
    ],
)
def test_config_that_selects_two_things_is_refused(
    definition: ExecutorDefinition, config: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        definition.resolve_config(config)
    assert caught.value.path is not None
    assert caught.value.path.startswith("run_config.execution.config")


def test_bad_config_in_run_config_fails_before_a_run_exists(tmp_path: Path) -> None:
    instance = Instance.at(tmp_path)
    with pytest.raises(ConfigError, match=r"execution\.config\.multiprocess\.max_concurrent"):
        execute_job(
            f"{JOBS}:chain",
            {"execution": {"config": {"multiprocess": {"max_concurrent": -4}}}},
            instance=instance,
        )
    assert instance.storage.list_runs() == []


def test_configured_validates_at_definition_time() -> None:
    with pytest.raises(ConfigError, match=r"multiprocess\.configured\.max_concurrent"):
        multiprocess_executor.configured({"max_concurrent": -1})
    four = multiprocess_executor.configured({"max_concurrent": 4})
    config = four.resolve_config(None)
    assert isinstance(config, MultiprocessConfig) and config.max_concurrent == 4
    with pytest.raises(ConfigError, match="already configured in code"):
        four.resolve_config({"max_concurrent": 2})


def test_valid_multiprocess_config_and_its_defaults() -> None:
    config = multiprocess_executor.resolve_config(
        {
            "max_concurrent": 3,
            "retries": {"disabled": {}},
            "start_method": {"forkserver": {"preload_modules": ["json"]}},
            "tag_concurrency_limits": [
                {"key": "database", "value": "warehouse", "limit": 2},
                {"key": "team", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
                {"key": "gpu", "limit": 1},
            ],
        }
    )
    assert isinstance(config, MultiprocessConfig)
    assert config.worker_count == 3
    assert not config.retries.is_enabled
    assert config.start_method.method is StartMethod.FORKSERVER
    assert len(config.tag_concurrency_limits or []) == 3
    default = multiprocess_executor.resolve_config(None)
    assert isinstance(default, MultiprocessConfig)
    assert default.start_method.method is StartMethod.FORKSERVER
    assert default.retries.is_enabled


@pytest.mark.parametrize("value", [None, 0])
def test_max_concurrent_none_or_zero_means_cpu_count(value: int | None) -> None:
    config = MultiprocessConfig(max_concurrent=value)
    assert config.worker_count == usable_cpus() >= 1


def test_yaml_nulls_select_the_option() -> None:
    # ``disabled:`` / ``spawn:`` / ``in_process:`` with nothing after them load as None.
    assert not RetriesConfig.model_validate({"disabled": None}).is_enabled
    assert StartMethodConfig.model_validate({"spawn": None}).method is StartMethod.SPAWN
    chosen = MultiOrInProcessConfig.model_validate({"in_process": None})
    assert chosen.in_process is not None


def test_default_preload_holds_the_worker_and_the_jobs_module() -> None:
    assert default_preload("pkg.jobs:etl") == ("coreexec.executors.multiprocess", "pkg.jobs")
    assert "jobs.py" not in " ".join(default_preload("path/to/jobs.py:etl"))


def test_exit_descriptions_name_the_signal() -> None:
    assert describe_exit(-9).startswith("was killed by SIGKILL")
    assert "out-of-memory" in describe_exit(-9)
    assert describe_exit(-11) == "was killed by SIGSEGV"
    assert describe_exit(3) == "exited with code 3"


def test_definitions_describe_themselves() -> None:
    for definition in (in_process_executor, multiprocess_executor, multi_or_in_process_executor):
        assert definition.description
    assert "pool of worker processes" in (multiprocess_executor.description or "")


# -- requirements ------------------------------------------------------------------------


def test_locally_defined_job_under_multiprocess_says_how_to_fix_it(tmp_path: Path) -> None:
    @job(executor_def=multiprocess_executor)
    def inner() -> None:
        where()

    with pytest.raises(RequirementError) as caught:
        create_run(inner, instance=Instance.at(tmp_path))
    message = str(caught.value)
    assert "executor 'multiprocess'" in message and "'inner'" in message
    assert "module level" in message and "package.module:attribute" in message


def test_default_executor_requirement_error_offers_in_process(tmp_path: Path) -> None:
    @job
    def inner() -> None:
        where()

    with pytest.raises(RequirementError) as caught:
        execute_job(inner, instance=Instance.at(tmp_path))
    message = str(caught.value)
    assert "module level" in message
    assert "{'execution': {'config': {'in_process': {}}}}" in message
    assert "execute_in_process()" in message


def test_ephemeral_instance_under_multiprocess_says_how_to_fix_it() -> None:
    with pytest.raises(RequirementError, match=r"ephemeral.*Instance\.from_env\(\)"):
        execute_job(f"{JOBS}:chain", instance=Instance.ephemeral_instance())


def test_in_process_choice_needs_nothing(tmp_path: Path) -> None:
    @job
    def inner() -> None:
        where()

    in_process = {"execution": {"config": {"in_process": {}}}}
    assert (
        multi_or_in_process_executor.requirements_for(
            multi_or_in_process_executor.resolve_config(in_process["execution"]["config"])
        )
        == frozenset()
    )
    for instance in (Instance.at(tmp_path), Instance.ephemeral_instance()):
        result = execute_job(inner, in_process, instance=instance)
        assert result.success and result.output_for("where") == os.getpid()


def test_bad_executor_tag_fails_before_any_step_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"coreexec/executor='on_the_moon'.*'in_process'"):
        execute_job(f"{JOBS}:bad_executor_tag", instance=Instance.at(tmp_path))


# -- precedence ----------------------------------------------------------------------------


def test_precedence_job_then_definitions_then_default() -> None:
    assert default_executor_def() is multi_or_in_process_executor

    @job
    def bare() -> None:
        where()

    @job(executor_def=in_process_executor)
    def pinned() -> None:
        where()

    assert resolve_executor_def(bare) is multi_or_in_process_executor
    defs = Definitions(jobs=[bare, pinned], executor=multiprocess_executor)
    assert resolve_executor_def(defs.get_job("bare")) is multiprocess_executor
    assert resolve_executor_def(defs.get_job("pinned")) is in_process_executor
    loaded = load_job(f"{JOBS}:defs_in_process.unpinned")
    assert resolve_executor_def(loaded) is in_process_executor


def test_definitions_executor_runs_the_job(tmp_path: Path) -> None:
    result = execute_job(f"{JOBS}:defs_in_process.unpinned", instance=Instance.at(tmp_path))
    assert executors_of(result) == ["executor in_process"]
    assert result.output_for("where") == os.getpid()


def test_execute_in_process_ignores_the_jobs_executor() -> None:
    @job(executor_def=multiprocess_executor.configured({"max_concurrent": 2}))
    def pinned() -> None:
        where()

    result = pinned.execute_in_process()
    assert executors_of(result) == ["executor in_process"]
    assert result.output_for("where") == os.getpid()
    # A run config written for the default executor is accepted too.
    config = {"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}}
    assert load_job(f"{JOBS}:chain").execute_in_process(config).success


def test_run_config_configures_the_in_process_choice() -> None:
    @step(retry_policy=RetryPolicy(max_retries=3))
    def flaky() -> int:
        raise RuntimeError("no")

    @job
    def failing() -> None:
        flaky()

    config = {"execution": {"config": {"in_process": {"retries": {"disabled": None}}}}}
    result = execute_job(failing, config, instance=Instance.ephemeral_instance())
    assert not result.success
    assert executors_of(result) == ["executor multi_or_in_process"]
    starts = [e for e in result.events if e.kind is EventKind.STEP_START]
    assert len(starts) == 1  # retries: {disabled: null} took effect


# -- writing your own executor ---------------------------------------------------------------


class LastFirstConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = "lifo"


class LastFirstDispatcher(StepDispatcher):
    """Runs dispatched steps newest first, in this process, inside wait()."""

    max_in_flight = 3

    def __init__(self, run: RunContext, seen: list[str]) -> None:
        self.run = run
        self.seen = seen
        self.stack: deque[tuple[PlannedStep, StepAttempt]] = deque()
        self.sink: EventSink | None = None

    def start(self, sink: EventSink) -> None:
        self.sink = sink

    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        self.stack.append((step, attempt))

    def wait(self, timeout_s: float | None) -> None:
        assert self.sink is not None
        if not self.stack:
            return
        step, attempt = self.stack.pop()
        self.seen.append(step.key)
        run = self.run
        run_step(
            StepRun(
                run.run_id, run.job, step, attempt, run.run_config, run.io_manager, run.run_tags
            ),
            self.sink,
        )


class LastFirstExecutor(DispatchingExecutor):
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        return LastFirstDispatcher(run, self.seen)


class WholeRunExecutor(Executor):
    """Drives the run itself: every step in plan order, reporting through run.record."""

    def execute(self, run: RunContext) -> None:
        for number, planned in enumerate(run.plan.steps, start=1):
            attempt = StepAttempt(planned.key, 1, f"attempt-{number}")
            run_step(
                StepRun(
                    run.run_id,
                    run.job,
                    planned,
                    attempt,
                    run.run_config,
                    run.io_manager,
                    run.run_tags,
                ),
                run.record,
            )


def test_a_custom_dispatching_executor() -> None:
    seen: list[str] = []

    @executor(name="last_first", config_schema=LastFirstConfig)
    def last_first(context: InitExecutorContext) -> Executor:
        """Newest ready step first."""
        assert isinstance(context.config, LastFirstConfig)
        return LastFirstExecutor(seen)

    assert last_first.name == "last_first"
    assert last_first.description == "Newest ready step first."

    @step
    def a() -> int:
        return 1

    @step
    def b() -> int:
        return 2

    @step
    def c() -> int:
        return 3

    @job(executor_def=last_first)
    def three() -> None:
        a()
        b()
        c()

    result = execute_job(
        three,
        {"execution": {"config": {"label": "x"}}},
        instance=Instance.ephemeral_instance(),
    )
    assert result.success and seen == ["c", "b", "a"]
    with pytest.raises(ConfigError, match=r"run_config\.execution\.config\.lable"):
        execute_job(
            three, {"execution": {"config": {"lable": "x"}}}, instance=Instance.ephemeral_instance()
        )


def test_a_custom_executor_with_requirements_and_its_own_loop(tmp_path: Path) -> None:
    @executor(
        name="whole_run",
        requirements=[ExecutorRequirement.NON_EPHEMERAL_INSTANCE],
        description="Runs every step in plan order.",
    )
    def whole_run(context: InitExecutorContext) -> Executor:
        return WholeRunExecutor()

    @job(executor_def=whole_run)
    def two() -> None:
        where()
        where()

    with pytest.raises(RequirementError, match="ephemeral"):
        execute_job(two, instance=Instance.ephemeral_instance())
    result = execute_job(two, instance=Instance.at(tmp_path))
    assert result.success
    assert [e.step_key for e in result.events if e.kind is EventKind.STEP_SUCCESS] == [
        "where",
        "where_2",
    ]
