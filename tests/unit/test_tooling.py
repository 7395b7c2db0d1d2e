"""The repository's tooling: packaging metadata, test config, scripts, import boundary."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [*sorted(f"scripts/{p.name}" for p in (REPO_ROOT / "scripts").glob("*.sh")), ".ci/run"]


def _pyproject() -> dict[str, Any]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_pyproject_declares_one_distribution_with_three_packages() -> None:
    data = _pyproject()
    project = data["project"]
    assert (project["name"], project["version"]) == ("coreexec", "0.1.0")
    assert project["requires-python"] == ">=3.11"
    assert project["scripts"] == {
        "coreexec": "coreexec.cli:main",
        "coreexec-step": "workers.entrypoint:main",
        "coreexec-containers": "workers.docker.sweep:main",
        "coreexec-k8s": "workers.k8s.sweep:main",
    }
    launchers = project["entry-points"]["coreexec.run_launchers"]
    assert launchers == {"celery": "celery_app.run_launcher:CeleryRunLauncher"}
    find = data["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["coreexec*", "celery_app*", "workers*"]
    for package in ("coreexec", "celery_app", "workers"):
        assert (REPO_ROOT / package / "py.typed").is_file()


def test_this_test_is_marked_unit_by_its_directory(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("integration") is None


def test_warnings_fail_tests() -> None:
    with pytest.raises(UserWarning, match="escalated"):
        warnings.warn("escalated", UserWarning, stacklevel=1)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_bash(script: str) -> None:
    path = REPO_ROOT / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_import_contract_catches_engine_importing_celery_side(tmp_path: Path) -> None:
    """The real contracts, run over a throwaway `coreexec` that breaks them three times."""
    section = (REPO_ROOT / "pyproject.toml").read_text().split("[tool.importlinter]", 1)[1]
    (tmp_path / "contract.toml").write_text("[tool.importlinter]" + section)
    package = tmp_path / "coreexec"
    (package / "deep").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "deep" / "__init__.py").write_text("")
    (package / "deep" / "bad.py").write_text("from celery_app import tasks\n")
    (package / "fine.py").write_text("import json\nfrom coreexec.redis_clients import Redis\n")
    (package / "worse.py").write_text("import kombu.utils\n")
    # The modules allowed to import redis-py, and one that is not.
    (package / "redis_clients.py").write_text("import redis\nRedis = redis.Redis\n")
    (package / "limits").mkdir()
    (package / "limits" / "__init__.py").write_text("")
    (package / "limits" / "redis_limiter.py").write_text("from redis.client import Pipeline\n")
    (package / "stray.py").write_text("import redis\n")
    # The contract's other root package, here keeping its own rule.
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "__init__.py").write_text("import json\n")

    lint_imports = "from importlinter.cli import lint_imports_command as c; c()"
    done = subprocess.run(
        [sys.executable, "-c", lint_imports, "--no-cache", "--config", "contract.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        # The throwaway package must shadow the installed (editable) coreexec.
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "coreexec.deep.bad -> celery_app" in done.stdout
    assert "coreexec.worse -> kombu" in done.stdout
    assert "coreexec.stray -> redis" in done.stdout
    assert "coreexec.fine" not in done.stdout
    assert "coreexec.redis_clients -> redis" not in done.stdout
    assert "coreexec.limits.redis_limiter -> redis" not in done.stdout
