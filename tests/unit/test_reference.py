"""Job references: loading, and errors that name the module or attribute."""

from __future__ import annotations

from pathlib import Path

import pytest

from coreexec import load_job
from coreexec.errors import JobReferenceError
from coreexec.reference import infer_reference
from tests.jobs import core_jobs


def test_loads_module_attribute_and_definitions_job() -> None:
    assert load_job("tests.jobs.core_jobs:scale_job").name == "scale_job"
    assert load_job("tests.jobs.core_jobs:defs.broken_job").name == "broken_job"
    assert load_job("tests.jobs.core_jobs:scale_job").reference == "tests.jobs.core_jobs:scale_job"


def test_unknown_module_is_named() -> None:
    with pytest.raises(JobReferenceError, match=r"module 'tests\.jobs\.nowhere' not found"):
        load_job("tests.jobs.nowhere:job")


def test_missing_attribute_lists_what_is_there() -> None:
    with pytest.raises(JobReferenceError, match=r"no attribute 'etl'.*defs, scale_job"):
        load_job("tests.jobs.core_jobs:etl")


def test_not_a_job_and_ambiguous_definitions() -> None:
    with pytest.raises(JobReferenceError, match="is a int, not a @job"):
        load_job("tests.jobs.core_jobs:not_a_job")
    with pytest.raises(JobReferenceError, match="holds several jobs"):
        load_job("tests.jobs.core_jobs:defs")
    with pytest.raises(JobReferenceError, match="no job named 'nope'"):
        load_job("tests.jobs.core_jobs:defs.nope")


def test_malformed_reference() -> None:
    with pytest.raises(JobReferenceError, match=r"must look like 'package\.module:attribute'"):
        load_job("tests.jobs.core_jobs")


def test_file_reference(tmp_path: Path) -> None:
    source = tmp_path / "myjobs.py"
    source.write_text(
        "from coreexec import job, step\n"
        "@step\ndef hello() -> str:\n    return 'hi'\n"
        "@job\ndef greet():\n    hello()\n"
    )
    loaded = load_job(f"{source}:greet")
    assert loaded.execute_in_process().output_for("hello") == "hi"
    with pytest.raises(JobReferenceError, match="no file"):
        load_job(f"{tmp_path / 'absent.py'}:greet")


def test_reference_is_inferred_for_module_level_jobs_only() -> None:
    assert infer_reference(core_jobs.scale_job) == "tests.jobs.core_jobs:scale_job"
    from coreexec import job, step

    @step
    def local_step() -> int:
        return 1

    @job
    def local_job() -> None:
        local_step()

    assert infer_reference(local_job) is None
