"""Global limits from the CLI, and a waiting step that says what it waits for."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from coreexec import EventKind, Instance, execute_job
from coreexec.limits import RedisTagLimiter, SlotRequest, slots_for
from coreexec.limits.global_rules import GlobalRules
from coreexec.limits.rules import TagConcurrencyLimit
from coreexec.storage import RunStatus

REPO = Path(__file__).resolve().parents[2]


def _cli(home: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "COREEXEC_HOME": str(home),
        "COREEXEC_REDIS_URL": redis_url,
        "PYTHONPATH": str(REPO),
    }
    return subprocess.run(
        [sys.executable, "-m", "coreexec", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )


def test_limits_set_ls_rm_round_trip(redis_url: str, tmp_path: Path) -> None:
    assert _cli(tmp_path, redis_url, "limits", "set", "database=warehouse", "2").returncode == 0
    assert (
        _cli(tmp_path, redis_url, "limits", "set", "team", "1", "--per-unique-value").returncode
        == 0
    )
    listed = _cli(tmp_path, redis_url, "limits", "ls")
    assert "database=warehouse limit 2" in listed.stdout
    assert "team (per unique value) limit 1" in listed.stdout
    stored = GlobalRules.from_url(redis_url)
    assert {rule.describe() for rule in stored.list_limits()} == {
        "database=warehouse limit 2",
        "team (per unique value) limit 1",
    }
    removed = _cli(tmp_path, redis_url, "limits", "rm", "database=warehouse")
    assert removed.returncode == 0
    assert [rule.key for rule in stored.list_limits()] == ["team"]
    again = _cli(tmp_path, redis_url, "limits", "rm", "database=warehouse")
    assert again.returncode == 2 and "no stored limit" in again.stderr
    bad = _cli(tmp_path, redis_url, "limits", "set", "database=warehouse", "-1")
    assert bad.returncode == 2
    stored.close()


def test_broker_down_is_a_clear_error(tmp_path: Path) -> None:
    down = _cli(tmp_path, "redis://127.0.0.1:1/0", "limits", "ls")
    assert down.returncode == 1
    assert "127.0.0.1:1" in down.stderr


def test_waiting_step_says_which_rule_and_who_holds_it(redis_url: str, tmp_path: Path) -> None:
    # Another run holds the only slot; a stored rule makes the limit global.
    GlobalRules.from_url(redis_url).set_limit(
        TagConcurrencyLimit(key="database", value="warehouse", limit=1)
    )
    limiter = RedisTagLimiter.from_url(redis_url, lease_ttl_ms=60_000)
    rules = (TagConcurrencyLimit(key="database", value="warehouse", limit=1),)
    held = limiter.try_acquire(
        SlotRequest(
            "other-run", "busy_step", "lease-1", 0, slots_for(rules, {"database": "warehouse"})
        )
    )
    assert held.lease is not None

    instance = Instance.at(tmp_path)
    waiting = threading.Event()
    outcome: list[RunStatus] = []

    def listener(event: object) -> None:
        if getattr(event, "kind", None) is EventKind.SLOT_WAIT:
            waiting.set()

    def run() -> None:
        result = execute_job(
            "tests.jobs.limited_jobs:warehouse_job",
            {"execution": {"config": {"redis_url": redis_url}}},
            instance=instance,
            listeners=[listener],
        )
        outcome.append(result.status)

    runner = threading.Thread(target=run)
    runner.start()
    assert waiting.wait(30), "the step never reported that it waits for a slot"
    (record,) = instance.storage.list_runs()
    shown = _cli(tmp_path, redis_url, "runs", "show", record.run_id)
    line = next(row for row in shown.stdout.splitlines() if row.startswith("load_rows"))
    assert "waiting for slot" in line
    assert "database=warehouse limit 1" in line and "other-ru/busy_step" in line
    listed = _cli(tmp_path, redis_url, "limits", "ls")
    assert "held by   run other-run  step busy_step" in listed.stdout
    assert f"run {record.run_id}  step load_rows" in listed.stdout

    limiter.release(held.lease)
    runner.join(30)
    assert outcome == [RunStatus.SUCCESS]
    assert limiter.slots() == ()
    limiter.close()
