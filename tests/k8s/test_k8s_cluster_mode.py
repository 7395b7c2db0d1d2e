"""Cluster mode (``--k8s-cluster``) is wired: a missing setting is a usage error naming
it, and the whole real-cluster code path runs here against the test API server.

No cluster can be had on these machines, so the second test is the strongest check
there is: an inner pytest session runs tests/k8s in cluster mode with ``KUBECONFIG``
pointing at a test cluster this test started, so the session creates its namespace,
waits for the default ServiceAccount, creates the settings Secret, runs every test not
marked ``k8s_test_server`` with the image and URLs from the environment (pods started by
the image's default command, reading their settings from that Secret only), and deletes
the namespace at the end. What a real cluster adds (a scheduler, a registry, a kernel's
OOM killer, network between the pods and Redis) is not checked here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.k8s_cluster_plugin import REQUIRED, SWITCH_ENV
from tests.support.kube_api import LocalProcessBackend, TestCluster
from tests.support.kube_api.store import JOBS, NAMESPACES, PODS
from tests.support.processes import REPO_ROOT, child_env

pytestmark = pytest.mark.k8s_test_server  # it starts the test cluster the inner run uses

IMAGE = "coreexec-step:cluster-mode"
INNER_TIMEOUT_S = 780


def inner_env(**settings: str) -> dict[str, str]:
    """This checkout's environment without any cluster mode setting, plus ``settings``."""
    env = child_env()
    for name in [*REQUIRED, SWITCH_ENV, "COREEXEC_K8S_TEST_CONTEXT"]:
        env.pop(name, None)
    for name in [n for n in env if n.startswith("COREEXEC_K8S_TEST_")]:
        env.pop(name)
    env.update(settings)
    return env


def pytest_run(
    args: list[str], env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )


@pytest.mark.parametrize(
    ("switch", "given", "missing"),
    [
        (["--k8s-cluster"], {}, list(REQUIRED)),
        ([], {SWITCH_ENV: "1"}, list(REQUIRED)),
        (["--k8s-cluster"], {"KUBECONFIG": "/nowhere/kubeconfig"}, list(REQUIRED[1:])),
        (
            ["--k8s-cluster"],
            {name: "x" for name in REQUIRED if name != "COREEXEC_K8S_TEST_IMAGE"},
            ["COREEXEC_K8S_TEST_IMAGE"],
        ),
    ],
    ids=["option-alone", "env-switch-alone", "kubeconfig-only", "image-missing"],
)
def test_cluster_mode_without_its_settings_is_a_usage_error_naming_them(
    switch: list[str], given: dict[str, str], missing: list[str]
) -> None:
    done = pytest_run([*switch, "--collect-only", "-q", "tests/k8s"], inner_env(**given), 120)

    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    (line,) = [text for text in done.stderr.splitlines() if text.startswith("ERROR:")]
    assert f"needs {', '.join(missing)} set" in line
    assert "collected" not in done.stdout  # nothing ran, nothing was skipped


def test_without_the_switch_kubeconfig_alone_changes_nothing(tmp_path: Path) -> None:
    env = inner_env(KUBECONFIG=str(tmp_path / "kubeconfig"))
    done = pytest_run(["--collect-only", "-q", "tests/k8s/test_k8s_launcher.py"], env, 120)

    assert done.returncode == pytest.ExitCode.OK, done.stdout + done.stderr
    assert "deselected" not in done.stdout and "k8s cluster mode" not in done.stdout
    assert "test_a_watch_that_gets_410_gone_lists_again_and_still_sees_the_end" in done.stdout


