"""Shared fixtures: a real redis-server, celery workers and Flower, stopped by pid.

Fixtures
--------
``redis_server``            session: a RedisServerProcess (``.url``, ``.port``, ``.pid``,
                            ``.client()``), stopped at the end of the session.
``redis_url``               function: ``redis://127.0.0.1:PORT/0`` after FLUSHALL.
``coreexec_home``           function: an empty directory exported as ``$COREEXEC_HOME``.
``celery_worker_factory``   function: ``start(app="celery_app", queues=None,
                            concurrency=1, env=None, hostname=None, **kw)`` returns a
                            ready CeleryWorkerProcess; every one is stopped at teardown.
``flower_factory``          function: ``start(broker_url, port=None,
                            basic_auth="user:pass", **kw)`` returns a ready
                            FlowerProcess; every one is stopped at teardown.
``docker_engine``,          the Docker fixtures of tests/support/docker_plugin.py (a
``step_image``,             shared dockerd, the step image, options for its containers).
``step_container``

Tests under tests/unit, tests/integration, tests/docker and tests/k8s get the marker
of their directory automatically. When a test fails, the log tails of the processes the
factories started for it are added to its report.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import (
    CeleryWorkerProcess,
    FlowerProcess,
    ManagedProcess,
    RedisServerProcess,
)

# pytester runs inner pytest sessions; the fixture tests use it to watch teardown.
# docker_plugin: the docker_engine / step_image / step_container fixtures and the rule
# that CI fails when a docker or postgres test was skipped.
# k8s_cluster_plugin: --k8s-cluster, tests/k8s against a real cluster instead of the
# test API server.
pytest_plugins = ["pytester", "tests.support.docker_plugin", "tests.support.k8s_cluster_plugin"]

_TESTS_DIR = Path(__file__).resolve().parent
_MARKER_BY_DIR = {
    _TESTS_DIR / "unit": "unit",
    _TESTS_DIR / "integration": "integration",
    _TESTS_DIR / "docker": "docker",
    _TESTS_DIR / "k8s": "k8s",
}
_PROCESSES = pytest.StashKey[list[ManagedProcess]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by the directory it lives in."""
    for item in items:
        path = Path(item.path).resolve()
        for directory, marker in _MARKER_BY_DIR.items():
            if path.is_relative_to(directory):
                item.add_marker(getattr(pytest.mark, marker))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the log tails of the test's processes to a failing report."""
    report = yield
    if report.failed:
        for process in item.stash.get(_PROCESSES, []):
            title = f"{process.name} log ({process.log_path})"
            report.sections.append((title, process.log_tail()))
    return report


def _track(request: pytest.FixtureRequest, process: ManagedProcess) -> None:
    request.node.stash.setdefault(_PROCESSES, []).append(process)


def _stop_all(processes: list[ManagedProcess]) -> None:
    """Stop every process (newest first) even if stopping one of them fails."""
    errors: list[BaseException] = []
    for process in reversed(processes):
        try:
            process.stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerProcess]:
    """A redis-server for the whole session on a free loopback port, stopped by pid."""
    with RedisServerProcess(log_dir=tmp_path_factory.mktemp("redis-server")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServerProcess) -> str:
    """URL of database 0 of the session's redis-server, flushed (all databases) first."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def coreexec_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory exported as COREEXEC_HOME (children started later inherit it)."""
    home = tmp_path / "coreexec_home"
    home.mkdir()
    monkeypatch.setenv("COREEXEC_HOME", str(home))
    return home


@pytest.fixture
def celery_worker_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., CeleryWorkerProcess]]:
    """Start ready celery workers; all of them are stopped by pid at teardown."""
    started: list[ManagedProcess] = []

    def start(
        app: str = "celery_app",
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        env: Mapping[str, str] | None = None,
        hostname: str | None = None,
        **kwargs: Any,
    ) -> CeleryWorkerProcess:
        kwargs.setdefault("log_dir", tmp_path / "processes")
        worker = CeleryWorkerProcess(app, queues, concurrency, env, hostname, **kwargs)
        started.append(worker)
        _track(request, worker)
        return worker.start()

    yield start
    _stop_all(started)


@pytest.fixture
def flower_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., FlowerProcess]]:
    """Start ready Flower instances; all of them are stopped by pid at teardown."""
    started: list[ManagedProcess] = []

    def start(
        broker_url: str,
        port: int | None = None,
        basic_auth: str = "user:pass",
        **kwargs: Any,
    ) -> FlowerProcess:
        kwargs.setdefault("log_dir", tmp_path / "processes")
        flower = FlowerProcess(broker_url, port, basic_auth, **kwargs)
        started.append(flower)
        _track(request, flower)
        return flower.start()

    yield start
    _stop_all(started)
