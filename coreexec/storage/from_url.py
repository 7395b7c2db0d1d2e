"""Choosing a run storage by URL: ``sqlite:///path`` (or a path) and ``postgresql://``."""

from __future__ import annotations

from pathlib import Path

from coreexec.errors import ConfigError
from coreexec.storage.base import RunStorage
from coreexec.storage.sqlite import SqliteRunStorage
from coreexec.urls import masked_url

STORAGE_URL_ENV = "COREEXEC_STORAGE_URL"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def storage_from_url(url: str, home: Path) -> RunStorage:
    """The run storage ``url`` names; a relative SQLite path is taken under ``home``."""
    if url.startswith("sqlite:///"):
        return SqliteRunStorage(Path(url.removeprefix("sqlite:///")))
    if is_postgres_url(url):
        try:
            from coreexec.storage.postgres import PostgresRunStorage
        except ImportError as exc:
            raise ConfigError(
                f"{STORAGE_URL_ENV}={masked_url(url)} needs psycopg 3 ({exc}), a dependency of "
                "coreexec: pip install 'psycopg[binary,pool]>=3.1'",
                path=STORAGE_URL_ENV,
            ) from exc
        return PostgresRunStorage(url)
    if "://" not in url:
        return SqliteRunStorage(home / url if not Path(url).is_absolute() else Path(url))
    raise ConfigError(
        f"{STORAGE_URL_ENV}={masked_url(url)}: unknown scheme; use postgresql://user@host/db "
        "or sqlite:///path, or unset it to use $COREEXEC_HOME/runs.db",
        path=STORAGE_URL_ENV,
    )