@pytest.mark.timeout(INNER_TIMEOUT_S + 60)
def test_cluster_mode_runs_tests_k8s_in_its_own_namespace_of_the_cluster_kubeconfig_names(
    tmp_path: Path, redis_url: str
) -> None:
    shared = tmp_path / "shared"  # what the pods and the inner session both reach
    shared.mkdir()
    backend = LocalProcessBackend(base_env=child_env(), enforce_memory=True, images={IMAGE})
    with TestCluster(tmp_path / "cluster", backend) as cluster:
        env = inner_env(
            KUBECONFIG=str(cluster.kubeconfig),
            COREEXEC_K8S_TEST_IMAGE=IMAGE,
            COREEXEC_K8S_TEST_REDIS_URL=redis_url,
            COREEXEC_K8S_TEST_STORAGE_URL=f"sqlite:///{shared / 'runs.db'}",
            COREEXEC_K8S_TEST_IO_URL=f"file://{shared / 'io'}",
        )
        done = pytest_run(["--k8s-cluster", "-p", "no:randomly", "tests/k8s"], env, INNER_TIMEOUT_S)
        output = done.stdout + done.stderr
        assert done.returncode == pytest.ExitCode.OK, output[-6000:]

        summary = done.stdout.splitlines()[-1]
        passed = int(re.search(r"(\d+) passed", summary).group(1))  # type: ignore[union-attr]
        assert passed >= 15 and re.search(r"\d+ deselected", summary), summary
        assert not re.search(r"skipped|failed|error", summary), summary
        assert "k8s cluster mode" in done.stdout
        assert "need the test API server and were deselected, not run:" in done.stdout
        for server_only in (
            "test_k8s_launcher.py::test_an_evicted_pod_is_an_infrastructure_failure_naming",
            "test_k8s_launcher.py::test_a_watch_that_gets_410_gone_lists_again",
            "test_kube_api_server.py::",
            "test_k8s_cluster_mode.py::",
        ):
            assert f"  tests/k8s/{server_only}" in done.stdout, server_only

        found = re.search(r"namespace (coreexec-test-[0-9a-f]{8}) \(deleted at the end\)", output)
        assert found is not None, output[-3000:]
        namespace = found.group(1)
        requests = cluster.requests()
        assert requests["create namespaces"] == requests["delete namespaces"] == 1
        assert requests["create secrets"] == 1  # the settings Secret, through the API
        assert requests["create jobs"] >= passed
        changes, _rv = cluster.store.changes_after(1, JOBS, namespace, lambda job: True)
        images = {
            change.obj["spec"]["template"]["spec"]["containers"][0]["image"] for change in changes
        }
        assert images == {IMAGE, "registry.invalid/missing:1"}
        assert not cluster.store.list(JOBS, "default")[0]  # nothing outside its namespace

        deadline = time.monotonic() + 60
        while cluster.store.find(NAMESPACES, "", namespace) is not None:
            assert time.monotonic() < deadline, "the namespace was not deleted"
            time.sleep(0.05)
        assert cluster.store.list(PODS, namespace)[0] == []
        assert cluster.store.list(JOBS, namespace)[0] == []
    assert os.listdir(shared)  # runs and outputs went where the URLs said


@pytest.mark.docker
def test_the_cluster_test_image_has_the_test_jobs_and_the_step_entrypoint(
    docker_engine: Any, step_image: Any
) -> None:
    """tests/k8s/Dockerfile.cluster builds on the worker image (here the step image of
    this checkout, built from the same workers/Dockerfile) and its pods can import the
    jobs the tests run."""
    client = docker_engine.client
    tag = f"coreexec-k8s-test:{uuid.uuid4().hex[:12]}"
    client.images.build(
        path=str(REPO_ROOT),
        dockerfile="tests/k8s/Dockerfile.cluster",
        tag=tag,
        buildargs={"WORKER_IMAGE": step_image.tag},
        rm=True,
    )
    try:
        probe = (
            "import shutil, tests.jobs.k8s_jobs as jobs; "
            "print(jobs.IN_POD, shutil.which('coreexec-step'))"
        )
        output = client.containers.run(
            tag, ["python", "-c", probe], remove=True, labels=dict(docker_engine.session_label)
        )
        assert output.decode().split() == ["pod", "/opt/venv/bin/coreexec-step"]
    finally:
        client.images.remove(tag, force=True)
