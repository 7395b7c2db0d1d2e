"""The Docker engine the tests start: it answers on its own socket and is stopped by pid,
leaving no dockerd, containerd or shim behind; the shared engine lives as long as a
session uses it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support.docker_engine import (
    EnginePaths,
    answers,
    descendants,
    mounts_under,
    read_pid,
    shared_engine,
    start_dockerd,
    unavailable_reason,
    unmount_under,
)
from tests.support.docker_images import StepImage, base_tarball
from tests.support.processes import pid_alive


@pytest.fixture
def private_paths() -> Iterator[EnginePaths]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    # Short: containerd's socket lives under the exec root, and unix socket paths are
    # limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="ce-dockerd-", dir="/tmp"))
    paths = EnginePaths.under(root / "state", root / "data")
    yield paths
    # Even after a failed test: dockerd must be gone (the test stops it) to unmount.
    unmount_under(paths.exec_root)
    shutil.rmtree(root, ignore_errors=True)


def _run_host_network_container(base_url: str, base_tag: str) -> int:
    """Start a long-running container (host network) from the cached base; its pid."""
    client = docker.DockerClient(base_url=base_url, timeout=120)
    try:
        repository, _, tag = base_tag.partition(":")
        client.api.import_image_from_file(
            str(base_tarball(base_tag)), repository=repository, tag=tag
        )
        container = client.containers.run(
            base_tag, ["sleep", "600"], detach=True, network_mode="host"
        )
        container.reload()
        return int(container.attrs["State"]["Pid"])
    finally:
        client.close()


def test_a_private_engine_answers_on_its_socket_and_stops_by_pid(
    private_paths: EnginePaths, step_image: StepImage
) -> None:
    engine = start_dockerd(private_paths)
    assert engine.pid is not None
    pid = engine.pid
    try:
        assert answers(private_paths.base_url)
        assert read_pid(private_paths.pidfile) == pid
        # dockerd runs its own containerd.
        family = descendants(pid)
        assert family
        in_container = _run_host_network_container(private_paths.base_url, step_image.base_tag)
        assert pid_alive(in_container)
    finally:
        engine.stop()
    assert not pid_alive(pid)
    assert [child for child in family if pid_alive(child)] == []
    assert not pid_alive(in_container), "the container's process outlived the engine"
    assert not answers(private_paths.base_url)
    assert mounts_under(private_paths.exec_root) == []


def test_the_shared_engine_stops_when_its_last_user_leaves(private_paths: EnginePaths) -> None:
    with shared_engine(private_paths) as base_url:
        pid = read_pid(private_paths.pidfile)
        assert pid is not None
        with shared_engine(private_paths) as second_url:
            assert second_url == base_url
            assert read_pid(private_paths.pidfile) == pid, "the second user starts no engine"
        assert answers(base_url), "the engine outlives a user while another still uses it"
        family = descendants(pid)
    assert not pid_alive(pid)
    assert [child for child in family if pid_alive(child)] == []
    assert not answers(base_url)
