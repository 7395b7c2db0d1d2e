"""The Dask executor on real clusters: a ``distributed.LocalCluster`` of worker processes,
and ``dask scheduler`` + two ``dask worker`` processes started from the command line on
loopback ports (stopped by pid).

Jobs come from ``tests.jobs.dask_jobs``; steps the tests steer write
``<step_key>.<attempt>.<what>`` files holding their pid under the run tag ``mark_dir``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import distributed
import pytest

from coreexec import Event, EventKind, Instance, RunStatus, execute_job
from coreexec.execution.run_context import RunContext
from coreexec.result import ExecutionResult
from tests.jobs.dask_jobs import FANOUT_WIDTH
from tests.support.dask_cluster import DaskSchedulerProcess, DaskWorkerProcess
from tests.support.waiting import wait_until
from tests.unit.test_async_steps import peak

JOBS = "tests.jobs.dask_jobs"
DEADLINE_S = 60.0


def dask_config(cluster: dict[str, Any], **config: Any) -> dict[str, Any]:
    return {"execution": {"config": {"cluster": cluster, **config}}}


def existing(address: str, **config: Any) -> dict[str, Any]:
    return dask_config({"existing": {"address": address}}, **config)


def step_events(result: ExecutionResult, kind: EventKind) -> list[str]:
    return [e.step_key or "" for e in result.events if e.kind is kind]


def children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[1] == me and fields[0] not in ("Z", "X"):
                found.add(int(entry.name))
    return found


class BackgroundRun:
    """``execute_job`` in a thread; ``context`` once the run has one."""

    def __init__(self, reference: str, run_config: dict[str, Any], **kwargs: Any) -> None:
        self.contexts: list[RunContext] = []
        self.results: list[ExecutionResult] = []
        self.errors: list[BaseException] = []
        self.events: list[Event] = []
        kwargs.setdefault("listeners", [self.events.append])

        def target() -> None:
            try:
                self.results.append(
                    execute_job(
                        reference, run_config, run_context_hook=self.contexts.append, **kwargs
                    )
                )
            except BaseException as exc:
                self.errors.append(exc)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def finish(self) -> ExecutionResult:
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive(), "the run did not end"
        if self.errors:
            raise self.errors[0]
        return self.results[0]


@pytest.fixture(params=["topic", "redis"])
def channel(request: pytest.FixtureRequest) -> dict[str, Any]:
    """How attempts report: on a Dask topic (no Redis), or through the attempt runner on
    the run's Redis stream (``redis_url``)."""
    if request.param == "topic":
        return {}
    return {"redis_url": request.getfixturevalue("redis_url")}


@pytest.fixture
def instance(tmp_path: Path) -> Instance:
    return Instance.at(tmp_path / "home")


