"""The docker launcher's per-step overhead beside the in-process launcher, in one run.

``python -m bench.docker_launcher --image TAG`` (``DOCKER_HOST`` names the engine; the
image must hold coreexec, e.g. the step image the tests build from workers/Dockerfile)
runs W2 (chain of 20) and W3 (16 x 0.5 s, parallelism 4) on one ``celery worker -c 4``
and its own redis-server, alternating two executors on the same cluster:

- ``in_process``: ``celery_executor``, every step in the worker's process;
- ``docker``: ``celery_docker_executor``, every step in a container of ``--image``
  (host network, this checkout mounted read-only first on ``PYTHONPATH``, the
  instance directory read-write, the caller's uid).

Per-step overhead = (wall - ideal) / steps; the ratio is docker over in-process. Each
figure is the median of ``--runs`` runs after ``--warmups``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import INTERVALS_DIR_ENV, intervals_directory, parse_workload
from bench.systems_celery import CONCURRENCY, CeleryCluster, CeleryRunner, cluster

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def docker_block(cluster: CeleryCluster, image: str) -> dict[str, Any]:
    intervals = os.environ[INTERVALS_DIR_ENV]
    return {
        "image": image,
        "network": "host",
        "volumes": {
            str(cluster.home): {"bind": str(cluster.home), "mode": "rw"},
            intervals: {"bind": intervals, "mode": "rw"},
            REPO_ROOT: {"bind": REPO_ROOT, "mode": "ro"},
        },
        "env_vars": [f"PYTHONPATH={REPO_ROOT}", INTERVALS_DIR_ENV],
        "container_kwargs": {"user": f"{os.getuid()}:{os.getgid()}", "working_dir": REPO_ROOT},
        "stop_timeout_s": 5,
    }


def runners(cluster: CeleryCluster, workload: str, image: str) -> dict[str, CeleryRunner]:
    from celery_app import celery_docker_executor

    spec = parse_workload(workload)
    in_process = CeleryRunner(cluster, spec)
    docker = CeleryRunner(cluster, spec)
    base = {"broker": cluster.redis.url, "redis_url": cluster.redis.url}
    docker.executor_def = celery_docker_executor.configured(
        {**base, "docker": docker_block(cluster, image)}
    )
    return {"in_process": in_process, "docker": docker}


def measure(runner: CeleryRunner, runs: int, warmups: int) -> float:
    for _ in range(warmups):
        runner.sample()
    return statistics.median(runner.sample().wall_s for _ in range(runs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.docker_launcher", description=__doc__)
    parser.add_argument("--image", required=True, help="step image holding coreexec")
    parser.add_argument("--workloads", default="W2,W3")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmups", type=int, default=1)
    args = parser.parse_args(argv)
    if not os.environ.get("DOCKER_HOST"):
        print("set DOCKER_HOST to the engine's socket", file=sys.stderr)
        return 2
    rows = []
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-docker-") as scratch,
        intervals_directory(Path(scratch)),
        cluster() as shared,
    ):
        for name in args.workloads.split(","):
            spec = parse_workload(name)
            walls = {
                launcher: measure(runner, args.runs, args.warmups)
                for launcher, runner in runners(shared, name, args.image).items()
            }
            ideal = spec.ideal_s(CONCURRENCY)
            over = {k: (wall - ideal) / spec.steps * 1e3 for k, wall in walls.items()}
            rows.append((name, walls, over))
    print("| workload | launcher | wall (median) | overhead per step | docker / in-process |")
    print("|---|---|---|---|---|")
    for name, walls, over in rows:
        for launcher in ("in_process", "docker"):
            ratio = over["docker"] / over["in_process"] if over["in_process"] > 0 else float("nan")
            shown = f"{ratio:.0f}x" if launcher == "docker" else ""
            print(
                f"| {name} | {launcher} | {walls[launcher]:.3f} s | "
                f"{over[launcher]:.1f} ms | {shown} |"
            )
    print(
        f"\n(median of {args.runs} runs after {args.warmups} warm-up; "
        f"{time.monotonic() - started:.0f} s in all)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
