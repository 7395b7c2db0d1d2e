"""coreexec's celery executor with fleet storage: PostgreSQL runs and S3 outputs.

The systems ``coreexec-celery-pg`` (PostgreSQL run storage, file outputs),
``coreexec-celery-s3`` (SQLite, outputs in S3) and ``coreexec-celery-pg-s3`` (both) run
like ``coreexec-celery`` (their baseline): a private redis-server and one ``celery -A
celery_app worker -c 4``, this process coordinating each run. The PostgreSQL server
(initdb in a temporary directory, as in the tests) and the S3 server (moto, in a
process of its own so that it takes no time from the coordinator's interpreter) are
started once per bench run; each system gets its own database and bucket. Workers get
the URLs and credentials through their environment only, as a container would.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.baselines.processes import WorkerSpec, celery_workers, redis_server, stop_process
from bench.harness import BenchError, Measurement, RunContext, SystemUnavailable, WorkloadSpec
from bench.systems_celery import CONCURRENCY, CeleryCluster, CeleryRunner, _wait_for_consumer

S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "bench-access-key",
    "AWS_SECRET_ACCESS_KEY": "bench-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def postgres_server() -> Iterator[object]:
    """The tests' throwaway PostgreSQL server (``tests/support/postgres.py``)."""
    try:
        from tests.support.postgres import PostgresServerProcess, postgres_bindir
    except ImportError as error:
        raise SystemUnavailable(f"cannot import the PostgreSQL helper: {error}") from error
    bindir = postgres_bindir()
    if bindir is None:
        raise SystemUnavailable("PostgreSQL is not installed (bash scripts/setup.sh)")
    with (
        tempfile.TemporaryDirectory(prefix="bench-pg-log-") as logs,
        PostgresServerProcess(log_dir=Path(logs), bindir=bindir) as server,
    ):
        yield server


@dataclass(frozen=True)
class S3Server:
    endpoint: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """``python -m moto.server`` on a free loopback port, stopped by pid."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as error:
        raise SystemUnavailable(f"moto[server] is not installed: {error}") from error
    port = _free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"moto server on port {port} did not start")
                time.sleep(0.05)
            yield S3Server(endpoint=f"http://127.0.0.1:{port}")
        finally:
            stop_process(process)


def _fleet_env(ctx: RunContext, *, postgres: bool, s3: bool) -> dict[str, str]:
    env: dict[str, str] = {}
    if postgres:
        server = ctx.resource("postgres", postgres_server)
        env["COREEXEC_STORAGE_URL"] = server.create_database()  # type: ignore[attr-defined]
    if s3:
        import boto3

        endpoint = ctx.resource("s3", s3_server).endpoint
        env |= {**S3_KEYS, "AWS_ENDPOINT_URL": endpoint}
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint, **_boto_keys()).create_bucket(Bucket=bucket)
        env["COREEXEC_IO_URL"] = f"s3://{bucket}/outputs"
    return env


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_KEYS["AWS_DEFAULT_REGION"],
    }


@contextlib.contextmanager
def fleet_cluster(extra_env: dict[str, str]) -> Iterator[CeleryCluster]:
    """As ``systems_celery.cluster``, with the fleet URLs in the worker's environment."""
    from celery_app.queues import STEP_QUEUES

    with contextlib.ExitStack() as stack:
        server = stack.enter_context(redis_server())
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fleet-")))
        env = {
            "COREEXEC_BROKER_URL": server.url,
            "COREEXEC_REDIS_URL": server.url,
            # SQLite or file outputs need the one home; with both URLs it holds nothing.
            "COREEXEC_HOME": str(home),
            **extra_env,
        }
        spec = WorkerSpec(
            "celery_app", list(STEP_QUEUES), CONCURRENCY, f"bench-fleet@{socket.gethostname()}"
        )
        pids = stack.enter_context(
            celery_workers([spec], env=env, ready=lambda: _wait_for_consumer(server.url))
        )
        yield CeleryCluster(server, home, tuple(pids), {})


def _run(workload: WorkloadSpec, ctx: RunContext, *, postgres: bool, s3: bool) -> Measurement:
    from coreexec.instance import Instance
    from coreexec.settings import Settings

    if workload.base not in ("W1", "W2", "W3", "W4"):
        raise SystemUnavailable(f"the celery executor has no {workload.name}")
    key = f"coreexec-celery-fleet-pg{int(postgres)}-s3{int(s3)}"
    env = ctx.resource(
        f"{key}-env", lambda: contextlib.nullcontext(_fleet_env(ctx, postgres=postgres, s3=s3))
    )
    cluster = ctx.resource(key, lambda: fleet_cluster(env))
    runner = CeleryRunner(cluster, workload)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # this process coordinates: S3 credentials as the worker has them
    try:
        settings = Settings(
            home=str(cluster.home),
            storage_url=env.get("COREEXEC_STORAGE_URL"),
            io_url=env.get("COREEXEC_IO_URL"),
        )
        runner.instance = Instance.from_settings(settings)
        runner.instance.redis_url = cluster.redis.url
        for _ in range(ctx.warmups):
            runner.sample()
        samples = tuple(runner.sample() for _ in range(ctx.runs))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return Measurement(samples=samples, warmups=ctx.warmups)


def run_postgres(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """PostgreSQL run storage, outputs in files."""
    return _run(workload, ctx, postgres=True, s3=False)


def run_s3(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """SQLite run storage, outputs in S3."""
    return _run(workload, ctx, postgres=False, s3=True)


def run_postgres_s3(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """PostgreSQL run storage and outputs in S3: a fleet without a shared disk."""
    return _run(workload, ctx, postgres=True, s3=True)
