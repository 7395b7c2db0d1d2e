"""Is each part a process resolved reachable? One check per part, each naming what failed.

Storage: open it (PostgreSQL: connect and migrate) and read. Outputs: write, read and
delete a probe. Redis: PING. Broker and result backend: PING when they are Redis, a
TCP connection otherwise (coreexec itself does not import Celery's transports).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from coreexec.errors import CoreExecError
from coreexec.redis_clients import RedisError, redis_client
from coreexec.settings import Settings, is_redis_url
from coreexec.storage.from_url import storage_from_url
from coreexec.urls import masked_url

TIMEOUT_S = 3.0
_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "sqs": 443, "https": 443, "http": 80}


@dataclass(frozen=True)
class CheckResult:
    part: str
    url: str
    """Masked."""
    ok: bool
    detail: str


def _storage(settings: Settings) -> str:
    storage = storage_from_url(settings.resolved_storage_url, settings.home_path)
    try:
        storage.list_runs(limit=1)
        version = getattr(storage, "schema_version", None)
        return f"schema version {version}" if version is not None else "readable"
    finally:
        storage.close()


def _io(settings: Settings) -> str:
    if settings.io_url:
        from coreexec.object_store_io import io_manager_from_url

        io_manager_from_url(settings.io_url).check()
        return "wrote, read and deleted a probe"
    directory = settings.home_path / "storage"
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".coreexec-probe-{uuid.uuid4().hex}"
    probe.write_bytes(b"ok")
    probe.unlink()
    return "wrote and deleted a probe file"


def _ping_redis(url: str) -> str:
    client = redis_client(url, check=False, timeout_s=TIMEOUT_S)
    try:
        client.ping()
    finally:
        client.close()
    return "PING answered"


def _reach(url: str) -> str:
    """PING for Redis, else a TCP connection to the URL's host and port."""
    if is_redis_url(url):
        return _ping_redis(url)
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme == "rpc" or not parts.hostname:
        return "nothing to reach (served through the broker)"
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    if port is None:
        return f"no port known for {scheme}://; not checked"
    with socket.create_connection((parts.hostname, port), timeout=TIMEOUT_S):
        pass
    return f"TCP connection to {parts.hostname}:{port} accepted"


def _one(part: str, url: str, check: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(part, masked_url(url), True, check())
    except (CoreExecError, OSError, RedisError, ValueError) as exc:
        return CheckResult(part, masked_url(url), False, _reason(exc))


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, CoreExecError) else f"{type(exc).__name__}: {text}"


def check_all(settings: Settings) -> list[CheckResult]:
    """Every part, in the order a run needs them."""
    results = [
        _one("storage", settings.resolved_storage_url, lambda: _storage(settings)),
        _one("io", settings.resolved_io_url, lambda: _io(settings)),
        _one("broker", settings.resolved_broker_url, lambda: _reach(settings.resolved_broker_url)),
        _one(
            "result_backend",
            settings.resolved_backend_url,
            lambda: _reach(settings.resolved_backend_url),
        ),
    ]
    try:
        redis_url = settings.resolved_redis_url
    except CoreExecError as exc:
        results.append(CheckResult("redis", "(none)", False, str(exc)))
    else:
        results.append(_one("redis", redis_url, lambda: _ping_redis(redis_url)))
    return results
