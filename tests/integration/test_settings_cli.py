"""``coreexec settings``: what a process resolved, passwords masked, each part checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fleet_fixtures import S3_SECRET_KEY
from tests.support.ports import free_port
from tests.support.postgres import PASSWORD
from tests.support.processes import REPO_ROOT, child_env


def _coreexec(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coreexec", *args],
        capture_output=True,
        text=True,
        env=child_env(env),
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


@pytest.fixture
def fleet_env(postgres_url: str, s3_env: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "COREEXEC_HOME": str(tmp_path / "home"),
        "COREEXEC_STORAGE_URL": postgres_url,
        "COREEXEC_IO_URL": s3_env,
        "COREEXEC_BROKER_URL": redis_url,
        "COREEXEC_REDIS_URL": redis_url,
    }


@pytest.mark.postgres
def test_settings_prints_every_part_masked_and_checks_it(fleet_env: dict[str, str]) -> None:
    done = _coreexec("settings", "--json", env=fleet_env)
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    parts = json.loads(done.stdout)
    assert set(parts) == {"home", "storage", "io", "broker", "result_backend", "redis"}
    assert all(part.get("ok", True) for part in parts.values()), parts
    assert parts["storage"]["url"].startswith("postgresql://coreexec:***@127.0.0.1:")
    assert parts["storage"]["detail"] == "schema version 1"
    assert parts["io"] == {
        "url": fleet_env["COREEXEC_IO_URL"],
        "from": "COREEXEC_IO_URL",
        "ok": True,
        "detail": "wrote, read and deleted a probe",
    }
    assert parts["result_backend"]["from"] == "the broker"


@pytest.mark.postgres
def test_settings_names_the_part_that_is_unreachable(fleet_env: dict[str, str]) -> None:
    dead_redis = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    done = _coreexec("settings", env={**fleet_env, "COREEXEC_REDIS_URL": dead_redis})
    assert done.returncode == 1
    assert "unreachable: redis" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    redis_at = next(i for i, line in enumerate(lines) if line.startswith("redis "))
    assert "redis://:***@127.0.0.1" in lines[redis_at]
    assert lines[redis_at + 1].split()[0] == "UNREACHABLE:"
    assert sum(line.strip().startswith("ok:") for line in lines) == 4


@pytest.mark.postgres
def test_a_missing_bucket_is_named_by_settings(fleet_env: dict[str, str]) -> None:
    done = _coreexec(
        "settings", env={**fleet_env, "COREEXEC_IO_URL": "s3://coreexec-missing-bucket/x"}
    )
    assert done.returncode == 1 and "unreachable: io" in done.stderr
    assert "does the bucket 'coreexec-missing-bucket' exist" in done.stdout


@pytest.mark.postgres
def test_help_and_errors_never_show_a_password(fleet_env: dict[str, str]) -> None:
    wrong = fleet_env["COREEXEC_STORAGE_URL"].replace(PASSWORD, PASSWORD + "-wrong")
    env = {**fleet_env, "COREEXEC_STORAGE_URL": wrong}
    outputs = [_coreexec(*args, "--help", env=env) for args in [(), ("settings",), ("runs",)]]
    listed = _coreexec("runs", "ls", env=env)
    assert listed.returncode != 0 and "cannot connect to the run storage" in listed.stderr
    for done in [*outputs, listed]:
        text = done.stdout + done.stderr
        assert PASSWORD not in text and S3_SECRET_KEY not in text
