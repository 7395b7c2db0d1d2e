"""Where a process finds everything it talks to, resolved in one place.

====================== ===================================================================
``COREEXEC_HOME``        SQLite run storage and file outputs when no URL says otherwise
``COREEXEC_STORAGE_URL`` run storage: ``postgresql://user:pw@host/db`` or ``sqlite:///path``
``COREEXEC_IO_URL``      step outputs: ``s3://bucket/prefix``, ``file:///dir``, ``gs://...``
``COREEXEC_BROKER_URL``  Celery broker (default ``redis://127.0.0.1:6379/0``)
``COREEXEC_RESULT_BACKEND`` Celery result backend (default: the broker)
``COREEXEC_REDIS_URL``   run event streams, attempt claims, tag limits (default: the
                         broker when it is Redis)
====================== ===================================================================

Every executor, worker, container and the CLI reads these through :class:`Settings`,
and ``coreexec settings`` prints what this process resolved (passwords masked).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from coreexec.errors import ConfigError
from coreexec.urls import masked_url

HOME_ENV = "COREEXEC_HOME"
STORAGE_URL_ENV = "COREEXEC_STORAGE_URL"
IO_URL_ENV = "COREEXEC_IO_URL"
BROKER_URL_ENV = "COREEXEC_BROKER_URL"
RESULT_BACKEND_ENV = "COREEXEC_RESULT_BACKEND"
REDIS_URL_ENV = "COREEXEC_REDIS_URL"

DEFAULT_HOME = "~/.coreexec"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def is_redis_url(url: str) -> bool:
    """True for URLs redis-py can open (and kombu's Redis transport serves)."""
    return url.startswith(REDIS_SCHEMES)


class Settings(BaseModel):
    """The URLs of one process, as given (None: not set, a default applies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: str | None = None
    storage_url: str | None = None
    io_url: str | None = None
    broker_url: str | None = None
    result_backend: str | None = None
    redis_url: str | None = None

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        return masked_repr_args(super().__repr_args__())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            home=env.get(HOME_ENV) or None,
            storage_url=env.get(STORAGE_URL_ENV) or None,
            io_url=env.get(IO_URL_ENV) or None,
            broker_url=env.get(BROKER_URL_ENV) or None,
            result_backend=env.get(RESULT_BACKEND_ENV) or None,
            redis_url=env.get(REDIS_URL_ENV) or None,
        )

    @property
    def home_path(self) -> Path:
        return Path(self.home or DEFAULT_HOME).expanduser()

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"sqlite:///{self.home_path / 'runs.db'}"

    @property
    def resolved_io_url(self) -> str:
        return self.io_url or f"file://{self.home_path / 'storage'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or DEFAULT_BROKER_URL

    @property
    def resolved_backend_url(self) -> str:
        return self.result_backend or self.resolved_broker_url

    @property
    def resolved_redis_url(self) -> str:
        """The Redis of event streams and claims, or a ConfigError saying how to set one."""
        if self.redis_url:
            return self.redis_url
        broker = self.resolved_broker_url
        if is_redis_url(broker):
            return broker
        raise ConfigError(
            f"the broker {broker.split('://')[0]}:// is not Redis, so coreexec needs a Redis "
            f"for run events: set {REDIS_URL_ENV} (or the executor's redis_url)",
            path=REDIS_URL_ENV,
        )

    def resolved(self) -> dict[str, tuple[str, str]]:
        """Each part → (masked URL, where it came from), for display."""
        redis_source = REDIS_URL_ENV if self.redis_url else "the broker"
        try:
            redis_url = masked_url(self.resolved_redis_url)
        except ConfigError as exc:
            redis_url, redis_source = "(none)", str(exc)
        return {
            "home": (str(self.home_path), HOME_ENV if self.home else "default"),
            "storage": _shown(self.resolved_storage_url, self.storage_url, STORAGE_URL_ENV),
            "io": _shown(self.resolved_io_url, self.io_url, IO_URL_ENV),
            "broker": _shown(self.resolved_broker_url, self.broker_url, BROKER_URL_ENV),
            "result_backend": _shown(
                self.resolved_backend_url, self.result_backend, RESULT_BACKEND_ENV, "the broker"
            ),
            "redis": (redis_url, redis_source),
        }


def _shown(value: str, given: str | None, env: str, default: str = "default") -> tuple[str, str]:
    return masked_url(value), env if given else default


def masked_repr_args(
    args: Iterator[tuple[str | None, Any]] | Any,
) -> Iterator[tuple[str | None, Any]]:
    """A model's repr fields with the passwords of URL values masked."""
    for name, value in args:
        yield name, masked_url(value) if isinstance(value, str) and "://" in value else value
