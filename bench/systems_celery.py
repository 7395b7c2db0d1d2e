"""coreexec's celery executor as a bench system, and the wide-fanout report.

``run(workload, ctx)`` is the ``coreexec-celery`` system of :data:`bench.harness.SYSTEMS`:
a private redis-server (broker, event streams, limiter), one ``celery -A celery_app
worker`` of concurrency 4 consuming the step queues, started once before any timing;
this process coordinates each run (``create_run`` + ``execute_run`` with
``celery_executor``). W4 uses the Redis tag limiter (``database=warehouse`` limit 2).

Besides the wall time, every sample carries:

* ``redis_cmds_per_step``: commands the Redis server executed during the run (``INFO
  commandstats`` before and after, outside the timing) divided by the steps, and the
  same for the commands that matter most (``redis_<command>_per_step``);
* ``coord_peak_mb`` (wide W1 only): the coordinator's peak Python heap during one extra,
  untimed run under ``tracemalloc`` (tracing slows a run, so it never shares one with
  a wall time).

``python -m bench.systems_celery`` prints W1-W4 next to plain Celery and W1 at 100,
1,000 and 10,000 leaves, with the overhead growth against W1 at 100.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.baselines.processes import RedisServer, WorkerSpec, celery_workers, redis_server
from bench.harness import (
    W4_LIMIT,
    BenchError,
    CellOutcome,
    IntervalCapture,
    Measurement,
    RunContext,
    Sample,
    SystemUnavailable,
    WorkloadSpec,
)

CONCURRENCY = 4
READY_TIMEOUT_S = 60.0
TOP_COMMANDS = ("xadd", "xread", "lpush", "brpop", "publish", "set", "evalsha", "hset")


NO_TASK_EVENTS = {"worker_send_task_events": False, "task_send_sent_event": False}
"""Celery settings of ``--no-task-events``: what Flower's events cost, measured apart."""


@dataclass(frozen=True)
class CeleryCluster:
    """What the system's runs share: Redis, the instance directory, the worker."""

    redis: RedisServer
    home: Path
    worker_pids: tuple[int, ...]
    celery_config: Mapping[str, Any]


def _wait_for_consumer(url: str) -> None:
    from celery_app.queue_presence import QueuePresence
    from celery_app.queues import DEFAULT_QUEUE
    from coreexec.redis_clients import redis_client

    presence = QueuePresence(redis_client(url))
    deadline = time.monotonic() + READY_TIMEOUT_S
    # The worker announces its queues once it consumes: poll that (a process start has
    # nothing to block on).
    while not presence.consumers(DEFAULT_QUEUE):
        if time.monotonic() > deadline:
            raise BenchError(f"no worker consumed {DEFAULT_QUEUE} within {READY_TIMEOUT_S}s")
        time.sleep(0.05)


@contextlib.contextmanager
def cluster(celery_config: Mapping[str, Any] | None = None) -> Iterator[CeleryCluster]:
    """A redis-server, a COREEXEC_HOME and one worker of concurrency 4 (with extra
    Celery settings ``celery_config``, if any)."""
    try:
        from celery_app.queues import STEP_QUEUES
    except ImportError as error:
        raise SystemUnavailable(f"celery_app cannot be imported: {error}") from error
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(redis_server())
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ce-home-")))
        env = {
            "COREEXEC_BROKER_URL": server.url,
            "COREEXEC_REDIS_URL": server.url,
            "COREEXEC_HOME": str(home),
        }
        if celery_config:
            config_file = home / "celery.yaml"
            config_file.write_text(yaml.safe_dump(dict(celery_config)), encoding="utf-8")
            env["COREEXEC_CELERY_CONFIG"] = str(config_file)
        spec = WorkerSpec(
            "celery_app", list(STEP_QUEUES), CONCURRENCY, f"bench-coreexec@{socket.gethostname()}"
        )
        pids = stack.enter_context(
            celery_workers([spec], env=env, ready=lambda: _wait_for_consumer(server.url))
        )
        yield CeleryCluster(server, home, tuple(pids), dict(celery_config or {}))


def _executor_config(cluster: CeleryCluster, workload: WorkloadSpec) -> dict[str, Any]:
    config: dict[str, Any] = {"broker": cluster.redis.url, "redis_url": cluster.redis.url}
    if cluster.celery_config:
        config["config_source"] = dict(cluster.celery_config)
    if workload.base == "W4":
        config["tag_concurrency_limits"] = [
            {"key": "database", "value": "warehouse", "limit": W4_LIMIT}
        ]
    return config


def _commandstats(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(body["calls"]) for name, body in stats.items()}


