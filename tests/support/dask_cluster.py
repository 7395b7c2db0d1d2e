"""A real Dask cluster from the command line: ``dask scheduler`` and ``dask worker``
processes on loopback ports, each in its own process group, stopped by pid."""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import ManagedProcess


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


class DaskSchedulerProcess(ManagedProcess):
    """``dask scheduler`` on a free loopback port (``.address``)."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.address = f"tcp://{LOOPBACK}:{self.port}"
        super().__init__(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                LOOPBACK,
                "--port",
                str(self.port),
                "--dashboard-address",
                f"{LOOPBACK}:{free_port()}",
            ],
            name="dask-scheduler",
            log_dir=log_dir,
            ready=lambda: _listening(self.port),
        )


class DaskWorkerProcess(ManagedProcess):
    """``dask worker`` (one process under its nanny, one thread) joined to ``scheduler``."""

    def __init__(
        self,
        scheduler: str,
        *,
        name: str,
        log_dir: Path,
        resources: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.worker_name = name
        argv = [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            scheduler,
            "--name",
            name,
            "--nthreads",
            "1",
            "--host",
            LOOPBACK,
            "--no-dashboard",
            *(["--resources", resources] if resources else []),
            *extra,
        ]
        super().__init__(argv, name=f"dask-worker-{name}", log_dir=log_dir)
