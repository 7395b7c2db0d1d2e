"""A step's config: unknown keys are refused, naming the key and the valid ones, unless
the step's schema itself allows extras."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from coreexec import StepContext, job, step
from coreexec.errors import ConfigError


class Region(BaseModel):
    name: str = "eu"


class ExtractConfig(BaseModel):
    rows_per_region: int = 10
    region: Region = Region()


class LenientConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    rows_per_region: int = 10


@step(config_schema=ExtractConfig)
def extract(context: StepContext) -> int:
    assert isinstance(context.config, ExtractConfig)
    return context.config.rows_per_region


@step(config_schema=LenientConfig)
def lenient(context: StepContext) -> int:
    assert isinstance(context.config, LenientConfig)
    return context.config.rows_per_region


@job
def extract_job() -> None:
    extract()
    lenient()


def _run(config: dict[str, object]) -> int:
    result = extract_job.execute_in_process(run_config={"steps": config})
    return int(result.output_for("extract"))


def test_a_typo_in_a_step_config_is_refused_naming_key_and_valid_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        _run({"extract": {"config": {"rows_per_regon": 5}}})
    message = str(caught.value)
    assert message.startswith("run_config.steps.extract.config.rows_per_regon: unknown key")
    assert "did you mean 'rows_per_region'?" in message
    assert "rows_per_region, region" in message
    assert caught.value.path == "run_config.steps.extract.config.rows_per_regon"


def test_unknown_keys_of_a_nested_model_are_refused_too() -> None:
    with pytest.raises(ConfigError, match=r"config\.region\.nmae: unknown key; did you mean"):
        _run({"extract": {"config": {"region": {"nmae": "us"}}}})


def test_known_keys_still_work() -> None:
    assert _run({"extract": {"config": {"rows_per_region": 5, "region": {"name": "us"}}}}) == 5


def test_a_schema_that_allows_extras_gets_them() -> None:
    result = extract_job.execute_in_process(
        run_config={"steps": {"lenient": {"config": {"rows_per_region": 3, "note": "x"}}}}
    )
    assert result.output_for("lenient") == 3
