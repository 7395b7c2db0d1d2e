"""The step image from workers/Dockerfile, on a real engine: it holds coreexec with the
extras the compose file needs, reaches a redis-server of the host over the host network,
imports the tests' job modules through the documented mount, and is not rebuilt when
nothing changed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import docker
import yaml

from tests.support.docker_engine import CACHE_DIR
from tests.support.docker_images import StepImage
from tests.support.docker_plugin import DockerEngine, StepContainerOptions
from tests.support.processes import REPO_ROOT, RedisServerProcess, child_env


def _python(client: docker.DockerClient, script: str, **kwargs: Any) -> Any:
    """Run ``script`` in a container; return the JSON it prints last."""
    output = client.containers.run(
        command=["python", "-c", textwrap.dedent(script)], remove=True, **kwargs
    )
    return json.loads(output.decode().strip().splitlines()[-1])


def test_the_image_alone_runs_coreexec_installed_from_wheels(
    docker_engine: DockerEngine, step_image: StepImage, step_container: StepContainerOptions
) -> None:
    found = _python(
        docker_engine.client,
        """
        import json, platform, sys
        import coreexec, celery_app, docker, flower, kubernetes, redis.asyncio
        print(json.dumps({
            "python": platform.python_version(),
            "coreexec": coreexec.__file__,
            "celery_app": celery_app.__file__,
            "prefix": sys.prefix,
        }))
        """,
        image=step_image.tag,
        network_mode="none",
        labels=step_container.labels,
    )
    # Bookworm's python; redis.asyncio needs async-timeout there (below 3.11.3).
    assert found["python"].startswith("3.11.")
    assert found["prefix"] == "/opt/venv"
    assert found["coreexec"].startswith("/opt/venv/lib/")
    assert found["celery_app"].startswith("/opt/venv/lib/")


def test_a_step_container_imports_the_checkout_and_reaches_redis_on_the_host_network(
    docker_engine: DockerEngine,
    step_container: StepContainerOptions,
    redis_server: RedisServerProcess,
    tmp_path: Path,
) -> None:
    with redis_server.client() as client:
        client.delete("from-container")
    kwargs = step_container.run_kwargs(tmp_path, environment={"REDIS_URL": redis_server.url})
    kwargs["environment"]["PYTHONPATH"] = str(REPO_ROOT)
    found = _python(
        docker_engine.client,
        f"""
        import json, os, pathlib
        import redis
        import coreexec, celery_app, workers, tests.jobs.core_jobs
        redis.Redis.from_url(os.environ["REDIS_URL"]).set("from-container", "hello")
        pathlib.Path({str(tmp_path)!r}, "written").write_text("from the container")
        print(json.dumps({{
            "coreexec": coreexec.__file__,
            "workers": list(workers.__path__),
            "jobs": tests.jobs.core_jobs.__file__,
        }}))
        """,
        **kwargs,
    )
    with redis_server.client() as client:
        assert client.get("from-container") == b"hello"
    assert (tmp_path / "written").read_text() == "from the container"
    assert found["coreexec"] == str(REPO_ROOT / "coreexec" / "__init__.py")
    assert str(REPO_ROOT / "workers") in found["workers"]
    assert found["jobs"] == str(REPO_ROOT / "tests" / "jobs" / "core_jobs.py")


def _worker_image_commands() -> dict[str, list[str]]:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    commands = {}
    for name, service in compose["services"].items():
        if service.get("build", {}).get("dockerfile") == "workers/Dockerfile":
            commands[name] = [str(part) for part in service["command"]]
    return commands


def test_the_image_has_every_command_the_compose_file_runs_from_it(
    docker_engine: DockerEngine, step_image: StepImage, step_container: StepContainerOptions
) -> None:
    commands = _worker_image_commands()
    assert "flower" in commands
    # Each command's program and subcommand, asked for its --help inside the image.
    probes = {
        name: [argv[0], *[a for a in argv[1:3] if not a.startswith("-")][-1:], "--help"]
        for name, argv in commands.items()
    }
    for name, argv in commands.items():
        if argv[0] == "celery":
            probes[name] = ["celery", "-A", "celery_app", argv[3], "--help"]
    found = _python(
        docker_engine.client,
        f"""
        import json, shutil, subprocess
        probes = {probes!r}
        result = {{}}
        for name, argv in probes.items():
            done = subprocess.run(argv, capture_output=True, text=True)
            result[name] = [shutil.which(argv[0]), done.returncode, done.stderr[-500:]]
        print(json.dumps(result))
        """,
        image=step_image.tag,
        network_mode="none",
        labels=step_container.labels,
    )
    for name, (path, returncode, stderr) in found.items():
        assert path is not None and path.startswith("/opt/venv/bin/"), (name, probes[name])
        assert returncode == 0, f"{name}: {' '.join(probes[name])} failed in the image: {stderr}"


def _cache_listing(cache_dir: Path) -> dict[str, float]:
    """Every cached tarball and wheel directory with its modification time."""
    entries = [*cache_dir.glob("base/*.tar"), *cache_dir.glob("wheels/*/.complete")]
    return {str(path): path.stat().st_mtime for path in entries}


def test_a_second_run_builds_nothing(docker_engine: DockerEngine, step_image: StepImage) -> None:
    client = docker_engine.client
    base_id = client.images.get(step_image.base_tag).id
    cached = _cache_listing(CACHE_DIR)
    since = int(time.time()) - 1
    # A second run, as a new process would make it (the fixtures call the same).
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.docker_images", "--host", docker_engine.base_url],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=child_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    until = int(time.time()) + 1
    assert done.stdout.split() == [step_image.tag]
    assert client.images.get(step_image.tag).id == step_image.id
    assert client.images.get(step_image.base_tag).id == base_id
    assert _cache_listing(CACHE_DIR) == cached, "no debootstrap, download or wheel build"
    # Nothing imported, built or tagged: a build ends by tagging its image.
    ours = {step_image.tag, step_image.base_tag, step_image.base_tag.split("-")[0]}
    events = client.events(since=since, until=until, decode=True, filters={"type": "image"})
    touched = [e for e in events if e.get("Actor", {}).get("Attributes", {}).get("name") in ours]
    assert [e["Action"] for e in touched] == []
