"""A run whose start fails ends FAILURE with the reason; none is left QUEUED."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from coreexec import execute_job
from coreexec.cli import cli
from coreexec.errors import BrokerConnectionError
from coreexec.events import EventKind
from coreexec.instance import Instance
from coreexec.storage.base import RunStatus

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.fixture
def no_redis(coreexec_home: Path, monkeypatch: pytest.MonkeyPatch) -> Instance:
    monkeypatch.setenv("COREEXEC_BROKER_URL", UNREACHABLE)
    monkeypatch.delenv("COREEXEC_REDIS_URL", raising=False)
    return Instance.from_env()


def _only_run(instance: Instance) -> tuple[RunStatus, list[str]]:
    (record,) = instance.storage.list_runs(limit=10)
    failures = [
        event.message
        for _, event in instance.storage.events(record.run_id)
        if event.kind is EventKind.RUN_FAILURE
    ]
    return record.status, failures


def test_execute_job_with_redis_unreachable_fails_the_run(no_redis: Instance) -> None:
    with pytest.raises(BrokerConnectionError):
        execute_job("tests.jobs.celery_jobs:fanout_job", instance=no_redis)
    status, failures = _only_run(no_redis)
    assert status is RunStatus.FAILURE
    assert len(failures) == 1 and "could not start" in failures[0]
    assert f"cannot reach Redis at {UNREACHABLE}" in failures[0]


def test_coreexec_run_with_redis_unreachable_leaves_a_failed_run(no_redis: Instance) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["run", "tests.jobs.celery_jobs:fanout_job"])
    assert result.exit_code == 1
    assert "cannot reach Redis" in result.output
    status, failures = _only_run(no_redis)
    assert status is RunStatus.FAILURE and failures
    listed = runner.invoke(cli, ["runs", "ls"])
    assert "FAILURE" in listed.output and "QUEUED" not in listed.output
    run_id = listed.output.splitlines()[1].split()[0]
    shown = runner.invoke(cli, ["runs", "show", run_id])
    assert "ended    the run could not start: cannot reach Redis" in shown.output
