"""Pytest fixtures for tests on a real Docker engine, and the CI rule against skipping them.

Fixtures
--------
``docker_engine``   session: a :class:`DockerEngine` (``.base_url``, ``.socket_path``,
                    ``.client``, a ``docker.DockerClient``; ``.env()`` gives
                    ``DOCKER_HOST`` for child processes). The machine's shared engine
                    (see tests/support/docker_engine.py), started if needed and stopped
                    by pid after the last session using it. Tests using it skip, with
                    the reason, where no engine can start.
``step_image``      session: a :class:`~tests.support.docker_images.StepImage`
                    (``.tag``, ``.id``, ``.base_tag``) built from workers/Dockerfile for
                    this checkout, cached between runs.
``step_container``  function: :class:`StepContainerOptions` to run containers of the
                    step image the way tests need them: ``.run_kwargs(*paths)`` gives
                    keyword arguments for ``client.containers.run/create`` (host network,
                    the host's uid, this checkout mounted read-only at its own path and
                    first on ``PYTHONPATH`` so ``tests.jobs`` imports, ``paths`` mounted
                    read-write at their own paths, the session's label). Containers left
                    with that label are removed at the end of the session.

With ``CI=true`` in the environment, a test marked ``docker`` or ``postgres`` that was
skipped fails the session (exit code 1): CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.docker_engine import SHARED_PATHS, EngineUnavailableError, shared_engine
from tests.support.docker_images import StepImage, ensure_step_image
from tests.support.processes import REPO_ROOT

SESSION_LABEL = "org.coreexec.test-session"
REQUIRED_IN_CI = ("docker", "postgres")
_SESSION_PLUGIN = "coreexec-docker-session"


@dataclass(frozen=True)
class DockerEngine:
    """A running engine and a client of it."""

    base_url: str
    socket_path: Path
    client: docker.DockerClient
    session_label: dict[str, str]

    def env(self) -> dict[str, str]:
        """Environment for a child process that should talk to this engine."""
        return {"DOCKER_HOST": self.base_url}


@dataclass(frozen=True)
class StepContainerOptions:
    """How tests run containers of the step image (see the module docstring)."""

    image: str
    labels: dict[str, str]
    source_dir: Path = REPO_ROOT
    environment: dict[str, str] = field(default_factory=dict)

    def volumes(self, *paths: Path | str) -> dict[str, dict[str, str]]:
        """This checkout read-only and ``paths`` read-write, each at its own path."""
        mounts = {str(self.source_dir): {"bind": str(self.source_dir), "mode": "ro"}}
        for path in paths:
            mounts[str(path)] = {"bind": str(path), "mode": "rw"}
        return mounts

    def run_kwargs(self, *paths: Path | str, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``containers.run``/``create``; ``overrides`` win."""
        environment = {"PYTHONPATH": str(self.source_dir), **self.environment}
        kwargs: dict[str, Any] = {
            "image": self.image,
            "network_mode": "host",
            "user": f"{os.getuid()}:{os.getgid()}",
            "volumes": self.volumes(*paths),
            "environment": environment,
            "labels": dict(self.labels),
            "working_dir": str(self.source_dir),
        }
        kwargs.update(overrides)
        return kwargs


class DockerSession:
    """The session's engine and step image, made once, before the first test needs them.

    Building the image the first time on a machine takes minutes (debootstrap, wheels),
    more than a test's timeout, so it happens after collection when a collected test
    uses ``step_image``, outside any test. An engine that cannot start is remembered as
    the skip reason; a build that fails, as the error of every test that needs it.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._engine: DockerEngine | None = None
        self._unavailable: str | None = None
        self._image: StepImage | None = None
        self._image_error: BaseException | None = None

    def engine(self) -> DockerEngine:
        if self._engine is None and self._unavailable is None:
            try:
                base_url = self._stack.enter_context(shared_engine())
            except EngineUnavailableError as exc:
                self._unavailable = f"no Docker engine can start here: {exc}"
            else:
                label = {SESSION_LABEL: uuid.uuid4().hex}
                client = docker.DockerClient(base_url=base_url, timeout=600)
                self._stack.callback(client.close)
                self._stack.callback(_remove_labelled, client, label)
                self._engine = DockerEngine(base_url, SHARED_PATHS.socket, client, label)
        if self._engine is None:
            pytest.skip(self._unavailable or "no Docker engine")
        return self._engine

    def image(self) -> StepImage:
        engine = self.engine()
        if self._image is None and self._image_error is None:
            try:
                self._image = ensure_step_image(engine.client)
            except Exception as exc:
                self._image_error = exc
        if self._image_error is not None:
            raise self._image_error
        assert self._image is not None
        return self._image

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        needs_image = any(
            "step_image" in getattr(item, "fixturenames", ()) for item in session.items
        )
        if not needs_image:
            return
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                "docker: starting the engine and the step image (cached after the first build)"
            )
        # Failures are remembered and reported by the tests that need the image.
        with contextlib.suppress(Exception, pytest.skip.Exception):
            self.image()

    def pytest_sessionfinish(self) -> None:
        self._stack.close()


def _docker_session(config: pytest.Config) -> DockerSession:
    plugin = config.pluginmanager.get_plugin(_SESSION_PLUGIN)
    assert isinstance(plugin, DockerSession)
    return plugin


def _remove_labelled(client: docker.DockerClient, label: dict[str, str]) -> None:
    ((key, value),) = label.items()
    for container in client.containers.list(all=True, filters={"label": f"{key}={value}"}):
        container.remove(force=True)


@pytest.fixture(scope="session")
def docker_engine(request: pytest.FixtureRequest) -> DockerEngine:
    """The shared Docker engine (skips the test where none can start)."""
    return _docker_session(request.config).engine()


@pytest.fixture(scope="session")
def step_image(request: pytest.FixtureRequest) -> StepImage:
    """The step image of this checkout (built before the tests, then cached)."""
    return _docker_session(request.config).image()


@pytest.fixture
def step_container(docker_engine: DockerEngine, step_image: StepImage) -> StepContainerOptions:
    """Options for running containers of the step image in a test."""
    return StepContainerOptions(image=step_image.tag, labels=dict(docker_engine.session_label))


# ---------------------------------------------------------------------- CI: no skips


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


class CiSkipGuard:
    """Fails the session when CI is set and a test CI must run was skipped."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not (report.skipped and _ci()):
            return
        required = [marker for marker in REQUIRED_IN_CI if marker in report.keywords]
        if required:
            self.skipped.append(f"{report.nodeid} (marked {', '.join(required)})")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.skipped and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.skipped:
            return
        terminalreporter.section("tests CI must not skip", sep="=", red=True, bold=True)
        terminalreporter.line(
            f"CI is set and {len(self.skipped)} test(s) marked "
            f"{' or '.join(REQUIRED_IN_CI)} were skipped, so the session fails:"
        )
        for nodeid in self.skipped:
            terminalreporter.line(f"  {nodeid}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(CiSkipGuard(), "coreexec-ci-skip-guard")
    config.pluginmanager.register(DockerSession(), _SESSION_PLUGIN)
