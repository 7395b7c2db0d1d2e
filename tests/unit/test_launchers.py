"""The launch layer's pure parts: launcher choice, the docker block and its per-step tag,
container names and environments, the supervisor's verdicts, the entrypoint's inputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from celery_app import celery_docker_executor
from coreexec.attempt_runner import AttemptIds
from coreexec.errors import ConfigError, DefinitionError
from coreexec.plan import PlannedStep
from coreexec.tags import LAUNCHER_TAG
from coreexec.transport.run_settings import RunSettings
from workers import docker_executor
from workers.docker.config import DOCKER_CONFIG_TAG, DockerConfig
from workers.docker.containers import environment_of, spec_of
from workers.entrypoint import EntrypointError, ids_from, load_settings_file
from workers.launcher import EndReason, Launch, LaunchEnd, launch_name
from workers.registry import launcher_name
from workers.supervisor import verdict

IDS = AttemptIds("run-1", "load", 2, "a" * 32, "pkg.jobs:etl")


def planned(key: str = "load", **tags: str) -> PlannedStep:
    return PlannedStep(key=key, step_name=key, inputs=(), outputs=("result",), tags=tags)


def test_a_step_picks_its_launcher_by_tag_else_the_executor_default() -> None:
    assert launcher_name(planned(), "docker") == "docker"
    assert launcher_name(planned(**{LAUNCHER_TAG: "in_process"}), "docker") == "in_process"


def test_an_unknown_launcher_is_a_definition_error_naming_the_step_and_valid_names() -> None:
    with pytest.raises(DefinitionError) as caught:
        launcher_name(planned("heavy", **{LAUNCHER_TAG: "dockr"}), "in_process")
    message = str(caught.value)
    assert "step 'heavy'" in message and "'dockr'" in message
    assert "valid names: docker, in_process, k8s" in message


def test_launch_names_are_deterministic_per_attempt_and_fit_a_dns_label() -> None:
    name = launch_name(IDS)
    assert name == launch_name(IDS) and name.startswith("coreexec-") and len(name) <= 63
    other = AttemptIds(IDS.run_id, IDS.step_key, 3, "b" * 32, IDS.job_reference)
    assert launch_name(other) != name


def test_a_bad_container_kwargs_key_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError) as caught:
        celery_docker_executor.configured({"docker": {"container_kwargs": {"mem_limt": "1g"}}})
    assert "docker.container_kwargs" in str(caught.value) and "'mem_limt'" in str(caught.value)
    with pytest.raises(ConfigError, match="'command' is set by the launcher"):
        docker_executor.configured({"docker": {"container_kwargs": {"command": ["sh"]}}})


def test_the_step_tag_overrides_the_executor_block() -> None:
    base = DockerConfig(
        image="steps:1",
        env_vars=["A=1", "B"],
        container_kwargs={"mem_limit": "1g", "user": "1000"},
    )
    tag = {"image": "steps:gpu", "container_kwargs": {"mem_limit": "8g"}, "env_vars": ["A=2"]}
    merged = base.for_step(planned(**{DOCKER_CONFIG_TAG: json.dumps(tag)}))
    assert merged.image == "steps:gpu"
    assert merged.container_kwargs == {"mem_limit": "8g", "user": "1000"}
    assert merged.env_vars == ["B", "A=2"]
    assert base.for_step(planned()) is base


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("{not json", "is not JSON"),
        (json.dumps({"imag": "x"}), "imag"),
        (json.dumps({"container_kwargs": {"nope": 1}}), "'nope'"),
    ],
)
def test_a_bad_step_tag_names_the_step_and_the_field(raw: str, expected: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        DockerConfig().for_step(planned("train", **{DOCKER_CONFIG_TAG: raw}))
    assert "step 'train'" in str(caught.value) and expected in str(caught.value)


def test_the_container_gets_identifiers_on_its_command_line_and_settings_in_env() -> None:
    config = DockerConfig(image="steps:1", env_vars=["FORWARDED", "LITERAL=x", "ABSENT"])
    spec = spec_of(config, IDS, owner="w@h:1", redis_url="redis://r:6379/0")
    command = list(spec.kwargs["command"])
    assert command[0] == "coreexec-step" and IDS.attempt_id in command and "--job" in command
    assert spec.kwargs["labels"]["coreexec.run_id"] == "run-1"
    assert spec.name == launch_name(IDS)
    env = environment_of(
        config, redis_url="redis://r:6379/0", environ={"FORWARDED": "f", "COREEXEC_HOME": "/h"}
    )
    assert env == {
        "COREEXEC_REDIS_URL": "redis://r:6379/0",
        "COREEXEC_HOME": "/h",
        "FORWARDED": "f",
        "LITERAL": "x",
    }


def test_with_a_settings_file_no_url_is_in_the_container_environment(tmp_path: Path) -> None:
    settings = tmp_path / "settings.env"
    config = DockerConfig(image="steps:1", settings_file=str(settings))
    spec = spec_of(config, IDS, owner="w", redis_url="redis://:secret@r:6379/0")
    assert "secret" not in json.dumps(dict(spec.kwargs))
    assert f"{settings}:/etc/coreexec/settings.env:ro" in spec.kwargs["volumes"]


def test_the_verdict_names_out_of_memory_with_its_limit() -> None:
    launch = Launch("docker", "coreexec-x", IDS)
    oom = LaunchEnd(EndReason.OOM_KILLED, 137, "out of memory (limit 64 MiB)")
    message, failure_class = verdict(launch, oom, cancelled=False)
    assert "out of memory (limit 64 MiB)" in message and failure_class.value == "infrastructure"
    _, cancelled = verdict(launch, LaunchEnd(EndReason.EXITED, 143), cancelled=True)
    assert cancelled.value == "cancelled"


def test_run_settings_carry_the_default_launcher_and_its_config() -> None:
    settings = RunSettings(0.5, "docker", {"docker": {"image": "steps:1"}})
    assert RunSettings.from_hash(settings.to_hash()) == settings
    assert RunSettings.from_hash({}) == RunSettings()


def test_the_entrypoint_reads_missing_identifiers_from_the_environment() -> None:
    args = argparse.Namespace(run_id="r", step_key=None, attempt="2", attempt_id="a", job="p:j")
    assert ids_from(args, {"COREEXEC_STEP_KEY": "s"}) == AttemptIds("r", "s", 2, "a", "p:j")
    with pytest.raises(EntrypointError, match="missing --step-key"):
        ids_from(args, {})
    bad = argparse.Namespace(run_id="r", step_key="s", attempt="two", attempt_id="a", job="p:j")
    with pytest.raises(EntrypointError, match="--attempt must be"):
        ids_from(bad, {})


def test_the_settings_file_fills_the_environment_without_overriding_it(tmp_path: Path) -> None:
    path = tmp_path / "settings.env"
    path.write_text("# comment\nCOREEXEC_REDIS_URL=redis://file\nOTHER = 1\n")
    environ = {"COREEXEC_SETTINGS_FILE": str(path), "OTHER": "env"}
    load_settings_file(environ)
    assert environ["COREEXEC_REDIS_URL"] == "redis://file" and environ["OTHER"] == "env"
    path.write_text("no equals sign\n")
    with pytest.raises(EntrypointError, match="expected NAME=value"):
        load_settings_file({"COREEXEC_SETTINGS_FILE": str(path)})