class CeleryRunner:
    """Runs one workload on the cluster, timing only the run itself."""

    def __init__(self, cluster: CeleryCluster, workload: WorkloadSpec) -> None:
        from bench.workloads import job_reference
        from celery_app import celery_executor
        from coreexec.instance import Instance
        from coreexec.redis_clients import redis_client

        self.workload = workload
        self.reference = job_reference(workload)
        self.executor_def = celery_executor.configured(_executor_config(cluster, workload))
        self.instance = Instance.at(cluster.home)
        self.instance.redis_url = cluster.redis.url
        self.client = redis_client(cluster.redis.url)
        self.last_commands: dict[str, float] = {}

    def _execute(self) -> Any:
        from coreexec.runs.create import create_run
        from coreexec.runs.execute import execute_run, result_of

        record = create_run(self.reference, instance=self.instance, executor_def=self.executor_def)
        context = execute_run(record.run_id, instance=self.instance, executor_def=self.executor_def)
        return result_of(context)

    def sample(self) -> Sample:
        """One timed run with its Redis command counts."""
        from bench.workloads import check_result, expected_intervals

        expected = expected_intervals(self.workload)
        before = _commandstats(self.client)
        with IntervalCapture() as capture:
            started = time.perf_counter()
            result = self._execute()
            wall_s = time.perf_counter() - started
        after = _commandstats(self.client)
        check_result(self.workload, result)
        extras: dict[str, float] = {}
        if expected:
            extras["max_concurrency"] = capture.max_concurrency(expected=expected)
        steps = self.workload.steps
        # INFO itself is one call before and one after; leave both out.
        delta = {name: after[name] - before.get(name, 0) for name in after}
        delta["info"] = delta.get("info", 0) - 1
        extras["redis_cmds_per_step"] = sum(delta.values()) / steps
        for name in TOP_COMMANDS:
            if delta.get(name):
                extras[f"redis_{name}_per_step"] = delta[name] / steps
        self.last_commands = {name: calls / steps for name, calls in delta.items() if calls}
        return Sample(wall_s=wall_s, extras=extras)

    def peak_memory_mb(self) -> float:
        """The coordinator's peak Python heap over one untimed, traced run."""
        tracemalloc.start()
        try:
            from coreexec.runs.create import create_run
            from coreexec.runs.execute import execute_run

            tracemalloc.reset_peak()
            # The coordinator's work only: not the test of the result afterwards.
            record = create_run(
                self.reference, instance=self.instance, executor_def=self.executor_def
            )
            execute_run(record.run_id, instance=self.instance, executor_def=self.executor_def)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak / 1e6


def run(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """The ``coreexec-celery`` system: W1 (any width) to W4."""
    return _run(workload, ctx, None)


def run_without_task_events(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """The same with Celery's task events (Flower's feed) switched off."""
    return _run(workload, ctx, NO_TASK_EVENTS)


def _run(
    workload: WorkloadSpec, ctx: RunContext, celery_config: Mapping[str, Any] | None
) -> Measurement:
    if workload.base not in ("W1", "W2", "W3", "W4"):
        raise SystemUnavailable(f"the celery executor has no {workload.name}")
    key = "coreexec-celery" + ("-no-events" if celery_config else "")
    runner = CeleryRunner(ctx.resource(key, lambda: cluster(celery_config)), workload)
    for _ in range(ctx.warmups):
        runner.sample()
    samples = [runner.sample() for _ in range(ctx.runs)]
    if workload.base == "W1" and (workload.width or 0) > 100:
        peak_mb = runner.peak_memory_mb()
        samples = [Sample(s.wall_s, {**s.extras, "coord_peak_mb": peak_mb}) for s in samples]
    return Measurement(samples=tuple(samples), warmups=ctx.warmups)


# ----------------------------------------------------------------------- the report


def _overhead_ms(outcome: CellOutcome) -> float | None:
    if outcome.measurement is None:
        return None
    ideal = outcome.workload.ideal_s(outcome.system.parallelism)
    wall = outcome.measurement.wall_median_s
    return (wall - ideal) / outcome.workload.steps * 1e3


def _extras_line(extras: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:.3g}" for name, value in sorted(extras.items()))


def main(argv: Sequence[str] | None = None) -> int:
    from bench.harness import SYSTEMS, SystemSpec, intervals_directory, parse_workload, run_cell

    parser = argparse.ArgumentParser(prog="python -m bench.systems_celery", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmups", type=int, default=1)
    parser.add_argument("--widths", default="1000,10000", help="wide W1 widths")
    parser.add_argument("--workloads", default="W1,W2,W3,W4")
    parser.add_argument(
        "--no-task-events", action="store_true", help="Celery task events off (no Flower feed)"
    )
    args = parser.parse_args(argv)

    runner = "run_without_task_events" if args.no_task_events else "run"
    ours = SystemSpec(
        name="coreexec-celery", runner=f"{__name__}:{runner}",
        workloads=frozenset({"W1", "W2", "W3", "W4"}), parallelism=CONCURRENCY,
        description="coreexec celery executor, one worker -c 4", baseline="plain-celery",
    )  # fmt: skip
    plain = SYSTEMS["plain-celery"]
    names = [n for n in args.workloads.split(",") if n]
    wide = [f"W1@{w}" for w in args.widths.split(",") if w]
    rows: list[tuple[str, str, str, str, str]] = []
    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ce-")))
        stack.enter_context(intervals_directory(base))
        ctx = RunContext(runs=args.runs, warmups=args.warmups, timeout_s=1800.0, stack=stack)
        w1_overhead: float | None = None
        for name in [*names, *wide]:
            workload = parse_workload(name)
            print(f"[bench] {workload.name} ...", file=sys.stderr, flush=True)
            mine = run_cell(workload, ours, ctx)
            theirs = run_cell(workload, plain, ctx) if "@" not in name else None
            if mine.error or mine.unavailable:
                rows.append((workload.name, "error", str(mine.error or mine.unavailable), "", ""))
                continue
            assert mine.measurement is not None
            overhead = _overhead_ms(mine)
            assert overhead is not None
            if workload.name == "W1":
                w1_overhead = overhead
            if theirs is not None and theirs.measurement is not None:
                base_overhead = _overhead_ms(theirs)
                assert base_overhead is not None
                versus = (
                    f"plain Celery {base_overhead:.2f} ms; ratio {overhead / base_overhead:.2f}"
                )
            elif w1_overhead is not None:
                versus = f"vs W1@100: {overhead / w1_overhead:.2f}x"
            else:
                versus = ""
            walls = [s.wall_s for s in mine.measurement.samples]
            rows.append((
                workload.name, f"{statistics.median(walls):.3f} s", f"{overhead:.2f} ms",
                versus, _extras_line(mine.measurement.extras),
            ))  # fmt: skip
    print("| workload | wall (median) | overhead / step | compared | extras |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
