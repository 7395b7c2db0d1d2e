"""Figures derived from measurements, and the Markdown / JSON report.

Per-step overhead = (wall - ideal) / steps; efficiency = ideal / wall (only where
ideal > 0); wall ratio = wall / the baseline system's wall on the same workload, measured
in the same bench run, and overhead ratio the same for per-step overheads (below 1: less
than the baseline). On sleepy workloads the overhead ratio is the telling one, since the
sleeps are the same for every system.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.harness import CellOutcome


def overhead_per_step_s(wall_s: float, ideal_s: float, steps: int) -> float:
    """What each step cost beyond its own work: ``(wall - ideal) / steps``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return (wall_s - ideal_s) / steps


def efficiency(wall_s: float, ideal_s: float) -> float | None:
    """``ideal / wall``: 1.0 is perfect; None where the workload has no ideal (trivial steps)."""
    if ideal_s <= 0 or wall_s <= 0:
        return None
    return ideal_s / wall_s


def ratio(wall_s: float, baseline_wall_s: float | None) -> float | None:
    """``wall / baseline wall``; None when the baseline has no figure in this run."""
    if baseline_wall_s is None or baseline_wall_s <= 0:
        return None
    return wall_s / baseline_wall_s


def format_duration(seconds: float) -> str:
    """Three significant figures in the largest unit that keeps the number >= 1."""
    magnitude = abs(seconds)
    if magnitude >= 1:
        return f"{seconds:.3g} s" if magnitude < 100 else f"{seconds:.1f} s"
    if magnitude >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    if magnitude == 0:
        return "0 s"
    return f"{seconds * 1e6:.3g} µs"


def format_extra(name: str, value: float) -> str:
    """``max_concurrency`` -> ``max concurrency 2``; ``_s``/``_us``/``_per_s`` keep their units."""
    label = name.replace("_", " ")
    if name.endswith("_per_s"):
        return f"{label.removesuffix(' per s')} {value:,.0f}/s"
    if name.endswith("_us"):
        return f"{label.removesuffix(' us')} {format_duration(value / 1e6)}"
    if name.endswith("_s"):
        return f"{label.removesuffix(' s')} {format_duration(value)}"
    if float(value).is_integer():
        return f"{label} {int(value)}"
    return f"{label} {value:.3g}"


@dataclass(frozen=True)
class Row:
    """One line of the table, computed from a cell and the baseline cell beside it."""

    workload: str
    system: str
    wall: str
    runs: str
    ideal: str
    overhead: str
    efficiency: str
    baseline: str
    wall_ratio: str
    overhead_ratio: str
    notes: str

    def cells(self) -> tuple[str, ...]:
        return (
            self.workload,
            self.system,
            self.wall,
            self.runs,
            self.ideal,
            self.overhead,
            self.efficiency,
            self.baseline,
            self.wall_ratio,
            self.overhead_ratio,
            self.notes,
        )


HEADER = (
    "workload",
    "system",
    "wall (median)",
    "runs",
    "ideal",
    "overhead / step",
    "efficiency",
    "baseline",
    "wall ratio",
    "overhead ratio",
    "notes",
)


def format_ratio(value: float | None) -> str:
    """``0.24x``; two significant figures below 0.1 so large wins do not read as 0.00x."""
    if value is None:
        return "—"
    if value < 0.1:
        return f"{value:.2g}x"
    return f"{value:.2f}x"


def measured_cells(outcomes: Sequence[CellOutcome]) -> dict[tuple[str, str], CellOutcome]:
    """``(workload, system) -> outcome`` of every measured cell, to look baselines up."""
    return {(o.workload.name, o.system.name): o for o in outcomes if o.measurement is not None}


def _overhead_s(outcome: CellOutcome) -> float:
    assert outcome.measurement is not None
    ideal_s = outcome.workload.ideal_s(outcome.system.parallelism)
    return overhead_per_step_s(outcome.measurement.wall_median_s, ideal_s, outcome.workload.steps)


