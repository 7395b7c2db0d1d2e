"""``k8s_job_executor`` against the test Kubernetes API server: API requests and per-step
overhead, beside ``docker_executor``.

``python -m bench.k8s_launcher [--workloads W1,W2] [--image TAG]`` starts its own
redis-server and the test cluster of ``tests/support/kube_api`` (API server, Job
controller, kubelet stand-in), then runs each workload under ``k8s_job_executor``
(``max_concurrent`` 4). Without ``--image`` the kubelet runs every pod's container as a
local process (what a pod costs beyond the step entrypoint's own start is then the
launcher's and the API's share); with ``--image`` (``DOCKER_HOST`` names the engine) it
runs them as containers of that image, and ``docker_executor`` runs the same workload in
containers for comparison.

Reported per workload: the median wall time of ``--runs`` runs after ``--warmups``,
per-step overhead = (wall - ideal) / steps (the steps are trivial: ideal ~ 0), and API
requests per step by verb, as the test server counted them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.workloads import join, leaf, root
from coreexec import Instance, RunStatus, job
from coreexec.events import EventKind
from coreexec.runs.execute import execute_job
from workers import docker_executor, k8s_job_executor

MAX_CONCURRENT = 4
W1_WIDTH = 100
W2_STEPS = 20
SECRET = "coreexec-settings"
REPO_ROOT = str(Path(__file__).resolve().parents[1])


def _fanout() -> None:
    top = root()
    join([leaf.alias(f"leaf_{i}")(top) for i in range(W1_WIDTH)])


def _chain() -> None:
    value = root()
    for i in range(W2_STEPS - 1):
        value = leaf.alias(f"leaf_{i}")(value)


w1_k8s = job(name="w1_k8s", executor_def=k8s_job_executor)(_fanout)
w2_k8s = job(name="w2_k8s", executor_def=k8s_job_executor)(_chain)
w1_docker = job(name="w1_docker", executor_def=docker_executor)(_fanout)
w2_docker = job(name="w2_docker", executor_def=docker_executor)(_chain)
STEPS = {"W1": W1_WIDTH + 2, "W2": W2_STEPS}


def k8s_block(cluster: Any, image: str | None) -> dict[str, Any]:
    return {
        "job_image": image or "coreexec-step:local",
        "kubeconfig_file": str(cluster.kubeconfig),
        "env_secrets": [SECRET],
        "command": [sys.executable if image is None else "python", "-m", "workers.entrypoint"],
        "termination_grace_period_s": 5,
    }


def docker_block(home: Path, image: str) -> dict[str, Any]:
    return {
        "image": image,
        "network": "host",
        "volumes": {
            str(home): {"bind": str(home), "mode": "rw"},
            REPO_ROOT: {"bind": REPO_ROOT, "mode": "ro"},
        },
        "env_vars": [f"PYTHONPATH={REPO_ROOT}"],
        "container_kwargs": {"user": f"{os.getuid()}:{os.getgid()}", "working_dir": REPO_ROOT},
        "command": ["python", "-m", "workers.entrypoint"],
    }


def one_run(reference: str, config: dict[str, Any]) -> float:
    started = time.monotonic()
    result = execute_job(reference, {"execution": {"config": config}}, instance=Instance.from_env())
    wall = time.monotonic() - started
    if result.status is not RunStatus.SUCCESS:
        failed = [e.message for e in result.events if e.kind is EventKind.STEP_FAILURE]
        raise RuntimeError(f"{reference} ended {result.status.value}: {failed[-1:]}")
    return wall


def measure(
    reference: str, config: dict[str, Any], runs: int, warmups: int, counter: Any = None
) -> tuple[float, Counter[str]]:
    for _ in range(warmups):
        one_run(reference, config)
    before = Counter(counter()) if counter else Counter()
    walls = [one_run(reference, config) for _ in range(runs)]
    after = Counter(counter()) if counter else Counter()
    return statistics.median(walls), after - before


def _cluster(stack: ExitStack, home: Path, redis_url: str, image: str | None) -> Any:
    from tests.support.kube_api import LocalProcessBackend, TestCluster
    from tests.support.processes import child_env

    if image is None:
        backend: Any = LocalProcessBackend(base_env=child_env())
    else:
        import docker

        from tests.support.kube_api.docker_backend import DockerBackend

        client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"])
        backend = DockerBackend(client, {
            "network_mode": "host", "user": f"{os.getuid()}:{os.getgid()}",
            "volumes": docker_block(home, image)["volumes"],
            "environment": {"PYTHONPATH": REPO_ROOT}, "working_dir": REPO_ROOT,
        })  # fmt: skip
    cluster = stack.enter_context(TestCluster(home / "cluster", backend))
    cluster.add_secret(SECRET, {"COREEXEC_REDIS_URL": redis_url, "COREEXEC_HOME": str(home)})
    return cluster


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.k8s_launcher", description=__doc__)
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--image", default=None, help="step image: pods and docker_executor")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmups", type=int, default=1)
    args = parser.parse_args(argv)
    from tests.support.processes import RedisServerProcess

    rows = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-k8s-") as tmp:
        home = Path(tmp)
        redis = stack.enter_context(RedisServerProcess(log_dir=home))
        os.environ.update(COREEXEC_HOME=str(home), COREEXEC_REDIS_URL=redis.url)
        cluster = _cluster(stack, home, redis.url, args.image)
        base = {"max_concurrent": MAX_CONCURRENT, "heartbeat_interval_s": 2.0}
        for name in args.workloads.split(","):
            steps = STEPS[name]
            ref = f"bench.k8s_launcher:{name.lower()}_k8s"
            wall, calls = measure(
                ref,
                {**base, "k8s": k8s_block(cluster, args.image)},
                args.runs,
                args.warmups,
                cluster.requests,
            )
            rows.append(
                (
                    name,
                    "k8s_job",
                    wall,
                    (wall / steps) * 1e3,
                    sum(calls.values()) / (steps * args.runs),
                    calls,
                    steps * args.runs,
                )
            )
            if args.image:
                ref = f"bench.k8s_launcher:{name.lower()}_docker"
                config = {**base, "docker": docker_block(home, args.image)}
                wall, _ = measure(ref, config, args.runs, args.warmups)
                rows.append((name, "docker", wall, (wall / steps) * 1e3, None, Counter(), 1))
    report(rows, args)
    return 0


def report(rows: list[Any], args: argparse.Namespace) -> None:
    print("| workload | executor | wall (median) | overhead per step | API requests per step |")
    print("|---|---|---|---|---|")
    for name, executor, wall, per_step, requests, _calls, _n in rows:
        shown = f"{requests:.2f}" if requests is not None else "-"
        print(f"| {name} | {executor} | {wall:.2f} s | {per_step:.0f} ms | {shown} |")
    print()
    for name, executor, _wall, _per, requests, calls, n in rows:
        if requests is not None:
            detail = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(calls.items()))
            print(f"{name} {executor} requests per step: {detail}")
    print(f"(median of {args.runs} runs after {args.warmups} warm-up)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
