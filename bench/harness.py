"""Timing and the registries of workloads and systems.

A *workload* (W1..W5, L1) is what is measured; a *system* (plain Celery, Dagster,
coreexec executors) is what runs it. A system is one function
``run(workload, ctx) -> Measurement`` named in :data:`SYSTEMS` by ``"module:function"``,
imported only when it is asked for, so a system whose dependencies are missing shows up
as "n/a (reason)" instead of breaking the others.

This module imports only the standard library: the Dagster virtualenv imports it too
(to record step intervals), and it has neither coreexec nor celery installed.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
import statistics
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

INTERVALS_DIR_ENV = "BENCH_INTERVALS_DIR"
"""Directory where sleeping steps drop ``start end`` files (any process, any system)."""


class BenchError(Exception):
    """A benchmark was asked for something that does not exist or cannot be done."""


class SystemUnavailable(BenchError):
    """Raised by a system that cannot run here; the report shows ``n/a (reason)``."""


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """One timed run: its wall time and extra figures (``max_concurrency``, ``job_def_s``)."""

    wall_s: float
    extras: Mapping[str, float] = field(default_factory=dict)


def aggregate_extra(name: str, values: Sequence[float]) -> float:
    """``max_*`` figures keep the worst run (a limit must hold in every run); others the median."""
    if name.startswith("max_"):
        return max(values)
    return statistics.median(values)


@dataclass(frozen=True)
class Measurement:
    """The timed runs of one workload on one system (warm-up runs are not kept)."""

    samples: tuple[Sample, ...]
    warmups: int

    def __post_init__(self) -> None:
        if not self.samples:
            raise BenchError("a measurement needs at least one timed run")

    @property
    def runs(self) -> int:
        return len(self.samples)

    @property
    def wall_median_s(self) -> float:
        return statistics.median(sample.wall_s for sample in self.samples)

    @property
    def extras(self) -> dict[str, float]:
        names = sorted({name for sample in self.samples for name in sample.extras})
        return {
            name: aggregate_extra(name, [s.extras[name] for s in self.samples if name in s.extras])
            for name in names
        }


def measure(
    run_once: Callable[[], Mapping[str, float] | None], *, runs: int, warmups: int
) -> Measurement:
    """Call ``run_once`` ``warmups`` times untimed, then ``runs`` times timed.

    ``run_once`` may return extra figures for its run (e.g. ``{"max_concurrency": 2}``).
    Everything ``run_once`` does is inside the timing, so it must not start workers.
    """
    if runs < 1:
        raise BenchError(f"runs must be at least 1, got {runs}")
    for _ in range(warmups):
        run_once()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        extras = run_once()
        wall_s = time.perf_counter() - started
        samples.append(Sample(wall_s=wall_s, extras=dict(extras or {})))
    return Measurement(samples=tuple(samples), warmups=warmups)


# ------------------------------------------------------------------------- intervals


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """Largest number of ``(start, end)`` intervals open at one instant.

    An interval ending at the instant another starts does not overlap it: a slot released
    and taken again at the same time stamp is not two holders.
    """
    edges: list[tuple[float, int]] = []
    for start, end in intervals:
        if end < start:
            raise BenchError(f"interval ends before it starts: ({start}, {end})")
        edges.append((start, 1))
        edges.append((end, -1))
    # At equal times, -1 sorts before +1: ends are processed first.
    edges.sort()
    current = best = 0
    for _, delta in edges:
        current += delta
        best = max(best, current)
    return best


def record_interval(start_s: float, end_s: float) -> None:
    """Called by sleeping steps (in any process) to report when they ran.

    Does nothing when no capture directory is set, so steps also run outside the bench.
    """
    directory = os.environ.get(INTERVALS_DIR_ENV)
    if not directory:
        return
    path = Path(directory) / f"{uuid.uuid4().hex}.interval"
    path.write_text(f"{start_s!r} {end_s!r}\n", encoding="utf-8")


class IntervalCapture:
    """Collects the intervals steps record during one run (``with IntervalCapture() as c``).

    The directory is taken from ``$BENCH_INTERVALS_DIR``, which the harness sets before any
    worker starts so that every process inherits it; runs are sequential, so emptying it at
    the start of a run is enough to keep runs apart.
    """

    def __init__(self) -> None:
        directory = os.environ.get(INTERVALS_DIR_ENV)
        if not directory:
            raise BenchError(f"${INTERVALS_DIR_ENV} is not set; the harness sets it at start")
        self.directory = Path(directory)

    def __enter__(self) -> IntervalCapture:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.glob("*.interval"):
            path.unlink()
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def intervals(self) -> list[tuple[float, float]]:
        found = []
        for path in self.directory.glob("*.interval"):
            start, end = path.read_text(encoding="utf-8").split()
            found.append((float(start), float(end)))
        return found

    def max_concurrency(self, *, expected: int) -> int:
        """Max overlap of the recorded intervals; fails if a step did not record one."""
        intervals = self.intervals()
        if len(intervals) != expected:
            raise BenchError(
                f"expected {expected} recorded step intervals, found {len(intervals)} in "
                f"{self.directory}"
            )
        return max_overlap(intervals)


# ------------------------------------------------------------------------- workloads

W1_DEFAULT_WIDTH = 100
W3_STEPS, W3_SLEEP_S = 16, 0.5
W4_STEPS, W4_SLEEP_S, W4_LIMIT = 20, 0.2, 2
W2_STEPS = 20
W5_STEPS = 10_000
L1_PAIRS = 20_000


@dataclass(frozen=True)
class WorkloadSpec:
    """A workload: its name (``W1@1000`` for a wider W1), base name, size and parameters."""

    name: str
    base: str
    steps: int
    description: str
    width: int | None = None

    def ideal_s(self, parallelism: int) -> float:
        """Wall time with zero overhead on a system running ``parallelism`` steps at once."""
        if self.base == "W3":
            return math.ceil(W3_STEPS / parallelism) * W3_SLEEP_S
        if self.base == "W4":
            return math.ceil(W4_STEPS / min(parallelism, W4_LIMIT)) * W4_SLEEP_S
        return 0.0


WORKLOAD_DESCRIPTIONS = {
    "W1": "fanout: 1 root -> N parallel trivial steps -> 1 join (N+2 steps; W1@N sets N)",
    "W2": f"chain: {W2_STEPS} trivial steps in a line",
    "W3": f"sleepy: {W3_STEPS} independent steps sleeping {W3_SLEEP_S} s, parallelism 4",
    "W4": (
        f"tag-limited: {W4_STEPS} steps sleeping {W4_SLEEP_S} s tagged database=warehouse, "
        f"limit {W4_LIMIT}"
    ),
    "W5": f"plan: build the execution plan of a {W5_STEPS:,}-step job",
    "L1": f"limiter: {L1_PAIRS:,} acquire+release pairs against a local Redis",
}
WORKLOAD_NAMES = tuple(WORKLOAD_DESCRIPTIONS)

_W1_WIDTH = re.compile(r"^W1@(\d+)$")


def parse_workload(name: str) -> WorkloadSpec:
    """``"W3"`` or ``"W1@1000"`` -> spec; an unknown name lists the valid ones."""
    name = name.strip()
    width_match = _W1_WIDTH.match(name)
    if width_match:
        width = int(width_match.group(1))
        if width < 1:
            raise BenchError(f"W1 width must be at least 1, got {name!r}")
        return _w1(width)
    if name == "W1":
        return _w1(W1_DEFAULT_WIDTH)
    steps = {"W2": W2_STEPS, "W3": W3_STEPS, "W4": W4_STEPS, "W5": W5_STEPS, "L1": L1_PAIRS}
    if name not in steps:
        raise BenchError(
            f"unknown workload {name!r}; valid workloads: {', '.join(WORKLOAD_NAMES)} "
            "(and W1@N for a fanout of width N)"
        )
    return WorkloadSpec(
        name=name, base=name, steps=steps[name], description=WORKLOAD_DESCRIPTIONS[name]
    )


def _w1(width: int) -> WorkloadSpec:
    name = "W1" if width == W1_DEFAULT_WIDTH else f"W1@{width}"
    return WorkloadSpec(
        name=name, base="W1", steps=width + 2, description=WORKLOAD_DESCRIPTIONS["W1"], width=width
    )


# --------------------------------------------------------------------------- systems


@dataclass(frozen=True)
class SystemSpec:
    """A system that can run workloads.

    ``runner`` is ``"module:function"`` with ``function(workload, ctx) -> Measurement``;
    ``parallelism`` is how many steps it runs at once (sets the ideal of W3/W4);
    ``baseline`` names the system its wall times are compared with in the report;
    ``slow`` systems use ``--slow-runs``; systems with ``default=False`` run only when named.
    """

    name: str
    runner: str
    workloads: frozenset[str]
    parallelism: int
    description: str
    baseline: str | None = None
    slow: bool = False
    default: bool = True


def _spec(
    name: str,
    runner: str,
    workloads: str,
    parallelism: int,
    description: str,
    *,
    baseline: str | None = None,
    slow: bool = False,
    default: bool = True,
) -> SystemSpec:
    return SystemSpec(
        name=name,
        runner=runner,
        workloads=frozenset(workloads.split(",")),
        parallelism=parallelism,
        description=description,
        baseline=baseline,
        slow=slow,
        default=default,
    )


SYSTEMS: dict[str, SystemSpec] = {
    spec.name: spec
    for spec in (
        _spec(
            "plain-celery",
            "bench.baselines.plain_celery:run",
            "W1,W2,W3,W4",
            4,
            "Celery canvas (chord/chain/group), JSON, worker -c 4; W4 on a -c 2 queue",
        ),
        _spec(
            "plain-celery-reliable",
            "bench.baselines.plain_celery:run_reliable",
            "W1,W2,W3,W4",
            4,
            "the same canvas with coreexec's settings: acks late, prefetch 1, task events",
        ),
        _spec(
            "dagster-in-process",
            "bench.baselines.dagster_runner:run_in_process",
            "W1,W2,W3,W4,W5",
            1,
            "Dagster execute_in_process (serial)",
        ),
        _spec(
            "dagster-multiprocess",
            "bench.baselines.dagster_runner:run_multiprocess",
            "W1,W2,W3,W4",
            4,
            "Dagster multiprocess, forkserver, max_concurrent 4",
            slow=True,
        ),
        _spec(
            "dagster-multiprocess-spawn",
            "bench.baselines.dagster_runner:run_spawn",
            "W1,W2,W3,W4",
            4,
            "Dagster multiprocess, spawn (its default), max_concurrent 4",
            slow=True,
            default=False,
        ),
        _spec(
            "dagster-dask",
            "bench.baselines.dagster_runner:run_dask",
            "W1,W2,W3",
            4,
            "Dagster dask_executor (dagster-dask), LocalCluster of 4 processes x 1 thread",
        ),
        _spec(
            "coreexec-in-process",
            "bench.workloads:run_in_process",
            "W1,W2,W3,W4,W5",
            1,
            "coreexec execute_in_process (serial)",
            baseline="dagster-in-process",
        ),
        _spec(
            "coreexec-multiprocess",
            "bench.workloads:run_multiprocess",
            "W1,W2,W3,W4",
            4,
            "coreexec multiprocess executor, max_concurrent 4",
            baseline="dagster-multiprocess",
        ),
        _spec(
            "coreexec-celery",
            "bench.systems_celery:run",
            "W1,W2,W3,W4",
            4,
            "coreexec celery executor on real workers",
            baseline="plain-celery",
        ),
        _spec(
            "coreexec-celery-pg",
            "bench.systems_fleet:run_postgres",
            "W1,W2,W3,W4",
            4,
            "coreexec celery executor, PostgreSQL run storage, file outputs",
            baseline="coreexec-celery",
            default=False,
        ),
        _spec(
            "coreexec-celery-s3",
            "bench.systems_fleet:run_s3",
            "W1,W2,W3,W4",
            4,
            "coreexec celery executor, SQLite run storage, outputs in S3 (moto)",
            baseline="coreexec-celery",
            default=False,
        ),
        _spec(
            "coreexec-celery-pg-s3",
            "bench.systems_fleet:run_postgres_s3",
            "W1,W2,W3,W4",
            4,
            "coreexec celery executor, PostgreSQL run storage, outputs in S3 (moto)",
            baseline="coreexec-celery",
            default=False,
        ),
        _spec(
            "coreexec-dask",
            "bench.systems_dask:run",
            "W1,W2,W3,W4",
            4,
            "coreexec dask executor, LocalCluster of 4 processes x 1 thread, Dask topic",
            baseline="dagster-dask",
        ),
        _spec(
            "coreexec-dask-redis",
            "bench.systems_dask:run_redis",
            "W1,W2,W3,W4",
            4,
            "the same with redis_url: the attempt runner, events on the run's Redis stream",
            baseline="coreexec-multiprocess",
        ),
        _spec(
            "coreexec-limiter",
            "bench.workloads:run_limiter",
            "L1",
            1,
            "coreexec Redis tag limiter, acquire+release pairs",
        ),
    )
}
"""Adding a system: write ``def run_x(workload, ctx) -> Measurement`` and add one line here."""


def parse_systems(names: str | None) -> list[SystemSpec]:
    """Comma-separated names (None: the default set); an unknown name lists the valid ones."""
    if names is None:
        return [spec for spec in SYSTEMS.values() if spec.default]
    chosen = []
    for name in (part.strip() for part in names.split(",") if part.strip()):
        if name not in SYSTEMS:
            raise BenchError(f"unknown system {name!r}; valid systems: {', '.join(SYSTEMS)}")
        chosen.append(SYSTEMS[name])
    return chosen


def load_runner(spec: SystemSpec) -> Callable[[WorkloadSpec, RunContext], Measurement]:
    """Import the system's function; a missing import is reported as unavailable."""
    module_name, _, attribute = spec.runner.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SystemUnavailable(f"cannot import {module_name}: {error}") from error
    runner = getattr(module, attribute, None)
    if runner is None:
        raise SystemUnavailable(f"{spec.runner} is not written yet")
    return runner  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- running


