"""@step, @job and Definitions: signatures, wiring, keys, errors."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from coreexec import Definitions, Out, RetryPolicy, StepContext, job, step
from coreexec.errors import DefinitionError
from coreexec.tags import PRIORITY_TAG


@step
def source() -> int:
    return 1


@step
def add_one(value: int) -> int:
    return value + 1


def test_step_reads_inputs_hints_and_context_from_signature() -> None:
    class Cfg(BaseModel):
        n: int = 1

    @step(
        tags={"database": "warehouse", PRIORITY_TAG: 5},
        config_schema=Cfg,
        retry_policy=RetryPolicy(max_retries=2),
    )
    def transform(context: StepContext, rows: list[int], scale: float = 1.0) -> list[float]:
        """Scales rows."""
        return [row * scale for row in rows]

    assert transform.name == "transform"
    assert transform.takes_context
    assert transform.input_names == ("rows", "scale")
    assert transform.inputs[0].annotation == list[int]
    assert transform.inputs[1].has_default and transform.inputs[1].default == 1.0
    assert transform.outputs == ("result",)
    assert transform.tags == {"database": "warehouse", PRIORITY_TAG: "5"}
    assert transform.description == "Scales rows."
    assert transform.retry_policy == RetryPolicy(max_retries=2)


def test_step_outside_a_job_is_a_plain_function() -> None:
    assert add_one(41) == 42


def test_same_step_twice_gets_distinct_keys_and_alias() -> None:
    @job
    def chain() -> None:
        add_one(add_one(add_one.alias("first")(source())))

    assert list(chain.nodes) == ["source", "first", "add_one", "add_one_2"]
    assert chain.nodes["add_one"].inputs["value"].sources[0].step_key == "first"


def test_multiple_outputs_wire_separately() -> None:
    @step(out={"low": Out(), "high": Out()})
    def split() -> tuple[int, int]:
        return 1, 9

    @job
    def two() -> None:
        low, high = split()
        add_one.alias("a")(low)
        add_one.alias("b")(high)

    assert two.nodes["b"].inputs["value"].sources[0].output_name == "high"
    result = two.execute_in_process()
    assert result.output_for("a") == 2
    assert result.output_for("b") == 10
    assert result.output_for("split", "high") == 9


def test_unwired_input_names_step_and_input() -> None:
    with pytest.raises(DefinitionError, match="input 'value' of step 'add_one' is not wired"):

        @job
        def missing() -> None:
            add_one()


def test_constant_input_is_rejected_with_the_fix() -> None:
    with pytest.raises(DefinitionError, match="inputs must be outputs of other steps"):

        @job
        def constant() -> None:
            add_one(3)


def test_duplicate_alias_and_unknown_kwarg_are_rejected() -> None:
    with pytest.raises(DefinitionError, match="two steps use the key 'x'"):

        @job
        def dup() -> None:
            source.alias("x")()
            source.alias("x")()

    with pytest.raises(DefinitionError, match="has no input 'nope'"):

        @job
        def unknown() -> None:
            add_one(nope=source())


def test_bad_tags_are_rejected() -> None:
    with pytest.raises(DefinitionError, match="must be an integer"):
        step(name="s", tags={PRIORITY_TAG: "high"})(lambda: 1)
    with pytest.raises(DefinitionError, match="string or an integer"):
        step(name="s", tags={"x": 1.5})(lambda: 1)  # type: ignore[dict-item]


def test_empty_job_and_job_with_parameters_are_rejected() -> None:
    with pytest.raises(DefinitionError, match="places no steps"):

        @job
        def empty() -> None:
            pass

    with pytest.raises(DefinitionError, match="takes no parameters"):
        job(lambda x: None)  # type: ignore[arg-type]


def test_definitions_lookup_and_executor_binding() -> None:
    from coreexec.executors import in_process_executor

    @job
    def one() -> None:
        source()

    defs = Definitions(jobs=[one], executor=in_process_executor)
    assert defs.job_names == ("one",)
    assert defs.get_job("one").executor_def is in_process_executor
    with pytest.raises(DefinitionError, match="no job named 'two'"):
        defs.get_job("two")
    with pytest.raises(DefinitionError, match="two jobs are named"):
        Definitions(jobs=[one, one])
