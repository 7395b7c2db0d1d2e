"""Every command exits as the one documented table says (README "Command line")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from coreexec.cli import cli
from coreexec.cli.exit_codes import EXIT_CODES

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def runner(coreexec_home: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # Nothing listens on port 1: commands that need Redis cannot reach it.
    monkeypatch.setenv("COREEXEC_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("COREEXEC_REDIS_URL", raising=False)
    return CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    paths = {
        "bad_value": "steps:\n  scale:\n    config:\n      factor: lots\n",
        "bad_yaml": "steps: [unclosed\n",
        "not_mapping": "- a list\n",
        "unknown_key": "steps:\n  scale:\n    config:\n      factr: 2\n",
    }
    for name, text in paths.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return {name: str(tmp_path / f"{name}.yaml") for name in paths}


BAD_INPUT = [
    ["run", "tests.jobs.nowhere:job"],
    ["run", "tests.jobs.core_jobs:no_such_job"],
    ["run", "tests.jobs.core_jobs:scale_job", "-c", "{bad_value}"],
    ["run", "tests.jobs.core_jobs:scale_job", "-c", "{bad_yaml}"],
    ["run", "tests.jobs.core_jobs:scale_job", "-c", "{not_mapping}"],
    ["run", "tests.jobs.core_jobs:scale_job", "-c", "{unknown_key}"],
    ["run", "tests.jobs.core_jobs:scale_job", "--tag", "novalue"],
    ["run", "tests.jobs.core_jobs:scale_job", "-c", "/nonexistent/run.yaml"],
    ["run", "tests.jobs.core_jobs:scale_job", "--no-such-option"],
    ["submit", "tests.jobs.nowhere:job"],
    ["submit", "tests.jobs.core_jobs:scale_job", "-c", "{bad_value}"],
    ["runs", "show", "doesnotexist"],
    ["runs", "watch", "doesnotexist"],
    ["runs", "cancel", "doesnotexist"],
    ["runs", "resume", "doesnotexist"],
    ["runs", "ls", "--status", "NOPE"],
    ["limits", "set", "=warehouse", "2"],
    ["limits", "set", "database=warehouse", "-1"],
]


@pytest.mark.parametrize("argv", BAD_INPUT, ids=" ".join)
def test_bad_input_exits_2_naming_it(
    runner: CliRunner, files: dict[str, str], argv: list[str]
) -> None:
    result = runner.invoke(cli, [arg.format(**files) for arg in argv])
    assert result.exit_code == 2, result.output
    assert "Error" in result.output


def test_a_run_exits_0_when_it_succeeds_and_1_when_it_fails(runner: CliRunner) -> None:
    assert runner.invoke(cli, ["run", "-q", "tests.jobs.core_jobs:scale_job"]).exit_code == 0
    failed = runner.invoke(cli, ["run", "-q", "tests.jobs.core_jobs:defs.broken_job"])
    assert failed.exit_code == 1


def test_an_unreachable_redis_exits_1(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["limits", "ls"])
    assert result.exit_code == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.output


def test_the_readme_and_help_show_the_one_table(runner: CliRunner) -> None:
    text = README.read_text()
    section = text.split("### Exit status", 1)[1].split("\n#", 1)[0]
    rows = dict(re.findall(r"^\| `(\d+)` \| (.+?) \|$", section, flags=re.MULTILINE))
    assert {int(code): meaning for code, meaning in rows.items()} == EXIT_CODES
    shown = runner.invoke(cli, ["--help"]).output
    for code in EXIT_CODES:
        assert f"{code:>3}  " in shown
