"""The Docker test support without an engine: the wheel set is resolved for the image's
Python, tests that need an engine skip with the reason where none can start, and CI
fails a session in which a docker or postgres test was skipped."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.support.docker_engine import unavailable_reason
from tests.support.docker_images import unresolved

BOOKWORM = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.2",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "6.1.0",
    "platform_system": "Linux",
    "platform_version": "#1 SMP",
    "python_full_version": "3.11.2",
    "python_version": "3.11",
    "sys_platform": "linux",
}
HOST = {**BOOKWORM, "python_full_version": "3.11.7", "implementation_version": "3.11.7"}


def _wheel(directory: Path, name: str, version: str, *requires: str) -> None:
    path = directory / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    metadata += [f"Requires-Dist: {line}" for line in requires]
    with zipfile.ZipFile(path, "w") as archive:
        info = f"{name.replace('-', '_')}-{version}.dist-info"
        archive.writestr(f"{info}/METADATA", "\n".join(metadata) + "\n")


@pytest.fixture
def redis_like(tmp_path: Path) -> Path:
    _wheel(
        tmp_path,
        "redis",
        "8.1.0",
        "async-timeout>=4.0.3; python_full_version < '3.11.3'",
        "hiredis>=3.2.0; extra == 'hiredis'",
    )
    _wheel(tmp_path, "hiredis", "3.5.0")
    return tmp_path


def test_a_wheel_set_resolved_on_the_host_misses_what_the_images_python_needs(
    redis_like: Path,
) -> None:
    # What `pip download --python-version 3.11.2` leaves out: it evaluates
    # python_full_version for the host.
    assert unresolved(redis_like, ["redis[hiredis]>=5"], HOST) == []
    assert unresolved(redis_like, ["redis[hiredis]>=5"], BOOKWORM) == ["async-timeout>=4.0.3"]


def test_extras_and_versions_count_when_resolving(redis_like: Path) -> None:
    (redis_like / "hiredis-3.5.0-py3-none-any.whl").unlink()
    assert unresolved(redis_like, ["redis>=5"], HOST) == []
    assert unresolved(redis_like, ["redis[hiredis]>=5"], HOST) == ["hiredis>=3.2.0"]
    assert unresolved(redis_like, ["redis>=9"], HOST) == ["redis>=9"]


def test_no_dockerd_on_path_is_a_reason_that_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = unavailable_reason()
    assert reason is not None
    assert "dockerd" in reason and "scripts/setup.sh" in reason


@pytest.fixture(autouse=True)
def _no_plugin_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    # Inner sessions load only the plugin under test (installed plugins take seconds).
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


_ENGINE_TEST = """
def test_needs_an_engine(docker_engine):
    assert docker_engine.client.ping()
"""


def test_a_docker_test_skips_with_the_reason_where_no_engine_can_start(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(pytester.path))
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_engine=_ENGINE_TEST)
    result = pytester.runpytest("-p", "tests.support.docker_plugin", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no Docker engine can start here: dockerd is not installed*"])


_MARKED_SKIPS = """
import pytest

@pytest.mark.{marker}
def test_skipped():
    pytest.skip("no engine")

def test_runs():
    pass
"""


@pytest.mark.parametrize("marker", ["docker", "postgres"])
def test_under_ci_a_skipped_docker_or_postgres_test_fails_the_session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    pytester.makeini(f"[pytest]\nmarkers =\n    {marker}: x\n")
    pytester.makepyfile(test_marked=_MARKED_SKIPS.format(marker=marker))
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest("-p", "tests.support.docker_plugin")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*tests CI must not skip*", "*test_marked.py::test_skipped*"])

    monkeypatch.delenv("CI")
    result = pytester.runpytest("-p", "tests.support.docker_plugin")
    assert result.ret == pytest.ExitCode.OK


def test_under_ci_other_skips_do_not_fail_the_session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    slow: x\n")
    pytester.makepyfile(test_marked=_MARKED_SKIPS.format(marker="slow"))
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest("-p", "tests.support.docker_plugin")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
