"""The compose file's services, each started from the worker image the way compose
would start it (its command and environment, Redis pointed at a test redis-server):
Flower serves its API with the compose file's credentials, and the band worker and the
coordinator worker come up consuming their queues."""

from __future__ import annotations

import base64
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.docker_images import StepImage
from tests.support.docker_plugin import DockerEngine, StepContainerOptions
from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import REPO_ROOT, RedisServerProcess
from tests.support.waiting import wait_until

_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")
READY_TIMEOUT_S = 60.0


def _interpolate(text: str) -> str:
    """Compose's variable substitution with every variable at its default."""
    return _VARIABLE.sub(lambda m: m.group(2) or "", text)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    loaded = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return dict(loaded["services"])


def _environment(
    service: dict[str, Any], redis_url: str, home: Path, others: set[str]
) -> dict[str, str]:
    """The service's environment with the compose network's Redis replaced by ours.

    A variable naming another service of the compose network (a database, say) is
    left out, so the process falls back to its default under ``home``.
    """
    environment = {}
    for name, value in (service.get("environment") or {}).items():
        value = _interpolate(str(value))
        value = re.sub(r"^redis://redis:6379/(\d+)$", lambda m: redis_url[:-1] + m.group(1), value)
        if any(re.search(rf"[@/]{re.escape(host)}:\d+", value) for host in others):
            continue
        environment[name] = value
    environment["COREEXEC_HOME"] = str(home)
    return environment


@pytest.fixture
def start_service(
    docker_engine: DockerEngine,
    step_image: StepImage,
    step_container: StepContainerOptions,
    redis_server: RedisServerProcess,
    tmp_path: Path,
    services: dict[str, dict[str, Any]],
) -> Iterator[Any]:
    started: list[Any] = []

    def start(name: str, argv_edit: Any = None) -> Any:
        service = services[name]
        argv = [_interpolate(str(part)) for part in service["command"]]
        if argv_edit is not None:
            argv = argv_edit(argv)
        container = docker_engine.client.containers.run(
            step_image.tag,
            argv,
            detach=True,
            network_mode="host",
            user=f"{tmp_path.stat().st_uid}:{tmp_path.stat().st_gid}",
            environment=_environment(service, redis_server.url, tmp_path, set(services)),
            volumes={str(tmp_path): {"bind": str(tmp_path), "mode": "rw"}},
            init=bool(service.get("init")),
            labels=step_container.labels,
        )
        started.append(container)
        return container

    yield start
    for container in started:
        container.remove(force=True)


def _logs(container: Any) -> str:
    return str(container.logs().decode(errors="replace"))


def _wait(container: Any, condition: Any, what: str) -> None:
    def holds() -> bool:
        if condition():
            return True
        container.reload()
        assert container.status in {"created", "running"}, f"{what}: exited\n{_logs(container)}"
        return False

    wait_until(holds, what, READY_TIMEOUT_S, interval_s=0.1, show=lambda: _logs(container))


def test_the_flower_service_starts_from_the_image_and_serves_its_api(
    start_service: Any, services: dict[str, dict[str, Any]]
) -> None:
    port = free_port()
    container = start_service(
        "flower",
        lambda argv: [f"--port={port}" if a.startswith("--port=") else a for a in argv],
    )
    auth = next(a for a in services["flower"]["command"] if str(a).startswith("--basic-auth="))
    credentials = _interpolate(str(auth)).split("=", 1)[1]
    token = base64.b64encode(credentials.encode()).decode()
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{port}/api/workers", headers={"Authorization": f"Basic {token}"}
    )

    def serves() -> bool:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    _wait(container, serves, "Flower's API")
    unauthorised = urllib.request.Request(f"http://{LOOPBACK}:{port}/api/workers")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unauthorised, timeout=2)
    refused.value.close()
    assert refused.value.code == 401


@pytest.mark.parametrize("name", ["worker-default", "coordinator"])
def test_the_worker_services_start_from_the_image_and_consume_their_queues(
    start_service: Any, services: dict[str, dict[str, Any]], name: str
) -> None:
    container = start_service(name)
    _wait(container, lambda: " ready." in _logs(container), f"{name} to be ready")
    argv = [str(part) for part in services[name]["command"]]
    queue = argv[argv.index("-Q") + 1]
    assert f".> {queue} " in _logs(container)
