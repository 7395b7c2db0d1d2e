"""The `coreexec` command line: every command explains itself, and bad input gets a
clear error and exit status 2 (no network: the run launcher here is a test one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from coreexec.cli import cli
from coreexec.cli.worker import DEFAULT_QUEUES
from coreexec.instance import Instance
from coreexec.runs.create import create_run
from coreexec.runs.launcher import RUN_LAUNCHER_ENV
from coreexec.runs.submit import submit_job
from coreexec.storage.base import RunStatus

CHAIN = "tests.jobs.submission_jobs:chain_local"
FLAKY = "tests.jobs.submission_jobs:flaky_local"
LAUNCHERS = "tests.unit.test_submission"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


ALL_COMMANDS = [(), *_commands(cli)]


@pytest.fixture
def runner(coreexec_home: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv(RUN_LAUNCHER_ENV, f"{LAUNCHERS}:ThreadLauncher")
    monkeypatch.delenv("COREEXEC_REDIS_URL", raising=False)
    return CliRunner()


def _invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_the_new_commands_are_registered() -> None:
    names = {" ".join(path) for path in ALL_COMMANDS}
    assert {"submit", "worker", "runs watch", "runs cancel", "runs resume"} <= names


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda path: " ".join(path) or "coreexec")
def test_every_command_explains_itself(runner: CliRunner, path: tuple[str, ...]) -> None:
    result = _invoke(runner, *path, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    summary = result.output.split("\n\n")[1].strip()
    assert len(summary) > 20, f"`coreexec {' '.join(path)} --help` explains nothing"


# -- submit -------------------------------------------------------------------------------


def test_submit_prints_the_run_id_and_how_to_watch_it(runner: CliRunner) -> None:
    result = _invoke(runner, "submit", CHAIN, "--tag", "team=a")
    assert result.exit_code == 0, result.output
    run_id = result.output.split()[2]
    assert f"coreexec runs watch {run_id}" in result.output
    assert f"coreexec runs cancel {run_id}" in result.output
    record = Instance.from_env().storage.get_run(run_id)
    assert record.tags["team"] == "a"


def test_submit_wait_follows_the_run_and_exits_by_its_status(runner: CliRunner) -> None:
    done = _invoke(runner, "submit", CHAIN, "--wait")
    assert done.exit_code == 0, done.output
    assert "third" in done.output and done.output.rstrip().endswith(": SUCCESS")
    failed = _invoke(runner, "submit", FLAKY, "--wait")
    assert failed.exit_code == 1, failed.output
    assert "FAIL" in failed.output and failed.output.rstrip().endswith(": FAILURE")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "no_colon"], "must look like 'package.module:attribute'"),
        (["submit", "tests.jobs.submission_jobs:nope"], "has no attribute 'nope'"),
        (["submit", "no_such_module_xyz:job"], "no_such_module_xyz"),
        (["submit", CHAIN, "-c", "/nonexistent/run.yaml"], "cannot read /nonexistent/run.yaml"),
        (["submit", CHAIN, "--tag", "novalue"], "'novalue' is not key=value"),
        (["runs", "watch", "nope"], "no run with id 'nope'"),
        (["runs", "cancel", "nope"], "no run with id 'nope'"),
        (["runs", "resume", "nope"], "no run with id 'nope'"),
        (["worker", "-c", "0"], "0 is not in the range x>=1"),
        (["runs", "watch", "x", "--timeout", "-1"], "-1.0 is not in the range x>=0"),
    ],
)
def test_bad_input_is_named_with_exit_status_2(
    runner: CliRunner, args: list[str], message: str
) -> None:
    result = _invoke(runner, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert Instance.from_env().storage.list_runs() == []


def test_bad_run_config_file_is_named(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("steps:\n  nope:\n    config: {}\n")
    result = _invoke(runner, "submit", CHAIN, "-c", str(config))
    assert result.exit_code == 2
    assert "run_config.steps.nope" in result.output


# -- runs watch / cancel / resume ----------------------------------------------------------


def test_watch_of_an_ended_run_prints_it_and_exits_by_its_status(runner: CliRunner) -> None:
    handle = submit_job(FLAKY)
    assert handle.wait(timeout=60) is RunStatus.FAILURE
    result = _invoke(runner, "runs", "watch", handle.run_id)
    assert result.exit_code == 1
    assert "flaky fails until flaky-ok exists" in result.output
    assert result.output.rstrip().endswith(f"run {handle.run_id}: FAILURE")
    quiet = _invoke(runner, "runs", "watch", handle.run_id, "-q")
    assert "flaky" not in quiet.output.split("\n", 1)[1]


def test_watch_timeout_says_so(runner: CliRunner) -> None:
    record = create_run(CHAIN, instance=Instance.from_env())
    result = _invoke(runner, "runs", "watch", record.run_id, "--timeout", "0.2")
    assert result.exit_code == 1
    assert "waiting for a coordinator" in result.output
    assert f"run {record.run_id} did not end within 0.2s" in result.output


def test_cancel_of_a_queued_run_and_of_an_ended_one(runner: CliRunner) -> None:
    record = create_run(CHAIN, instance=Instance.from_env())
    result = _invoke(runner, "runs", "cancel", record.run_id, "--wait")
    assert result.exit_code == 0, result.output
    assert "canceled before it started" in result.output
    assert result.output.rstrip().endswith(f"run {record.run_id}: CANCELED")
    again = _invoke(runner, "runs", "cancel", record.run_id)
    assert again.exit_code == 1
    assert "already ended: CANCELED" in again.output


def test_resume_in_this_process_reruns_what_failed(runner: CliRunner, coreexec_home: Path) -> None:
    handle = submit_job(FLAKY)
    assert handle.wait(timeout=60) is RunStatus.FAILURE
    (coreexec_home / "flaky-ok").touch()
    result = _invoke(runner, "runs", "resume", handle.run_id)
    assert result.exit_code == 0, result.output
    assert f"resuming run {handle.run_id}" in result.output
    assert "[3/3]" in result.output
    assert result.output.rstrip().endswith(f"run {handle.run_id} resumed: SUCCESS")
    refused = _invoke(runner, "runs", "resume", handle.run_id)
    assert refused.exit_code == 1
    assert "already succeeded; there is nothing to resume" in refused.output
    assert "resuming run" not in refused.output  # checked before announced


def test_resume_of_a_running_run_without_proof_needs_force(runner: CliRunner) -> None:
    instance = Instance.from_env()
    record = create_run(CHAIN, instance=instance)
    instance.storage.set_status(record.run_id, RunStatus.STARTED)
    refused = _invoke(runner, "runs", "resume", record.run_id)
    assert refused.exit_code == 1
    assert "--force" in refused.output
    assert "resuming run" not in refused.output
    forced = _invoke(runner, "runs", "resume", record.run_id, "--force")
    assert forced.exit_code == 0, forced.output


# -- worker -------------------------------------------------------------------------------


def test_worker_builds_the_celery_command(runner: CliRunner) -> None:
    result = _invoke(
        runner,
        "worker",
        "-Q",
        "coreexec.high",
        "-Q",
        "coreexec.low,coreexec.high",
        "-c",
        "3",
        "--print-command",
        "--max-tasks-per-child",
        "10",
    )
    assert result.exit_code == 0, result.output
    argv = result.output.split()
    assert argv[1:6] == ["-m", "celery", "-A", "celery_app", "worker"]
    assert argv[argv.index("-Q") + 1] == "coreexec.high,coreexec.low"
    assert argv[argv.index("-c") + 1] == "3"
    assert argv[-2:] == ["--max-tasks-per-child", "10"]
    default = _invoke(runner, "worker", "--print-command").output.split()
    assert default[default.index("-Q") + 1] == ",".join(DEFAULT_QUEUES)


def test_worker_warns_when_one_process_serves_runs_and_steps(runner: CliRunner) -> None:
    result = _invoke(runner, "worker", "-c", "1", "--print-command")
    assert result.exit_code == 0
    assert "warning: with -c 1 a coordinator" in result.output
