"""Runs the Dagster baseline in its own virtualenv and reads back its timings.

Dagster is not installed next to coreexec (its pins would drift ours); ``bash
bench/setup_baselines.sh`` makes ``bench/.venv-dagster``. Each cell is one subprocess of
that venv, which does its own warm-up and timed runs, so Dagster's import cost (seconds)
stays outside the figures, as a long-lived Dagster process would have it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from bench.harness import (
    BenchError,
    Measurement,
    RunContext,
    Sample,
    SystemUnavailable,
    WorkloadSpec,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = REPO_ROOT / "bench" / ".venv-dagster"
VENV_PYTHON = VENV / "bin" / "python"
MODULE = "bench.baselines.dagster_workloads"


def run_in_process(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """Dagster's ``execute_in_process`` (in_process executor, serial)."""
    return _run(workload, ctx, executor="in_process")


def run_multiprocess(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """Dagster's multiprocess executor with forkserver (its faster start method)."""
    return _run(workload, ctx, executor="forkserver")


def run_spawn(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """Dagster's multiprocess executor with spawn, the start method it uses by default."""
    return _run(workload, ctx, executor="spawn")


def run_dask(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """dagster-dask's executor on a LocalCluster of 4 processes x 1 thread (W1-W3: no tag
    limits in its config, so no W4)."""
    if workload.base not in ("W1", "W2", "W3"):
        raise SystemUnavailable(f"dagster-dask has no tag concurrency limits for {workload.name}")
    return _run(workload, ctx, executor="dask")


def _run(workload: WorkloadSpec, ctx: RunContext, *, executor: str) -> Measurement:
    if not VENV_PYTHON.exists():
        raise SystemUnavailable(
            f"{VENV.relative_to(REPO_ROOT)} missing; run bash bench/setup_baselines.sh"
        )
    width = workload.width if workload.width is not None else 0
    with tempfile.TemporaryDirectory(prefix="bench-dagster-") as directory:
        out_path = Path(directory) / "result.json"
        log_path = Path(directory) / "dagster.log"
        command = [
            str(VENV_PYTHON),
            "-m",
            MODULE,
            "--workload",
            workload.base,
            "--width",
            str(width),
            "--executor",
            executor,
            "--runs",
            str(ctx.runs),
            "--warmups",
            str(ctx.warmups),
            "--out",
            str(out_path),
        ]
        # PYTHONPATH lets spawned/forkserver children import bench.* like the parent.
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with open(log_path, "wb") as log:
            try:
                completed = subprocess.run(
                    command,
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=ctx.timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired as error:
                raise BenchError(
                    f"Dagster {workload.name} ({executor}) took over "
                    f"{ctx.timeout_s} s (--timeout-s)"
                ) from error
        if completed.returncode != 0 or not out_path.exists():
            tail = " / ".join(log_path.read_text(errors="replace").splitlines()[-5:])
            raise BenchError(
                f"Dagster {workload.name} ({executor}) exited {completed.returncode}: {tail}"
            )
        report = json.loads(out_path.read_text(encoding="utf-8"))
    samples = tuple(
        Sample(wall_s=float(s["wall_s"]), extras=dict(s["extras"])) for s in report["samples"]
    )
    return Measurement(samples=samples, warmups=ctx.warmups)


def dagster_version() -> str | None:
    """The Dagster version in the venv, for the report's header; None when absent."""
    for metadata in VENV.glob("lib/python*/site-packages/dagster-[0-9]*.dist-info/METADATA"):
        for line in metadata.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Version: "):
                return line.removeprefix("Version: ")
    return None
