"""Fixtures for fleet storage: a real PostgreSQL server and a local S3-compatible server.

``postgres_server``   session: a PostgresServerProcess (``.url``, ``.port``, ``.pid``),
                      stopped by pid at the end of the session.
``postgres_url``      function: the URL (with password) of a new, empty database.
``s3_server``         session: a moto S3 server on a free loopback port (``.endpoint``).
``s3_env``            function: AWS_* variables for it exported (children inherit them)
                      and a new bucket; returns ``s3://<bucket>/outputs``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.ports import LOOPBACK, free_port
from tests.support.postgres import PostgresServerProcess, postgres_bindir


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServerProcess]:
    """A PostgreSQL server for the whole session on a free loopback port."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed: bash scripts/setup.sh installs Debian's postgresql"
        )
    server = PostgresServerProcess(log_dir=tmp_path_factory.mktemp("postgres"), bindir=bindir)
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServerProcess) -> Iterator[str]:
    """A new empty database of the session's server, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@dataclass(frozen=True)
class S3Server:
    endpoint: str


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server in a thread of this process, on a free loopback port."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint=f"http://{LOOPBACK}:{port}")
    finally:
        server.stop()


S3_ACCESS_KEY = "test-access-key"
S3_SECRET_KEY = "test-secret-key"


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """Credentials and endpoint in the environment, a new bucket; ``s3://bucket/outputs``."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    bucket = f"coreexec-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server.endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/outputs"
