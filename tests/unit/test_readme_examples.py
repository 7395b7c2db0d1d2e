"""The README's examples run as written (doc examples that run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coreexec.errors import ConfigError
from coreexec.examples.etl import etl_job
from coreexec.instance import Instance
from coreexec.runs.create import create_run

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _blocks(section: str, language: str) -> list[str]:
    """The ``language`` code blocks of the README section titled ``section``."""
    body = README.split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.DOTALL)


def test_the_run_config_example_runs_the_example_job(tmp_path: Path) -> None:
    (example,) = _blocks("## Run config", "yaml")
    config = tmp_path / "run.yaml"
    config.write_text(example)
    env = {**os.environ, "COREEXEC_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "coreexec",
            "run",
            "coreexec.examples.etl:etl_job",
            "-c",
            str(config),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "extracted 10 rows per region" in done.stdout


def test_the_tag_limits_example_is_a_valid_run_config(coreexec_home: Path) -> None:
    (example,) = _blocks("## Tag concurrency limits", "yaml")
    record = create_run(etl_job, run_config=yaml.safe_load(example), instance=Instance.from_env())
    assert record.run_config["execution"]["config"]["multiprocess"]["tag_concurrency_limits"]


def test_a_multiprocess_key_straight_under_execution_config_says_where_it_belongs(
    coreexec_home: Path,
) -> None:
    bad = {"execution": {"config": {"retries": {"enabled": {}}}}}
    with pytest.raises(ConfigError) as caught:
        create_run(etl_job, run_config=bad, instance=Instance.from_env())
    message = str(caught.value)
    assert message.startswith("run_config.execution.config: retries:")
    assert "multiprocess: {retries: ...}" in message
    assert "Extra inputs" not in message


def test_the_api_tour_runs() -> None:
    (tour, *_) = _blocks("## A tour of the API", "python")
    namespace: dict[str, object] = {"__name__": "readme_tour"}
    exec(compile(tour, "README.md", "exec"), namespace)
    assert "defs" in namespace


def _submitted_references(text: str) -> list[str]:
    return re.findall(r"coreexec submit ([\w.]+:[\w.]+)", text)


def test_every_documented_submit_runs_its_steps_on_the_celery_workers() -> None:
    from coreexec.reference import load_job
    from coreexec.runs.create import resolve_executor_def

    documented = _submitted_references(README)
    assert documented, "the README documents a `coreexec submit` of the example job"
    for reference in documented:
        executor = resolve_executor_def(load_job(reference))
        assert executor.name == "celery", f"{reference} runs on {executor.name}, not celery"


def test_the_demo_runs_the_job_the_readme_says_it_does() -> None:
    demo = (REPO / "scripts" / "demo.sh").read_text()
    (submitted,) = set(_submitted_references(demo))
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert _submitted_references(quickstart) == [submitted]
