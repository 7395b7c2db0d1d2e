"""``python -m bench.revisions``: the same cells on two revisions of coreexec, in one run.

Example: ``python -m bench.revisions --before 9d4e97a --rounds 4``.

The earlier revision is exported (``git archive``) into a temporary directory; the later
one is this checkout's work tree unless ``--after`` names another revision. Each round
runs ``python -m bench`` once in each tree, alternately (before, after, before, ...), so
a machine that gets busier or quieter mid-run shifts both columns alike. The table shows,
per cell, the median over the rounds of each round's per-step overhead (its cell median)
and the ratio after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKLOADS = "W1,W2,W3,W4"
DEFAULT_SYSTEMS = "coreexec-celery"

Cell = tuple[str, str]
"""(workload, system)."""


@dataclass(frozen=True)
class RevisionFigures:
    """Per-step overhead (seconds) of each cell, one figure per round."""

    label: str
    overheads: Mapping[Cell, Sequence[float]]


def export_revision(revision: str, into: Path) -> Path:
    """Write the tree of ``revision`` under ``into`` and return its root."""
    root = into / revision.replace("/", "_")
    root.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    archive_path = into / f"{root.name}.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(root, filter="data")
    return root


def run_bench(tree: Path, args: argparse.Namespace, json_path: Path) -> None:
    """One ``python -m bench`` in ``tree``, importing that tree's coreexec."""
    command = [
        sys.executable,
        "-m",
        "bench",
        "--workloads",
        args.workloads,
        "--systems",
        args.systems,
        "--runs",
        str(args.runs),
        "--warmups",
        str(args.warmups),
        "--json",
        str(json_path),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)


def overheads_of(report: Mapping[str, object]) -> dict[Cell, float]:
    """Per-step overhead of each measured cell of one ``--json`` report."""
    cells = report["cells"]
    assert isinstance(cells, list)
    found: dict[Cell, float] = {}
    for cell in cells:
        overhead = cell.get("overhead_per_step_s")
        if overhead is not None:
            found[(cell["workload"], cell["system"])] = float(overhead)
    return found


def collect(label: str, reports: Iterable[Mapping[str, object]]) -> RevisionFigures:
    per_cell: dict[Cell, list[float]] = {}
    for report in reports:
        for cell, overhead in overheads_of(report).items():
            per_cell.setdefault(cell, []).append(overhead)
    return RevisionFigures(label, per_cell)


def comparison_table(before: RevisionFigures, after: RevisionFigures) -> str:
    """Markdown: per cell, median ms/step of each revision and after / before."""
    lines = [
        f"| workload | system | {before.label} ms/step | {after.label} ms/step | after / before |",
        "|---|---|---|---|---|",
    ]
    for cell in sorted(set(before.overheads) | set(after.overheads)):
        old, new = before.overheads.get(cell, ()), after.overheads.get(cell, ())
        old_ms = statistics.median(old) * 1000 if old else None
        new_ms = statistics.median(new) * 1000 if new else None
        ratio = f"{new_ms / old_ms:.2f}" if old_ms and new_ms is not None else "n/a"
        lines.append(
            f"| {cell[0]} | {cell[1]} | {_figure(old_ms, old)} | {_figure(new_ms, new)} | {ratio} |"
        )
    return "\n".join(lines)


def _figure(median_ms: float | None, samples: Sequence[float]) -> str:
    if median_ms is None:
        return "n/a"
    spread = ", ".join(f"{s * 1000:.2f}" for s in samples)
    return f"{median_ms:.2f} ({spread})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.revisions", description=__doc__)
    parser.add_argument("--before", required=True, help="the earlier revision (a git rev)")
    parser.add_argument(
        "--after", default=None, help="the later revision (default: this work tree as it is)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternations (default 3)")
    parser.add_argument("--workloads", default=DEFAULT_WORKLOADS)
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per cell and round")
    parser.add_argument("--warmups", type=int, default=1)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="coreexec-bench-revisions-") as scratch:
        scratch_dir = Path(scratch)
        before_tree = export_revision(args.before, scratch_dir / "trees")
        after_tree = export_revision(args.after, scratch_dir / "trees") if args.after else REPO
        reports: dict[str, list[Mapping[str, object]]] = {"before": [], "after": []}
        for round_number in range(args.rounds):
            for label, tree in (("before", before_tree), ("after", after_tree)):
                print(f"round {round_number + 1}/{args.rounds}: {label}", file=sys.stderr)
                out = scratch_dir / f"{label}-{round_number}.json"
                run_bench(tree, args, out)
                reports[label].append(json.loads(out.read_text()))
    before = collect(args.before, reports["before"])
    after = collect(args.after or "work tree", reports["after"])
    print(comparison_table(before, after))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