class RunContext:
    """What a system function gets besides the workload: run counts and shared resources.

    ``resource(key, factory)`` enters ``factory()`` (a context manager: a redis-server, a
    pool of celery workers) the first time ``key`` is asked for and keeps it until the
    whole bench ends, so workers are started once, before any timing.
    """

    def __init__(
        self, *, runs: int, warmups: int, timeout_s: float, stack: contextlib.ExitStack
    ) -> None:
        self.runs = runs
        self.warmups = warmups
        self.timeout_s = timeout_s
        self._stack = stack
        self._resources: dict[str, object] = {}

    def resource(self, key: str, factory: Callable[[], contextlib.AbstractContextManager[T]]) -> T:
        if key not in self._resources:
            self._resources[key] = self._stack.enter_context(factory())
        return self._resources[key]  # type: ignore[return-value]

    def with_runs(self, runs: int) -> RunContext:
        """The same resources with another run count (slow systems)."""
        other = RunContext(
            runs=runs, warmups=self.warmups, timeout_s=self.timeout_s, stack=self._stack
        )
        other._resources = self._resources
        return other

    def measure(self, run_once: Callable[[], Mapping[str, float] | None]) -> Measurement:
        return measure(run_once, runs=self.runs, warmups=self.warmups)


@dataclass(frozen=True)
class CellOutcome:
    """What happened to one workload x system: a measurement, unavailable, or an error."""

    workload: WorkloadSpec
    system: SystemSpec
    measurement: Measurement | None = None
    unavailable: str | None = None
    error: str | None = None


def run_cell(workload: WorkloadSpec, system: SystemSpec, ctx: RunContext) -> CellOutcome:
    """Run one workload on one system; never raises for the system's own failures."""
    try:
        runner = load_runner(system)
        measurement = runner(workload, ctx)
    except SystemUnavailable as reason:
        return CellOutcome(workload, system, unavailable=str(reason))
    except Exception as error:  # one broken system must not hide the others' figures
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        return CellOutcome(workload, system, error=detail)
    return CellOutcome(workload, system, measurement=measurement)


@contextlib.contextmanager
def intervals_directory(base: Path) -> Iterator[Path]:
    """Point ``$BENCH_INTERVALS_DIR`` at a fresh directory for the whole bench."""
    directory = base / "intervals"
    directory.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get(INTERVALS_DIR_ENV)
    os.environ[INTERVALS_DIR_ENV] = str(directory)
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(INTERVALS_DIR_ENV, None)
        else:
            os.environ[INTERVALS_DIR_ENV] = previous
