"""The instance: where runs, events and outputs of this installation live."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from coreexec.errors import ConfigError
from coreexec.io_managers import FilesystemIOManager
from coreexec.storage.base import RunStorage
from coreexec.storage.memory import InMemoryRunStorage
from coreexec.storage.sqlite import SqliteRunStorage

HOME_ENV = "COREEXEC_HOME"
STORAGE_URL_ENV = "COREEXEC_STORAGE_URL"
REDIS_URL_ENV = "COREEXEC_REDIS_URL"
DEFAULT_HOME = Path("~/.coreexec")


def home_from_env() -> Path:
    """``$COREEXEC_HOME``, else ``~/.coreexec``."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def storage_from_url(url: str, home: Path) -> RunStorage:
    """A run storage from ``sqlite:///path`` (or a bare path); other schemes are refused."""
    if url.startswith("sqlite:///"):
        return SqliteRunStorage(Path(url.removeprefix("sqlite:///")))
    if "://" not in url:
        return SqliteRunStorage(home / url if not Path(url).is_absolute() else Path(url))
    raise ConfigError(
        f"{STORAGE_URL_ENV}={url!r}: only sqlite:///path is supported in this version; "
        "unset it to use $COREEXEC_HOME/runs.db",
        path=STORAGE_URL_ENV,
    )


@dataclass
class Instance:
    """Run storage plus the base directory for outputs.

    ``Instance.from_env()`` is the durable instance every process of an installation
    shares (SQLite and files under ``$COREEXEC_HOME``); ``Instance.ephemeral()`` keeps
    everything in this process and suits tests and ``execute_in_process``.
    """

    storage: RunStorage
    home: Path
    ephemeral: bool = False
    redis_url: str | None = None

    @classmethod
    def from_env(cls) -> Instance:
        home = home_from_env()
        url = os.environ.get(STORAGE_URL_ENV)
        storage = storage_from_url(url, home) if url else SqliteRunStorage(home / "runs.db")
        return cls(storage=storage, home=home, redis_url=os.environ.get(REDIS_URL_ENV))

    @classmethod
    def at(cls, home: Path | str) -> Instance:
        """A durable instance rooted at ``home``."""
        root = Path(home).expanduser()
        return cls(storage=SqliteRunStorage(root / "runs.db"), home=root)

    @classmethod
    def ephemeral_instance(cls) -> Instance:
        """Nothing persisted: in-memory storage and outputs."""
        home = Path(tempfile.gettempdir()) / "coreexec-ephemeral"
        return cls(storage=InMemoryRunStorage(), home=home, ephemeral=True)

    @property
    def storage_dir(self) -> Path:
        return self.home / "storage"

    def io_manager(self) -> FilesystemIOManager:
        """Outputs as files under ``<home>/storage``, readable by every process."""
        return FilesystemIOManager(self.storage_dir)
