"""``python -m bench``: run workloads on systems and print a Markdown table.

Example: ``python -m bench --workloads W1,W3 --systems plain-celery,coreexec-in-process``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.baselines.dagster_runner import dagster_version
from bench.harness import (
    SYSTEMS,
    WORKLOAD_DESCRIPTIONS,
    BenchError,
    CellOutcome,
    RunContext,
    SystemSpec,
    WorkloadSpec,
    intervals_directory,
    parse_systems,
    parse_workload,
    run_cell,
)
from bench.report import environment_line, markdown_table, to_json

DEFAULT_WORKLOADS = "W1,W2,W3,W4,W5,L1"
VERSIONED = ("celery", "kombu", "redis")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--workloads",
        default=DEFAULT_WORKLOADS,
        help=f"comma-separated (default {DEFAULT_WORKLOADS}); W1@N: width N",
    )
    parser.add_argument(
        "--systems",
        default=None,
        help="comma-separated system names (default: every default system)",
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs per cell (default 3)")
    parser.add_argument(
        "--warmups", type=int, default=1, help="untimed runs before timing (default 1)"
    )
    parser.add_argument(
        "--slow-runs",
        type=int,
        default=None,
        help="timed runs for slow systems (Dagster multiprocess); default --runs",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=1800.0,
        help="limit for one cell's subprocess, where a system uses one",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every sample here")
    parser.add_argument("--list", action="store_true", help="list workloads and systems")
    return parser


def _listing() -> str:
    lines = ["workloads:"]
    lines += [f"  {name:4} {text}" for name, text in WORKLOAD_DESCRIPTIONS.items()]
    lines.append("systems:")
    for spec in SYSTEMS.values():
        flag = "" if spec.default else "  [only when named]"
        lines.append(f"  {spec.name:28} {spec.description}{flag}")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    dagster = dagster_version()
    if dagster is not None:
        found["dagster"] = f"{dagster} (bench/.venv-dagster)"
    return found


def run_matrix(
    workloads: Sequence[WorkloadSpec],
    systems: Sequence[SystemSpec],
    *,
    runs: int,
    warmups: int,
    slow_runs: int,
    timeout_s: float,
) -> list[CellOutcome]:
    """Every supported workload x system pair; resources live until the last cell ends."""
    outcomes: list[CellOutcome] = []
    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coreexec-bench-")))
        stack.enter_context(intervals_directory(base))
        ctx = RunContext(runs=runs, warmups=warmups, timeout_s=timeout_s, stack=stack)
        slow_ctx = ctx.with_runs(slow_runs)
        for workload in workloads:
            for system in systems:
                if workload.base not in system.workloads:
                    continue
                print(f"[bench] {workload.name} on {system.name} ...", file=sys.stderr, flush=True)
                outcome = run_cell(workload, system, slow_ctx if system.slow else ctx)
                print(f"[bench]   {_summary(outcome)}", file=sys.stderr, flush=True)
                outcomes.append(outcome)
    return outcomes


def _summary(outcome: CellOutcome) -> str:
    if outcome.measurement is not None:
        walls = ", ".join(f"{s.wall_s:.4f}" for s in outcome.measurement.samples)
        return f"wall s: {walls}"
    if outcome.unavailable is not None:
        return f"n/a: {outcome.unavailable}"
    return f"error: {outcome.error}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        print(_listing())
        return 0
    if args.runs < 1 or args.warmups < 0 or (args.slow_runs is not None and args.slow_runs < 1):
        parser.error("--runs and --slow-runs must be at least 1, --warmups at least 0")
    try:
        workloads = [parse_workload(name) for name in args.workloads.split(",") if name.strip()]
        systems = parse_systems(args.systems)
    except BenchError as error:
        parser.error(str(error))
    slow_runs = args.slow_runs if args.slow_runs is not None else args.runs
    outcomes = run_matrix(
        workloads,
        systems,
        runs=args.runs,
        warmups=args.warmups,
        slow_runs=slow_runs,
        timeout_s=args.timeout_s,
    )
    versions = _versions()
    print(
        f"Median of {args.runs} runs after {args.warmups} warm-up"
        f"{'s' if args.warmups != 1 else ''} (slow systems: {slow_runs}); "
        f"{environment_line(versions)}.\n"
    )
    print(markdown_table(outcomes))
    if args.json is not None:
        report = to_json(outcomes, runs=args.runs, warmups=args.warmups, versions=versions)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if any(outcome.error is not None for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
