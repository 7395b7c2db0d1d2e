"""The bench's maths and report: medians, overhead, efficiency, ratios, the table."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.harness import (
    INTERVALS_DIR_ENV,
    SYSTEMS,
    BenchError,
    CellOutcome,
    IntervalCapture,
    Measurement,
    RunContext,
    Sample,
    SystemSpec,
    aggregate_extra,
    max_overlap,
    measure,
    parse_systems,
    parse_workload,
    record_interval,
    run_cell,
)
from bench.report import (
    baseline_ratios,
    build_row,
    efficiency,
    format_duration,
    format_extra,
    format_ratio,
    markdown_table,
    measured_cells,
    overhead_per_step_s,
    ratio,
    to_json,
)

CELERY = SystemSpec(
    name="plain-celery",
    runner="x:y",
    workloads=frozenset({"W1", "W3"}),
    parallelism=4,
    description="",
)
CORE = SystemSpec(
    name="core",
    runner="x:y",
    workloads=frozenset({"W1", "W3"}),
    parallelism=4,
    description="",
    baseline="plain-celery",
)
SERIAL = SystemSpec(
    name="serial", runner="x:y", workloads=frozenset({"W3", "W4"}), parallelism=1, description=""
)


def measured(*walls: float, **extras: float) -> Measurement:
    return Measurement(samples=tuple(Sample(w, dict(extras)) for w in walls), warmups=1)


# ------------------------------------------------------------------------ the maths


def test_median_of_odd_and_even_run_counts() -> None:
    assert measured(3.0, 1.0, 2.0).wall_median_s == 2.0
    assert measured(4.0, 1.0, 2.0, 3.0).wall_median_s == 2.5
    assert measured(0.7).wall_median_s == 0.7


def test_measurement_needs_a_sample() -> None:
    with pytest.raises(BenchError):
        Measurement(samples=(), warmups=0)


def test_max_extras_keep_the_worst_run_and_others_the_median() -> None:
    assert aggregate_extra("max_concurrency", [2, 3, 2]) == 3
    assert aggregate_extra("job_def_s", [0.3, 0.1, 0.2]) == 0.2
    m = Measurement(
        samples=(
            Sample(1.0, {"max_concurrency": 2, "job_def_s": 0.1}),
            Sample(1.0, {"max_concurrency": 3, "job_def_s": 0.3}),
            Sample(1.0, {"max_concurrency": 1, "job_def_s": 0.2}),
        ),
        warmups=1,
    )
    assert m.extras == {"job_def_s": 0.2, "max_concurrency": 3}


def test_overhead_per_step_is_wall_less_ideal_over_steps() -> None:
    assert overhead_per_step_s(2.5, 2.0, 16) == pytest.approx(0.03125)
    assert overhead_per_step_s(0.41, 0.0, 102) == pytest.approx(0.41 / 102)
    with pytest.raises(ValueError):
        overhead_per_step_s(1.0, 0.0, 0)


def test_efficiency_only_where_there_is_an_ideal() -> None:
    assert efficiency(2.5, 2.0) == pytest.approx(0.8)
    assert efficiency(0.4, 0.0) is None
    assert efficiency(0.0, 2.0) is None


def test_ratio_against_the_baseline() -> None:
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None


def test_ideal_follows_the_systems_parallelism() -> None:
    assert parse_workload("W3").ideal_s(4) == pytest.approx(2.0)
    assert parse_workload("W3").ideal_s(1) == pytest.approx(8.0)
    assert parse_workload("W4").ideal_s(4) == pytest.approx(2.0)  # the limit 2 binds
    assert parse_workload("W4").ideal_s(1) == pytest.approx(4.0)
    assert parse_workload("W1").ideal_s(4) == 0.0


def test_max_overlap_counts_intervals_open_at_once() -> None:
    assert max_overlap([]) == 0
    assert max_overlap([(0, 1), (0.5, 1.5), (0.7, 0.8)]) == 3
    # A slot released and taken at the same instant is not two holders.
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    with pytest.raises(BenchError):
        max_overlap([(2, 1)])


# ---------------------------------------------------------------------- timing loop


def test_measure_discards_warmups_and_times_each_run() -> None:
    calls: list[int] = []

    def run_once() -> dict[str, float]:
        calls.append(len(calls))
        time.sleep(0.01)
        return {"max_concurrency": float(len(calls))}

    m = measure(run_once, runs=3, warmups=2)
    assert len(calls) == 5
    assert m.runs == 3
    assert [s.extras["max_concurrency"] for s in m.samples] == [3.0, 4.0, 5.0]
    assert all(s.wall_s >= 0.01 for s in m.samples)
    with pytest.raises(BenchError):
        measure(run_once, runs=0, warmups=0)


def test_interval_capture_sees_recorded_intervals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INTERVALS_DIR_ENV, str(tmp_path))
    record_interval(0.0, 1.0)  # left over from an earlier run: must be cleared
    with IntervalCapture() as capture:
        record_interval(10.0, 11.0)
        record_interval(10.5, 11.5)
    assert sorted(capture.intervals()) == [(10.0, 11.0), (10.5, 11.5)]
    assert capture.max_concurrency(expected=2) == 2
    with pytest.raises(BenchError, match="expected 3"):
        capture.max_concurrency(expected=3)


# -------------------------------------------------------------------------- names


def test_workload_names_and_wider_fanouts() -> None:
    assert parse_workload("W1").steps == 102
    wide = parse_workload("W1@1000")
    assert (wide.name, wide.base, wide.width, wide.steps) == ("W1@1000", "W1", 1000, 1002)
    assert parse_workload("W5").steps == 10_000


def test_unknown_workload_lists_the_valid_names() -> None:
    with pytest.raises(BenchError, match="valid workloads: W1, W2, W3, W4, W5, L1"):
        parse_workload("W9")


def test_unknown_system_lists_the_valid_names() -> None:
    valid = "valid systems: plain-celery, plain-celery-reliable, dagster-in-process"
    with pytest.raises(BenchError, match=valid):
        parse_systems("plain-celery,airflow")
    assert [s.name for s in parse_systems("plain-celery")] == ["plain-celery"]
    assert "dagster-multiprocess-spawn" not in [s.name for s in parse_systems(None)]


def test_the_cli_rejects_unknown_names_with_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--systems", "airflow"])
    assert exit_info.value.code == 2
    assert "valid systems:" in capsys.readouterr().err


def test_every_registered_system_has_a_known_baseline() -> None:
    for spec in SYSTEMS.values():
        assert spec.baseline is None or spec.baseline in SYSTEMS
        assert spec.runner.count(":") == 1


# ---------------------------------------------------------------------- run_cell


@contextlib.contextmanager
def context() -> Iterator[RunContext]:
    with contextlib.ExitStack() as stack:
        yield RunContext(runs=1, warmups=0, timeout_s=10, stack=stack)


def test_a_missing_runner_is_unavailable_not_a_crash() -> None:
    spec = SystemSpec(
        name="ghost",
        runner="bench.no_such_module:run",
        workloads=frozenset({"W1"}),
        parallelism=1,
        description="",
    )
    with context() as ctx:
        outcome = run_cell(parse_workload("W1"), spec, ctx)
    assert outcome.measurement is None
    assert outcome.unavailable is not None and "bench.no_such_module" in outcome.unavailable


def test_a_failing_runner_is_an_error_cell() -> None:
    spec = SystemSpec(
        name="broken",
        runner="json:loads",
        workloads=frozenset({"W1"}),
        parallelism=1,
        description="",
    )
    with context() as ctx:
        outcome = run_cell(parse_workload("W1"), spec, ctx)
    assert outcome.error is not None and outcome.unavailable is None


def test_resources_are_entered_once_and_closed_at_the_end() -> None:
    events: list[str] = []

    @contextlib.contextmanager
    def server() -> Iterator[str]:
        events.append("start")
        yield "redis://x"
        events.append("stop")

    with context() as ctx:
        assert ctx.resource("redis", server) == "redis://x"
        assert ctx.with_runs(5).resource("redis", server) == "redis://x"
        assert events == ["start"]
    assert events == ["start", "stop"]


# --------------------------------------------------------------------------- table


def test_row_figures_and_ratio_against_the_baseline_measured_in_the_same_run() -> None:
    w1 = parse_workload("W1")
    outcomes = [
        CellOutcome(w1, CELERY, measurement=measured(0.40, 0.41, 0.45)),
        CellOutcome(w1, CORE, measurement=measured(0.10, 0.08, 0.12)),
    ]
    table = markdown_table(outcomes)
    lines = table.splitlines()
    assert lines[0].startswith("| workload | system | wall (median) |")
    assert len(lines) == 4
    core = build_row(outcomes[1], measured_cells(outcomes))
    assert core.wall == "100 ms"
    assert core.overhead == format_duration(0.10 / 102)
    assert core.efficiency == "—"
    assert (core.baseline, core.wall_ratio, core.overhead_ratio) == (
        "plain-celery",
        "0.24x",
        "0.24x",
    )
    assert "| W1 | core | 100 ms | 3 | 0 |" in table


def test_overhead_ratio_discounts_the_sleeps() -> None:
    w3 = parse_workload("W3")  # ideal 2 s at parallelism 4
    outcomes = [
        CellOutcome(w3, CELERY, measurement=measured(2.16)),  # 10 ms per step
        CellOutcome(w3, CORE, measurement=measured(2.016)),  # 1 ms per step
    ]
    wall, overhead = baseline_ratios(outcomes[1], measured_cells(outcomes))
    assert wall == pytest.approx(2.016 / 2.16)
    assert overhead == pytest.approx(0.1)


def test_large_wins_do_not_read_as_zero() -> None:
    assert format_ratio(0.0043) == "0.0043x"
    assert format_ratio(0.24) == "0.24x"
    assert format_ratio(None) == "—"


def test_missing_baseline_and_single_runs_are_said() -> None:
    w3 = parse_workload("W3")
    row = build_row(CellOutcome(w3, CORE, measurement=measured(2.5, max_concurrency=4)), {})
    assert row.baseline == "plain-celery (not measured)"
    assert row.wall_ratio == "—"
    assert row.efficiency == "0.80"
    assert row.notes == "single run; max concurrency 4"


def test_serial_systems_get_a_serial_ideal() -> None:
    row = build_row(CellOutcome(parse_workload("W4"), SERIAL, measurement=measured(4.4)), {})
    assert row.ideal == "4 s (serial)"
    assert row.efficiency == "0.91"


def test_unavailable_and_failed_cells_show_their_reason_escaped() -> None:
    w1 = parse_workload("W1")
    table = markdown_table(
        [
            CellOutcome(w1, CELERY, unavailable="redis-server not found"),
            CellOutcome(w1, CORE, error="ValueError: a | b"),
        ]
    )
    assert "n/a (redis-server not found)" in table
    assert "error (ValueError: a \\| b)" in table


def test_formatting_of_durations_and_extras() -> None:
    assert format_duration(131.6) == "131.6 s"
    assert format_duration(2.0) == "2 s"
    assert format_duration(0.055) == "55 ms"
    assert format_duration(0.000262) == "262 µs"
    assert format_duration(0.0) == "0 s"
    assert format_extra("max_concurrency", 2.0) == "max concurrency 2"
    assert format_extra("job_def_s", 0.12) == "job def 120 ms"
    assert format_extra("pairs_per_s", 12345.6) == "pairs 12,346/s"
    assert format_extra("p99_us", 850.0) == "p99 850 µs"


def test_json_report_keeps_every_sample() -> None:
    w1 = parse_workload("W1")
    outcomes = [
        CellOutcome(w1, CELERY, measurement=measured(0.4, 0.5, 0.6)),
        CellOutcome(w1, CORE, measurement=measured(0.1, 0.2, 0.3)),
        CellOutcome(w1, SERIAL, unavailable="nope"),
    ]
    report = json.loads(json.dumps(to_json(outcomes, runs=3, warmups=1, versions={})))
    core = report["cells"][1]
    assert [s["wall_s"] for s in core["samples"]] == [0.1, 0.2, 0.3]
    assert core["wall_ratio_to_baseline"] == pytest.approx(0.4)
    assert core["overhead_ratio_to_baseline"] == pytest.approx(0.4)
    assert core["overhead_per_step_s"] == pytest.approx(0.2 / 102)
    assert report["cells"][2]["unavailable"] == "nope"
    assert "wall_median_s" not in report["cells"][2]


def test_intervals_env_is_restored(tmp_path: Path) -> None:
    from bench.harness import intervals_directory

    before = os.environ.get(INTERVALS_DIR_ENV)
    with intervals_directory(tmp_path) as directory:
        assert os.environ[INTERVALS_DIR_ENV] == str(directory)
    assert os.environ.get(INTERVALS_DIR_ENV) == before


def test_revision_comparison_takes_each_rounds_cell_and_shows_after_over_before() -> None:
    from bench.revisions import collect, comparison_table

    def report(w1: float, w2: float | None) -> dict[str, object]:
        return {
            "cells": [
                {"workload": "W1", "system": "coreexec-celery", "overhead_per_step_s": w1},
                {"workload": "W2", "system": "coreexec-celery", "overhead_per_step_s": w2},
            ]
        }

    before = collect("old", [report(0.004, 0.005), report(0.002, 0.006), report(0.003, None)])
    after = collect("new", [report(0.003, 0.005), report(0.003, 0.005)])
    table = comparison_table(before, after).splitlines()

    assert table[0] == "| workload | system | old ms/step | new ms/step | after / before |"
    assert table[2] == (
        "| W1 | coreexec-celery | 3.00 (4.00, 2.00, 3.00) | 3.00 (3.00, 3.00) | 1.00 |"
    )
    assert table[3] == "| W2 | coreexec-celery | 5.50 (5.00, 6.00) | 5.00 (5.00, 5.00) | 0.91 |"
