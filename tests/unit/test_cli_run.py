"""`coreexec run`, `coreexec runs ls` and `coreexec runs show` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COREEXEC_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "coreexec", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_run_shows_progress_and_summary_then_runs_lists_and_shows_it(home: Path) -> None:
    done = _cli(home, "run", "coreexec.examples.etl:etl_job")
    assert done.returncode == 0, done.stderr
    assert "retry" in done.stdout and "fetch_rates (attempt 2)" in done.stdout
    assert "[9/9]" in done.stdout
    run_id = done.stdout.split()[1]
    assert done.stdout.rstrip().endswith(f"run {run_id}: SUCCESS")

    listed = _cli(home, "runs", "ls")
    assert run_id in listed.stdout and "SUCCESS" in listed.stdout

    shown = _cli(home, "runs", "show", run_id)
    assert shown.returncode == 0
    line = next(row for row in shown.stdout.splitlines() if row.startswith("fetch_rates"))
    assert line.split()[1:3] == ["succeeded", "2"]
    assert "ConnectionError" in shown.stdout  # the first attempt's traceback is kept


def test_run_with_config_and_tags_and_failure_exit_code(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("steps:\n  scale:\n    config:\n      factor: 10\n")
    done = _cli(home, "run", "tests.jobs.core_jobs:scale_job", "-c", str(config), "--tag", "team=a")
    assert done.returncode == 0, done.stderr
    failed = _cli(home, "run", "tests.jobs.core_jobs:defs.broken_job")
    assert failed.returncode == 1
    assert "FAIL" in failed.stdout and "broken on purpose" in failed.stdout
    assert "FAILURE" in failed.stdout


def test_bad_input_gives_clear_errors(home: Path, tmp_path: Path) -> None:
    unknown = _cli(home, "run", "tests.jobs.nowhere:job")
    assert unknown.returncode != 0
    assert "module 'tests.jobs.nowhere' not found" in unknown.stderr
    config = tmp_path / "bad.yaml"
    config.write_text("steps:\n  scale:\n    config:\n      factor: lots\n")
    bad = _cli(home, "run", "tests.jobs.core_jobs:scale_job", "-c", str(config))
    assert bad.returncode != 0
    assert "run_config.steps.scale.config.factor" in bad.stderr
    tag = _cli(home, "run", "tests.jobs.core_jobs:scale_job", "--tag", "novalue")
    assert tag.returncode == 2 and "key=value" in tag.stderr
    missing = _cli(home, "runs", "show", "doesnotexist")
    assert missing.returncode != 0 and "no run with id 'doesnotexist'" in missing.stderr


def test_every_command_has_help(home: Path) -> None:
    for args in (
        ["--help"],
        ["run", "--help"],
        ["runs", "--help"],
        ["runs", "ls", "--help"],
        ["runs", "show", "--help"],
    ):
        shown = _cli(home, *args)
        assert shown.returncode == 0 and "Usage:" in shown.stdout
