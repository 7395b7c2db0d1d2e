"""Helpers shared by the test suite: free ports and real processes stopped by pid."""

from tests.support.ports import free_port
from tests.support.processes import (
    CeleryWorkerProcess,
    FlowerProcess,
    ManagedProcess,
    ProcessError,
    ProcessExitedError,
    ProcessTimeoutError,
    RedisServerProcess,
    group_pids,
    pid_alive,
)

__all__ = [
    "CeleryWorkerProcess",
    "FlowerProcess",
    "ManagedProcess",
    "ProcessError",
    "ProcessExitedError",
    "ProcessTimeoutError",
    "RedisServerProcess",
    "free_port",
    "group_pids",
    "pid_alive",
]
