"""Run storage: the protocol and its SQLite and in-memory implementations."""

from coreexec.storage.base import RunRecord, RunStatus, RunStorage
from coreexec.storage.memory import InMemoryRunStorage
from coreexec.storage.sqlite import SqliteRunStorage

__all__ = ["InMemoryRunStorage", "RunRecord", "RunStatus", "RunStorage", "SqliteRunStorage"]
