"""Settings of the Celery application, read from the environment (or given in code).

=========================== ==============================================================
``COREEXEC_BROKER_URL``     broker (default ``redis://127.0.0.1:6379/0``)
``COREEXEC_RESULT_BACKEND`` result backend (default: the broker URL)
``COREEXEC_REDIS_URL``      Redis of the run event streams, attempt claims and tag limits
                            (default: the broker URL when it is ``redis://``)
``COREEXEC_HOME``           run storage and outputs (read by :class:`coreexec.Instance`)
``COREEXEC_STORAGE_URL``    run storage URL (``postgresql://...`` for a fleet)
``COREEXEC_IO_URL``         step outputs URL (``s3://bucket/prefix`` for a fleet)
``COREEXEC_CELERY_CONFIG``  extra Celery settings: a Python module (``pkg.celeryconfig``,
                            its lowercase attributes) or a ``.yaml``/``.yml`` file
``COREEXEC_ORPHAN_GRACE_S`` seconds a run whose coordinator stopped beating waits before
                            a worker's reaper resumes or fails it (default 300; 0: never)
=========================== ==============================================================

The URLs are resolved by :class:`coreexec.settings.Settings`, the one place every
process reads them; these settings add what only Celery needs.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coreexec.errors import ConfigError
from coreexec.run_config import validation_error
from coreexec.runs.orphans import DEFAULT_GRACE_S
from coreexec.settings import (
    BROKER_URL_ENV,
    DEFAULT_BROKER_URL,
    HOME_ENV,
    IO_URL_ENV,
    REDIS_SCHEMES,
    REDIS_URL_ENV,
    RESULT_BACKEND_ENV,
    STORAGE_URL_ENV,
    Settings,
    is_redis_url,
    masked_repr_args,
)

__all__ = [
    "BROKER_URL_ENV",
    "CELERY_CONFIG_ENV",
    "DEFAULT_BROKER_URL",
    "HOME_ENV",
    "IO_URL_ENV",
    "REDIS_SCHEMES",
    "REDIS_URL_ENV",
    "RESULT_BACKEND_ENV",
    "STORAGE_URL_ENV",
    "CelerySettings",
    "is_redis_url",
    "load_celery_config",
]

CELERY_CONFIG_ENV = "COREEXEC_CELERY_CONFIG"
ORPHAN_GRACE_ENV = "COREEXEC_ORPHAN_GRACE_S"


class CelerySettings(BaseModel):
    """Where the Celery app talks to and what it adds to Celery's own settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str | None = None
    """None: the broker URL."""
    redis_url: str | None = None
    """None: the broker URL when it is a Redis URL."""
    home: str | None = None
    storage_url: str | None = None
    """None: SQLite under ``home``."""
    io_url: str | None = None
    """None: files under ``home``."""
    include: tuple[str, ...] = ()
    """Modules every worker imports at start (jobs whose import is slow, signal handlers)."""
    celery_config: Mapping[str, Any] = Field(default_factory=dict)
    """Extra Celery settings (lowercase names), applied over coreexec's defaults."""
    orphan_grace_s: float = Field(default=DEFAULT_GRACE_S, ge=0)
    """A lost run waits this long before a worker's reaper acts on it; 0 turns it off."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CelerySettings:
        """Settings from ``COREEXEC_*`` variables; errors name the variable."""
        env = os.environ if environ is None else environ
        source = env.get(CELERY_CONFIG_ENV) or None
        core = Settings.from_env(env)
        raw: dict[str, Any] = {
            "broker_url": core.resolved_broker_url,
            "result_backend": core.result_backend,
            "redis_url": core.redis_url,
            "home": core.home,
            "storage_url": core.storage_url,
            "io_url": core.io_url,
            "celery_config": load_celery_config(source, path=CELERY_CONFIG_ENV) if source else {},
        }
        if env.get(ORPHAN_GRACE_ENV):
            raw["orphan_grace_s"] = env[ORPHAN_GRACE_ENV]
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise validation_error("settings", exc) from exc

    @property
    def backend_url(self) -> str:
        return self.result_backend or self.broker_url

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        return masked_repr_args(super().__repr_args__())

    def core(self) -> Settings:
        """The URLs of these settings as every coreexec process resolves them."""
        return Settings(
            home=self.home,
            storage_url=self.storage_url,
            io_url=self.io_url,
            broker_url=self.broker_url,
            result_backend=self.result_backend,
            redis_url=self.redis_url,
        )

    @property
    def events_redis_url(self) -> str:
        """The Redis of event streams and claims, or a ConfigError saying how to set one."""
        return self.core().resolved_redis_url

    def merged(self, **changes: Any) -> CelerySettings:
        """A copy with the non-None ``changes`` applied (executor config over env)."""
        values = {key: value for key, value in changes.items() if value is not None}
        return self.model_copy(update=values) if values else self


def _module_settings(module: ModuleType) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(module).items()
        if name.islower()
        and not name.startswith("_")
        and not isinstance(value, ModuleType)
        and not callable(value)
    }


def load_celery_config(source: str, *, path: str) -> dict[str, Any]:
    """Extra Celery settings from a YAML file or a Python module; ``path`` names the
    setting that gave ``source`` in errors."""
    if source.endswith((".yaml", ".yml")):
        file = Path(source).expanduser()
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read {str(file)!r}: {exc}", path=path) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: {str(file)!r} is not valid YAML: {exc}", path=path) from exc
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: {str(file)!r} must hold a mapping of Celery settings, e.g. "
                "'broker_pool_limit: 10'",
                path=path,
            )
        return {str(key): value for key, value in loaded.items()}
    try:
        module = importlib.import_module(source)
    except ImportError as exc:
        raise ConfigError(
            f"{path}: cannot import module {source!r} ({exc}); give a module on PYTHONPATH "
            "or a path ending in .yaml",
            path=path,
        ) from exc
    return _module_settings(module)
