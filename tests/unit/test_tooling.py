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


def _contracts_of_type(kind: str) -> str:
    """The repository's import-linter contracts of one type, as a config of their own."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]

    def value(item: object) -> str:
        if isinstance(item, list):
            return "[" + ", ".join(value(v) for v in item) + "]"
        return '"' + str(item) + '"' if isinstance(item, str) else str(item).lower()

    lines = ["[tool.importlinter]"]
    lines += [f"{key} = {value(item)}" for key, item in config.items() if key != "contracts"]
    for contract in config["contracts"]:
        if contract["type"] == kind:
            lines.append("[[tool.importlinter.contracts]]")
            lines += [f"{key} = {value(item)}" for key, item in contract.items()]
    return "\n".join(lines) + "\n"


def _lint_imports(root: Path, config: str) -> subprocess.CompletedProcess[str]:
    (root / "contract.toml").write_text(config)
    lint_imports = "from importlinter.cli import lint_imports_command as c; c()"
    return subprocess.run(
        [sys.executable, "-c", lint_imports, "--no-cache", "--config", "contract.toml"],
        cwd=root,
        capture_output=True,
        text=True,
        # The throwaway package must shadow the installed (editable) coreexec.
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def _write_package(root: Path, modules: dict[str, str]) -> None:
    for dotted, source in modules.items():
        path = root.joinpath(*dotted.split("."))
        path.mkdir(parents=True, exist_ok=True)
        (path / "__init__.py").write_text(source)


def test_import_contract_catches_engine_importing_celery_side(tmp_path: Path) -> None:
    """The real contracts, run over a throwaway `coreexec` that breaks them three times."""
    _write_package(
        tmp_path,
        {
            "coreexec": "",
            "coreexec.deep": "",
            "coreexec.deep.bad": "from celery_app import tasks\n",
            "coreexec.fine": "import json\nfrom coreexec.redis_clients import Redis\n",
            "coreexec.worse": "import kombu.utils\n",
            # The modules allowed to import redis-py, and one that is not.
            "coreexec.redis_clients": "import redis\nRedis = redis.Redis\n",
            "coreexec.limits": "",
            "coreexec.limits.redis_limiter": "from redis.client import Pipeline\n",
            "coreexec.stray": "import redis\n",
            # The contract's other root package, here keeping its own rule.
            "workers": "import json\n",
        },
    )

    done = _lint_imports(tmp_path, _contracts_of_type("forbidden"))

    assert done.returncode == 1, done.stdout + done.stderr
    assert "coreexec.deep.bad -> celery_app" in done.stdout
    assert "coreexec.worse -> kombu" in done.stdout
    assert "coreexec.stray -> redis" in done.stdout
    assert "coreexec.fine" not in done.stdout
    assert "coreexec.redis_clients -> redis" not in done.stdout
    assert "coreexec.limits.redis_limiter -> redis" not in done.stdout


def test_layer_contract_catches_the_loop_importing_a_run_lifecycle(tmp_path: Path) -> None:
    """The real layers contract over a throwaway `coreexec` whose loop imports upwards."""
    _write_package(
        tmp_path,
        {
            "coreexec": "",
            "coreexec.cli": "import coreexec.runs.submit\n",
            "coreexec.runs": "",
            "coreexec.runs.submit": "import coreexec.executors\n",
            "coreexec.runs.in_process": "",
            "coreexec.executors": "import coreexec.execution\n",
            "coreexec.executors.base": "",
            "coreexec.execution": "",
            "coreexec.execution.loop": "import coreexec.runs.submit\n",
            "coreexec.transport": "",
            "coreexec.limits": "import coreexec.storage\n",
            "coreexec.storage": "",
            "coreexec.job": "import coreexec.runs.in_process\nimport coreexec.executors.base\n",
            "workers": "",
        },
    )

    done = _lint_imports(tmp_path, _contracts_of_type("layers"))

    assert done.returncode == 1, done.stdout + done.stderr
    assert "coreexec.execution.loop -> coreexec.runs.submit" in done.stdout
    assert "coreexec.limits is not allowed to import coreexec.storage" in done.stdout
    # Downward imports, and the two exceptions the contract names, are fine.
    assert "coreexec.cli" not in done.stdout.split("Broken contracts", 1)[1]
    assert "coreexec.job ->" not in done.stdout