@pytest.fixture
def mark_dir(tmp_path: Path) -> Path:
    path = tmp_path / "marks"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[distributed.LocalCluster]:
    """Two worker processes of one thread each, shared by this module's tests."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    try:
        yield cluster
    finally:
        cluster.close()


@dataclass
class CliCluster:
    scheduler: DaskSchedulerProcess
    gpu: DaskWorkerProcess
    plain: DaskWorkerProcess

    @property
    def address(self) -> str:
        return self.scheduler.address

    def wait_for_workers(self) -> None:
        with distributed.Client(self.address, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=DEADLINE_S)


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliCluster]:
    """``dask scheduler`` and two ``dask worker`` processes; one has the resource GPU=1."""
    logs = tmp_path_factory.mktemp("dask-cli")
    with DaskSchedulerProcess(logs) as scheduler:
        gpu = DaskWorkerProcess(scheduler.address, name="gpu", log_dir=logs, resources="GPU=1")
        plain = DaskWorkerProcess(scheduler.address, name="plain", log_dir=logs)
        with gpu, plain:
            cluster = CliCluster(scheduler, gpu, plain)
            cluster.wait_for_workers()
            yield cluster


# -- LocalCluster --------------------------------------------------------------------------


def test_fanout_fanin_on_an_existing_local_cluster(
    local_cluster: distributed.LocalCluster, instance: Instance, channel: dict[str, Any]
) -> None:
    result = execute_job(
        f"{JOBS}:fanout", existing(local_cluster.scheduler_address, **channel), instance=instance
    )

    assert result.success
    assert result.output_for("join") == sum(i * i for i in range(1, FANOUT_WIDTH + 1))
    assert sorted(step_events(result, EventKind.STEP_START)) == sorted(
        ["source", "join", *(f"square_{i}" for i in range(FANOUT_WIDTH))]
    )
    # The dashboard names each task <job>.<step_key>.<attempt>.
    assert "fanout.square_0.1" in local_cluster.scheduler.task_prefixes
    # An existing cluster is never closed by the executor.
    assert len(local_cluster.scheduler.workers) == 2


def test_async_steps_run_on_dask_workers(
    local_cluster: distributed.LocalCluster, instance: Instance
) -> None:
    result = execute_job(
        f"{JOBS}:async_fanout", existing(local_cluster.scheduler_address), instance=instance
    )

    assert result.output_for("join") == sum(i * i for i in range(1, FANOUT_WIDTH + 1))


def test_priority_order_and_a_cluster_it_starts_is_closed(instance: Instance) -> None:
    before = children()
    one_thread = {"local": {"n_workers": 1, "threads_per_worker": 1}}

    result = execute_job(f"{JOBS}:prioritized", dask_config(one_thread), instance=instance)

    assert result.success
    ranked = [key for key in step_events(result, EventKind.STEP_START) if key != "opener"]
    assert [key.split("_")[0] for key in ranked] == ["p15"] * 3 + ["p5"] * 3 + ["p0"] * 3
    wait_until(lambda: children() <= before, "the started cluster's processes to end", 10.0)


def test_any_cluster_class_by_import_path(instance: Instance) -> None:
    threads = {
        "cluster_class": "distributed.LocalCluster",
        "kwargs": {"n_workers": 1, "processes": False, "dashboard_address": ":0"},
    }
    result = execute_job(f"{JOBS}:fanout", dask_config(threads), instance=instance)

    assert result.output_for("join") == sum(i * i for i in range(1, FANOUT_WIDTH + 1))
    # processes: false runs the steps in threads of this process.
    assert {e.data["pid"] for e in result.events if e.kind is EventKind.STEP_START} == {os.getpid()}


def test_adaptive_scaling_of_a_started_cluster(instance: Instance) -> None:
    no_workers = {"local": {"n_workers": 0, "threads_per_worker": 1}}
    result = execute_job(
        f"{JOBS}:fanout",
        dask_config(no_workers, adapt={"minimum": 1, "maximum": 2}),
        instance=instance,
    )

    # The cluster started with no worker: only adapt gave the steps somewhere to run.
    assert result.output_for("join") == sum(i * i for i in range(1, FANOUT_WIDTH + 1))


def test_cancel_leaves_no_running_step(
    local_cluster: distributed.LocalCluster,
    instance: Instance,
    mark_dir: Path,
    channel: dict[str, Any],
) -> None:
    run = BackgroundRun(
        f"{JOBS}:spinners",
        existing(local_cluster.scheduler_address, **channel),
        instance=instance,
        tags={"mark_dir": str(mark_dir)},
    )
    wait_until(
        lambda: all((mark_dir / f"spin_{i}.1.entered").exists() for i in range(2)),
        "both spinning steps to start",
        DEADLINE_S,
    )
    wait_until(lambda: bool(run.contexts), "the run context", DEADLINE_S)
    run.contexts[0].request_cancel()
    result = run.finish()

    assert result.status is RunStatus.CANCELED
    for i in range(2):
        assert (mark_dir / f"spin_{i}.1.stopped").exists()
        failure = next(
            e
            for e in result.events
            if e.step_key == f"spin_{i}" and e.kind is EventKind.STEP_FAILURE
        )
        assert failure.data["failure_class"] == "cancelled"
        assert [e.kind for e in result.events if e.step_key == f"after_{i}"] == [
            EventKind.STEP_SKIPPED
        ]
    scheduler = local_cluster.scheduler
    wait_until(
        lambda: not any(worker.processing for worker in scheduler.workers.values()),
        "the Dask workers to be idle",
        10.0,
    )


def test_tag_limits_hold_across_two_runs(
    local_cluster: distributed.LocalCluster, tmp_path: Path, redis_url: str
) -> None:
    config = existing(
        local_cluster.scheduler_address,
        redis_url=redis_url,
        tag_concurrency_limits=[{"key": "database", "value": "warehouse", "limit": 1}],
    )
    runs = [
        BackgroundRun(
            f"{JOBS}:warehouse_naps",
            config,
            instance=Instance.at(tmp_path / "home"),
            tags={"sleep_s": "0.2"},
        )
        for _ in range(2)
    ]
    results = [run.finish() for run in runs]

    assert all(result.success for result in results)
    spans = [
        (part["entered"], part["left"])
        for result in results
        for part in (result.output_for(f"nap_{i}") for i in range(3))
    ]
    assert peak(spans) == 1
    # Both runs' steps ran on Dask workers (two of them), one at a time.
    assert len({result.output_for("nap_0")["pid"] for result in results} | {os.getpid()}) > 1


# -- dask scheduler + dask worker processes ------------------------------------------------


def test_gpu_steps_run_only_on_the_worker_with_the_resource(
    cli_cluster: CliCluster, instance: Instance
) -> None:
    cli_cluster.wait_for_workers()
    result = execute_job(f"{JOBS}:gpu_and_plain", existing(cli_cluster.address), instance=instance)

    assert result.success
    gpu_pids = set(cli_cluster.gpu.group_pids())
    assert {result.output_for(f"gpu_{i}") for i in range(4)} <= gpu_pids
    plain_pids = {result.output_for(f"plain_{i}") for i in range(4)}
    assert plain_pids <= gpu_pids | set(cli_cluster.plain.group_pids())


def test_a_killed_dask_worker_fails_the_attempt_and_the_retry_succeeds(
    cli_cluster: CliCluster, instance: Instance, mark_dir: Path, channel: dict[str, Any]
) -> None:
    cli_cluster.wait_for_workers()
    run = BackgroundRun(
        f"{JOBS}:survives_a_lost_worker",
        existing(cli_cluster.address, **channel),
        instance=instance,
        tags={"mark_dir": str(mark_dir)},
    )
    pid_file = mark_dir / "dies_first_time.1.pid"
    wait_until(pid_file.exists, "the first attempt to start", DEADLINE_S)
    # Its start has reached the coordinator: the worker is lost mid-step, not before.
    wait_until(
        lambda: any(
            e.kind is EventKind.STEP_START and e.step_key == "dies_first_time"
            for e in list(run.events)
        ),
        "the coordinator to hear of the start",
        DEADLINE_S,
    )
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    result = run.finish()

    assert result.success
    assert result.output_for("join") == 20 + 1
    failure = next(
        e
        for e in result.events
        if e.step_key == "dies_first_time" and e.kind is EventKind.STEP_FAILURE
    )
    assert failure.attempt == 1
    assert failure.data["failure_class"] == "infrastructure"
    assert "lost" in failure.message or "died" in failure.message
    starts = [
        e.attempt
        for e in result.events
        if e.step_key == "dies_first_time" and e.kind is EventKind.STEP_START
    ]
    assert starts == [1, 2]
