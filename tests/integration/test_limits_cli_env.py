"""`coreexec limits` finds the Redis the way the rest of coreexec does: --redis-url, else
COREEXEC_REDIS_URL, else COREEXEC_BROKER_URL when it is a Redis URL."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner

from coreexec.cli import cli


@pytest.fixture
def namespace() -> str:
    return f"env-{uuid.uuid4().hex[:8]}"


def _ls(namespace: str) -> str:
    result = CliRunner().invoke(cli, ["limits", "ls", "--namespace", namespace])
    assert result.exit_code == 0, result.output
    return result.output


def test_limits_follow_the_broker_then_the_redis_url(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COREEXEC_REDIS_URL", raising=False)
    monkeypatch.setenv("COREEXEC_BROKER_URL", redis_url)
    runner = CliRunner()
    made = runner.invoke(
        cli, ["limits", "set", "database=warehouse", "2", "--namespace", namespace]
    )
    assert made.exit_code == 0, made.output
    assert "database=warehouse" in _ls(namespace)

    # COREEXEC_REDIS_URL wins over the broker.
    monkeypatch.setenv("COREEXEC_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("COREEXEC_REDIS_URL", redis_url)
    assert "database=warehouse" in _ls(namespace)
    removed = runner.invoke(cli, ["limits", "rm", "database=warehouse", "--namespace", namespace])
    assert removed.exit_code == 0, removed.output
