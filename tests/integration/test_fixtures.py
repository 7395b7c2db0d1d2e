"""The process fixtures themselves: real redis-server, celery worker and Flower."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.support.plain_celery_app import ADD_TASK, BROKER_ENV_VAR, create_app
from tests.support.processes import (
    REPO_ROOT,
    CeleryWorkerProcess,
    FlowerProcess,
    ManagedProcess,
    ProcessExitedError,
    ProcessTimeoutError,
    RedisServerProcess,
    group_pids,
    pid_alive,
)

PLAIN_APP = "tests.support.plain_celery_app"


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------- redis


def test_redis_server_fixture_answers(redis_server: RedisServerProcess) -> None:
    assert pid_alive(redis_server.pid)
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis_server.client() as client:
        assert client.ping()
        client.set(b"k", b"v")
        assert client.get(b"k") == b"v"  # bytes: decode_responses is off


def test_redis_url_is_flushed_before_the_test(
    redis_server: RedisServerProcess, request: pytest.FixtureRequest
) -> None:
    with redis_server.client() as client, redis_server.client(db=3) as client3:
        client.set(b"left-over", b"1")
        client3.set(b"left-over", b"1")
        url = request.getfixturevalue("redis_url")
        assert url == redis_server.url
        assert client.dbsize() == 0
        assert client3.dbsize() == 0


def test_redis_server_process_is_stopped_by_pid(tmp_path: Path) -> None:
    with RedisServerProcess(log_dir=tmp_path) as server:
        pid = server.pid
        assert server.ping()
    assert not pid_alive(pid)
    assert server.returncode == 0  # SIGTERM makes redis shut down cleanly
    assert group_pids(server.pgid) == []
    with pytest.raises(redis.ConnectionError):
        server.ping()


def test_redis_server_process_on_a_taken_port_fails_with_its_log(tmp_path: Path) -> None:
    with RedisServerProcess(log_dir=tmp_path / "a") as first:
        second = RedisServerProcess(port=first.port, log_dir=tmp_path / "b")
        with pytest.raises(ProcessExitedError, match="Address already in use"):
            second.start()
        assert not pid_alive(second.pid)


# ---------------------------------------------------------------------- ManagedProcess


def test_process_that_exits_early_raises_with_its_log_tail(tmp_path: Path) -> None:
    code = "import sys; print('starting up'); print('fatal: no config', file=sys.stderr); exit(3)"
    process = ManagedProcess(
        _python(code), name="early-exit", log_dir=tmp_path, ready=lambda: False
    )
    with pytest.raises(ProcessExitedError) as raised:
        process.start()
    message = str(raised.value)
    assert "exited with code 3" in message
    assert "fatal: no config" in message
    assert "starting up" in raised.value.log_tail
    assert process.returncode == 3


def test_wait_until_times_out_with_log_tail_and_last_error(tmp_path: Path) -> None:
    code = "import time; print('still booting', flush=True); time.sleep(300)"
    with ManagedProcess(_python(code), name="slow", log_dir=tmp_path) as process:
        process.wait_until(lambda: "still booting" in process.read_log(), 30, "first output")

        def never() -> bool:
            raise ConnectionRefusedError("nobody listens")

        with pytest.raises(ProcessTimeoutError) as raised:
            process.wait_until(never, 0.3, "a listener")
        assert "still booting" in str(raised.value)
        assert "nobody listens" in str(raised.value)
        assert process.is_running()


def test_env_and_cwd_reach_the_child(tmp_path: Path) -> None:
    code = "import os, sys; print(os.environ['MARK'], os.getcwd(), sys.path[1])"
    process = ManagedProcess(
        _python(code), env={"MARK": "m-42"}, cwd=tmp_path, log_dir=tmp_path / "logs"
    )
    with process:
        process.wait_until(lambda: not process.is_running(), 30, "exit")
    assert process.returncode == 0
    mark, cwd, first_path = process.read_log().split()
    assert (mark, Path(cwd), Path(first_path)) == ("m-42", tmp_path, REPO_ROOT)


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids_file = tmp_path / "children"
    # The shell dies on SIGTERM while its children keep running: stop() must reap them
    # through the process group.
    script = f"sleep 300 & echo $! >> {pids_file}; sleep 300 & echo $! >> {pids_file}; wait"
    process = ManagedProcess(["sh", "-c", script], name="group", log_dir=tmp_path).start()
    process.wait_until(lambda: len(_read_pids(pids_file)) == 2, 30, "two children")
    children = _read_pids(pids_file)
    assert process.pgid == process.pid
    assert set(children) < set(process.group_pids())

    process.stop(timeout_s=5)

    assert not pid_alive(process.pid)
    assert not any(pid_alive(pid) for pid in children)
    assert group_pids(process.pgid) == []


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring SIGTERM', flush=True); time.sleep(300)"
    )
    process = ManagedProcess(_python(code), name="stubborn", log_dir=tmp_path).start()
    process.wait_until(lambda: "ignoring SIGTERM" in process.read_log(), 30, "handler set")
    assert process.stop(timeout_s=0.5) == -9
    assert not pid_alive(process.pid)


def test_kill9_kills_the_pid_only_and_stop_reaps_the_rest(tmp_path: Path) -> None:
    pids_file = tmp_path / "children"
    script = f"sleep 300 & echo $! > {pids_file}; wait"
    process = ManagedProcess(["sh", "-c", script], name="crash", log_dir=tmp_path).start()
    process.wait_until(lambda: len(_read_pids(pids_file)) == 1, 30, "a child")
    [child] = _read_pids(pids_file)

    assert process.kill9() == -9
    assert not pid_alive(process.pid)
    assert pid_alive(child)  # a crash of the leader leaves its children behind

    process.stop()
    assert not pid_alive(child)


# ---------------------------------------------------------------------- celery and flower


def test_celery_worker_runs_a_real_task(
    celery_worker_factory: Callable[..., CeleryWorkerProcess], redis_url: str
) -> None:
    worker = celery_worker_factory(
        app=PLAIN_APP, queues=["plain"], concurrency=2, env={BROKER_ENV_VAR: redis_url}
    )
    assert worker.ping()
    # The prefork pool: the main process plus one child per slot, all in its group.
    assert len(worker.group_pids()) == 3

    client = create_app(redis_url)
    try:
        result = client.send_task(ADD_TASK, args=(2, 3), queue="plain")
        assert result.get(timeout=30) == 5
        result.forget()
    finally:
        client.close()

    pool = worker.group_pids()
    worker.stop()
    assert not any(pid_alive(pid) for pid in pool)


def test_flower_lists_the_worker_with_basic_auth(
    celery_worker_factory: Callable[..., CeleryWorkerProcess],
    flower_factory: Callable[..., FlowerProcess],
    redis_url: str,
) -> None:
    worker = celery_worker_factory(app=PLAIN_APP, env={BROKER_ENV_VAR: redis_url})
    flower = flower_factory(redis_url, basic_auth="alice:s3cret")

    status, _ = flower.get("/api/workers", auth=False)
    assert status == 401

    flower.wait_until(
        lambda: worker.nodename in flower.get_json("/api/workers?refresh=1"),
        30,
        f"flower to list {worker.nodename}",
    )


def test_factories_stop_everything_by_pid_at_teardown(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pids_file = tmp_path / "pids"
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("FIXTURE_PIDS_FILE", str(pids_file))
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]\n')
    pytester.makepyfile(
        f"""
        import os

        def test_inner(redis_server, redis_url, celery_worker_factory, flower_factory):
            worker = celery_worker_factory(
                app={PLAIN_APP!r}, env={{{BROKER_ENV_VAR!r}: redis_url}}
            )
            flower = flower_factory(redis_url)
            pids = [redis_server.pid, flower.pid, *worker.group_pids()]
            with open(os.environ["FIXTURE_PIDS_FILE"], "w") as out:
                out.write(" ".join(map(str, pids)))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=100)
    result.assert_outcomes(passed=1)
    pids = _read_pids(pids_file)
    assert len(pids) == 4  # redis, flower, worker main process and its one pool child
    assert [pid for pid in pids if pid_alive(pid)] == []
