"""docker-compose.yml, checked without a Docker engine: it parses, every command it runs
exists (the Celery app imports, its queues are the app's, `coreexec` subcommands and
their options parse), and every volume and variable it refers to is defined."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from coreexec.cli import cli

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ escapes.
_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_BARE_VARIABLE = re.compile(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")
EXPECTED_SERVICES = {"redis", "postgres", "flower", "worker-high", "worker-default", "worker-low"}
INFRASTRUCTURE = {"redis", "postgres"}
"""Services on their own images; every other one runs the worker image."""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def celery_app_module() -> Any:
    import celery_app

    return celery_app


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _interpolate(text: str) -> str:
    """Compose's variable substitution with every variable at its default."""
    return _VARIABLE.sub(lambda m: m.group(3) or "", text).replace("$$", "$")


def _argv(service: Mapping[str, Any]) -> list[str]:
    command = service["command"]
    parts = shlex.split(command) if isinstance(command, str) else [str(p) for p in command]
    return [_interpolate(part) for part in parts]


def _option_values(argv: list[str], *names: str) -> list[str]:
    values: list[str] = []
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                values.append(argv[index + 1])
            elif arg.startswith(name + "="):
                values.append(arg.split("=", 1)[1])
    return values


def _known_queues(app: Any) -> set[str]:
    return {queue.name for queue in app.conf.task_queues}


def test_the_file_has_redis_flower_a_worker_per_band_and_a_coordinator(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services.keys() >= EXPECTED_SERVICES
    consumed: dict[str, set[str]] = {}
    for name, service in services.items():
        if "command" not in service:
            continue
        argv = _argv(service)
        for value in _option_values(argv, "-Q", "--queues"):
            consumed.setdefault(name, set()).update(value.split(","))
    every_queue = set().union(*consumed.values())
    assert {"coreexec.high", "coreexec.default", "coreexec.low", "coreexec.runs"} <= every_queue
    # One band per step worker, and coordinators apart from steps.
    assert consumed["worker-high"] == {"coreexec.high"}
    assert consumed["worker-low"] == {"coreexec.low"}
    runs_workers = [name for name, queues in consumed.items() if "coreexec.runs" in queues]
    assert runs_workers and all(consumed[name] == {"coreexec.runs"} for name in runs_workers)


def test_celery_commands_name_the_importable_app_and_its_queues(
    services: dict[str, dict[str, Any]], celery_app_module: Any
) -> None:
    checked = 0
    for name, service in services.items():
        if "command" not in service:
            continue
        argv = _argv(service)
        if argv[0] != "celery":
            continue
        checked += 1
        apps = _option_values(argv, "-A", "--app")
        assert apps == ["celery_app"], f"{name}: -A must name celery_app, got {apps}"
        app = celery_app_module.app
        assert app.main == "coreexec"
        subcommand = next(arg for arg in argv[1:] if not arg.startswith("-") and arg not in apps)
        assert subcommand in {"worker", "flower"}, f"{name}: unexpected {subcommand!r}"
        for value in _option_values(argv, "-Q", "--queues"):
            unknown = set(value.split(",")) - _known_queues(app)
            assert not unknown, f"{name}: queues {unknown} are not declared by the app"
    assert checked >= 2


def test_coreexec_commands_exist_and_their_options_parse(
    services: dict[str, dict[str, Any]], celery_app_module: Any
) -> None:
    checked = 0
    for name, service in services.items():
        if "command" not in service:
            continue
        argv = _argv(service)
        if argv[0] != "coreexec":
            continue
        checked += 1
        group: click.Group = cli
        context = click.Context(cli, info_name="coreexec")
        command = group.get_command(context, argv[1])
        assert command is not None, f"{name}: `coreexec {argv[1]}` does not exist"
        # Parse the arguments as click would, without running the command.
        command.make_context(argv[1], argv[2:], parent=context)
        for value in _option_values(argv, "-Q", "--queues"):
            unknown = set(value.split(",")) - _known_queues(celery_app_module.app)
            assert not unknown, f"{name}: queues {unknown} are not declared by the app"
    assert checked >= 3


def test_flower_asks_for_basic_auth_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    raw = [str(part) for part in services["flower"]["command"]]
    auth = next(part for part in raw if part.startswith("--basic-auth="))
    names = {match.group(1) for match in _VARIABLE.finditer(auth)}
    assert names == {"FLOWER_USER", "FLOWER_PASSWORD"}


def test_every_variable_has_a_default_or_an_error(compose: dict[str, Any]) -> None:
    for text in _strings(compose):
        for match in _VARIABLE.finditer(text):
            assert match.group(2) is not None, f"${{{match.group(1)}}} in {text!r} has no default"
        assert not _BARE_VARIABLE.search(text), f"{text!r}: write ${{NAME:-default}}"


def test_every_named_volume_is_declared_and_coreexec_home_is_shared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    home_mounts: dict[str, str] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, _, target = str(volume).partition(":")
            target = target.split(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source!r} is not declared"
            environment = service.get("environment") or {}
            if environment.get("COREEXEC_HOME") == target:
                home_mounts[name] = source
    workers = {name for name in services if name not in INFRASTRUCTURE}
    assert home_mounts.keys() == workers
    assert len(set(home_mounts.values())) == 1


def test_services_use_the_worker_image_and_wait_for_redis(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name in INFRASTRUCTURE:
            continue
        assert service["build"] == {"context": ".", "dockerfile": "workers/Dockerfile"}, name
        assert set(service["depends_on"]) <= set(services)
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        environment = service["environment"]
        assert environment["COREEXEC_BROKER_URL"].startswith("redis://redis:")
        assert environment["COREEXEC_REDIS_URL"].startswith("redis://redis:")


def test_services_keep_runs_in_the_postgres_service_and_wait_for_it(
    services: dict[str, dict[str, Any]],
) -> None:
    postgres = services["postgres"]
    assert "pg_isready" in " ".join(map(str, postgres["healthcheck"]["test"]))
    database = postgres["environment"]
    for name, service in services.items():
        if name in INFRASTRUCTURE:
            continue
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
        url = _interpolate(service["environment"]["COREEXEC_STORAGE_URL"])
        expected = (
            f"postgresql://{_interpolate(database['POSTGRES_USER'])}:"
            f"{_interpolate(database['POSTGRES_PASSWORD'])}@postgres:5432/"
            f"{_interpolate(database['POSTGRES_DB'])}"
        )
        assert url == expected, name