def baseline_ratios(
    outcome: CellOutcome, cells: Mapping[tuple[str, str], CellOutcome]
) -> tuple[float | None, float | None]:
    """(wall ratio, overhead ratio) against the system's baseline on the same workload."""
    system = outcome.system
    baseline = cells.get((outcome.workload.name, system.baseline or ""))
    if outcome.measurement is None or baseline is None or baseline.measurement is None:
        return None, None
    wall = ratio(outcome.measurement.wall_median_s, baseline.measurement.wall_median_s)
    return wall, ratio(_overhead_s(outcome), _overhead_s(baseline))


def build_row(outcome: CellOutcome, cells: Mapping[tuple[str, str], CellOutcome]) -> Row:
    workload, system = outcome.workload, outcome.system
    ideal_s = workload.ideal_s(system.parallelism)
    ideal = format_duration(ideal_s) if ideal_s > 0 else "0"
    if system.parallelism == 1 and workload.base in ("W3", "W4"):
        ideal += " (serial)"
    m = outcome.measurement
    if m is None:
        status = (
            f"n/a ({outcome.unavailable})"
            if outcome.unavailable is not None
            else f"error ({outcome.error})"
        )
        return Row(workload.name, system.name, status, "", ideal, "", "", "", "", "", "")
    wall_s = m.wall_median_s
    eff = efficiency(wall_s, ideal_s)
    wall_ratio, overhead_ratio = baseline_ratios(outcome, cells)
    baseline = "—"
    if system.baseline is not None:
        measured = (workload.name, system.baseline) in cells
        baseline = system.baseline if measured else f"{system.baseline} (not measured)"
    notes = [format_extra(name, value) for name, value in m.extras.items()]
    if m.runs == 1:
        notes.insert(0, "single run")
    return Row(
        workload=workload.name,
        system=system.name,
        wall=format_duration(wall_s),
        runs=str(m.runs),
        ideal=ideal,
        overhead=format_duration(overhead_per_step_s(wall_s, ideal_s, workload.steps)),
        efficiency=f"{eff:.2f}" if eff is not None else "—",
        baseline=baseline,
        wall_ratio=format_ratio(wall_ratio),
        overhead_ratio=format_ratio(overhead_ratio),
        notes="; ".join(notes),
    )


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(outcomes: Sequence[CellOutcome]) -> str:
    """The report table, one row per workload x system, in the order given."""
    cells = measured_cells(outcomes)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for outcome in outcomes:
        row = build_row(outcome, cells)
        lines.append("| " + " | ".join(_escape(cell) for cell in row.cells()) + " |")
    return "\n".join(lines)


def environment_line(versions: Mapping[str, str]) -> str:
    """One line saying where the figures come from."""
    parts = [f"Python {platform.python_version()}", f"{_cpu_count()} cores"]
    parts += [f"{name} {version}" for name, version in versions.items()]
    return ", ".join(parts)


def _cpu_count() -> int:
    return os.cpu_count() or 1


def to_json(
    outcomes: Sequence[CellOutcome], *, runs: int, warmups: int, versions: Mapping[str, str]
) -> dict[str, Any]:
    """Everything measured, every sample included, for later comparison."""
    measured = measured_cells(outcomes)
    cells = []
    for outcome in outcomes:
        workload, system, m = outcome.workload, outcome.system, outcome.measurement
        ideal_s = workload.ideal_s(system.parallelism)
        cell: dict[str, Any] = {
            "workload": workload.name,
            "system": system.name,
            "steps": workload.steps,
            "ideal_s": ideal_s,
            "baseline": system.baseline,
            "unavailable": outcome.unavailable,
            "error": outcome.error,
        }
        if m is not None:
            wall_s = m.wall_median_s
            wall_ratio, overhead_ratio = baseline_ratios(outcome, measured)
            cell.update(
                wall_median_s=wall_s,
                runs=m.runs,
                warmups=m.warmups,
                overhead_per_step_s=overhead_per_step_s(wall_s, ideal_s, workload.steps),
                efficiency=efficiency(wall_s, ideal_s),
                wall_ratio_to_baseline=wall_ratio,
                overhead_ratio_to_baseline=overhead_ratio,
                extras=m.extras,
                samples=[{"wall_s": s.wall_s, "extras": dict(s.extras)} for s in m.samples],
            )
        cells.append(cell)
    return {"runs": runs, "warmups": warmups, "environment": dict(versions), "cells": cells}
