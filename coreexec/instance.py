"""The instance: where runs, events and outputs of this installation live."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from coreexec.io_managers import FilesystemIOManager, IOManager
from coreexec.settings import HOME_ENV, REDIS_URL_ENV, STORAGE_URL_ENV, Settings
from coreexec.storage.base import RunRecord, RunStorage
from coreexec.storage.from_url import storage_from_url
from coreexec.storage.memory import InMemoryRunStorage
from coreexec.storage.sqlite import SqliteRunStorage
from coreexec.tags import IO_URL_TAG

__all__ = [
    "HOME_ENV",
    "REDIS_URL_ENV",
    "STORAGE_URL_ENV",
    "Instance",
    "home_from_env",
    "storage_from_url",
]


def home_from_env() -> Path:
    """``$COREEXEC_HOME``, else ``~/.coreexec``."""
    return Settings.from_env().home_path


@dataclass
class Instance:
    """Run storage plus where outputs go.

    ``Instance.from_env()`` is the durable instance every process of an installation
    shares: the run storage of ``COREEXEC_STORAGE_URL`` (else SQLite under
    ``$COREEXEC_HOME``) and outputs at ``COREEXEC_IO_URL`` (else files under
    ``$COREEXEC_HOME/storage``). ``Instance.ephemeral_instance()`` keeps everything in
    this process and suits tests and ``execute_in_process``.
    """

    storage: RunStorage
    home: Path
    ephemeral: bool = False
    redis_url: str | None = None
    io_url: str | None = None
    """fsspec URL of the outputs (None: files under ``<home>/storage``)."""
    _io_manager: IOManager | None = field(default=None, init=False, repr=False, compare=False)
    _io_by_url: dict[str, IOManager] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_env(cls) -> Instance:
        return cls.from_settings(Settings.from_env())

    @classmethod
    def from_settings(cls, settings: Settings) -> Instance:
        """The durable instance the settings name."""
        home = settings.home_path
        url = settings.storage_url
        storage = storage_from_url(url, home) if url else SqliteRunStorage(home / "runs.db")
        return cls(storage=storage, home=home, redis_url=settings.redis_url, io_url=settings.io_url)

    @classmethod
    def at(cls, home: Path | str, *, io_url: str | None = None) -> Instance:
        """A durable instance rooted at ``home``."""
        root = Path(home).expanduser()
        return cls(storage=SqliteRunStorage(root / "runs.db"), home=root, io_url=io_url)

    @classmethod
    def ephemeral_instance(cls) -> Instance:
        """Nothing persisted: in-memory storage and outputs."""
        home = Path(tempfile.gettempdir()) / "coreexec-ephemeral"
        return cls(storage=InMemoryRunStorage(), home=home, ephemeral=True)

    @property
    def storage_dir(self) -> Path:
        return self.home / "storage"

    def io_manager_for(self, record: RunRecord) -> IOManager:
        """The outputs of one run: at the URL the run was created with (its
        ``coreexec/io_url`` tag), else this instance's."""
        url = record.tags.get(IO_URL_TAG)
        if not url or url == self.io_url:
            return self.io_manager()
        found = self._io_by_url.get(url)
        if found is None:
            from coreexec.object_store_io import io_manager_from_url

            found = self._io_by_url.setdefault(url, io_manager_from_url(url))
        return found

    def io_manager(self) -> IOManager:
        """Outputs at ``io_url``, else files under ``<home>/storage``; readable by every
        process that has the same settings."""
        if self._io_manager is None:
            if self.io_url:
                from coreexec.object_store_io import io_manager_from_url

                self._io_manager = io_manager_from_url(self.io_url)
            else:
                self._io_manager = FilesystemIOManager(self.storage_dir)
        return self._io_manager
