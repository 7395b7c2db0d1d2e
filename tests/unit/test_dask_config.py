"""The Dask executor's config and step tags, checked before anything runs, and the
promise that coreexec imports Dask only for the Dask executor."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from coreexec.errors import ConfigError
from coreexec.executors.dask import DaskConfig, dask_executor
from coreexec.executors.dask_dispatcher import RESOURCES_TAG, step_resources
from coreexec.plan import PlannedStep


def parse(config: dict[str, Any]) -> DaskConfig:
    parsed = dask_executor.parse_config(config, path="run_config.execution.config")
    assert isinstance(parsed, DaskConfig)
    return parsed


def test_the_default_cluster_is_local() -> None:
    config = parse({})
    assert config.cluster.existing is None and config.cluster.cluster_class is None
    assert parse({"cluster": {"local": None}}).cluster.local is not None


def test_local_cluster_keys_pass_through() -> None:
    local = parse({"cluster": {"local": {"n_workers": 2, "memory_limit": "1GB"}}}).cluster.local
    assert local is not None
    assert local.model_dump(exclude_none=True) == {
        "n_workers": 2,
        "processes": True,
        "memory_limit": "1GB",
    }


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        (
            {"cluster": {"existing": {"address": "tcp://a:8786"}, "local": {}}},
            "one of existing, local or cluster_class",
        ),
        ({"cluster": {"kwargs": {"n": 1}}}, "kwargs go with cluster_class"),
        (
            {"cluster": {"existing": {"address": "tcp://a:8786"}}, "adapt": {"maximum": 3}},
            "adapt scales a cluster the executor starts",
        ),
        ({"adapt": {"minimum": 4, "maximum": 2}}, "minimum 4 is above maximum 2"),
        ({"max_concurrent": 0}, "max_concurrent"),
    ],
)
def test_bad_config_is_refused_naming_the_field(config: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint) as info:
        parse(config)
    assert str(info.value).startswith("run_config.execution.config")


def step_tagged(value: str) -> PlannedStep:
    return PlannedStep("train", "train", (), ("result",), tags={RESOURCES_TAG: value})


def test_resources_come_from_the_tag() -> None:
    assert step_resources(step_tagged('{"GPU": 1, "memory": 2.5}')) == {"GPU": 1.0, "memory": 2.5}
    assert step_resources(PlannedStep("a", "a", (), ("result",))) is None


@pytest.mark.parametrize("value", ["GPU=1", '["GPU"]', '{"GPU": "one"}', '{"GPU": true}'])
def test_a_bad_resources_tag_names_the_step_and_the_tag(value: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"step 'train': tag {RESOURCES_TAG}")) as info:
        step_resources(step_tagged(value))
    assert info.value.path == f"train.tags.{RESOURCES_TAG}"


def test_an_unknown_cluster_class_says_what_to_give() -> None:
    from coreexec.executors.dask import connect

    config = parse({"cluster": {"cluster_class": "nowhere.NoCluster"}})
    refused = pytest.raises(ConfigError, match=re.escape("'nowhere.NoCluster' cannot be imported"))
    with refused, connect(config):
        pass


def test_coreexec_imports_dask_only_for_the_dask_executor() -> None:
    code = (
        "import sys\n"
        "import coreexec, coreexec.executors, coreexec.runs.execute, coreexec.cli\n"
        "assert 'distributed' not in sys.modules and 'dask' not in sys.modules\n"
        "from coreexec.executors import dask_executor\n"
        "assert 'distributed' in sys.modules and dask_executor.name == 'dask'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
