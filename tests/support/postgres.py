"""A throwaway PostgreSQL server for tests: initdb in a temporary directory, a free
loopback port, password authentication over TCP, stopped by pid.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as
the unprivileged ``postgres`` user (``nobody`` if there is none) through ``setpriv``,
which execs in place: the pid we hold is the postmaster's own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Self

from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import ManagedProcess

USER = "coreexec"
PASSWORD = "pg-s3cret-Pw"
"""The superuser's password: tests check it never shows in messages."""


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are (Debian keeps them off PATH), or None."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    return Path(found[0]).parent if found else None


def _major(path: str) -> int:
    try:
        return int(Path(path).parents[1].name)
    except ValueError:
        return 0


def _run_as() -> pwd.struct_passwd | None:
    """The user the server runs as when we are root (None: as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL")


def _as_user(argv: list[str], user: pwd.struct_passwd | None) -> list[str]:
    if user is None:
        return argv
    return [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--init-groups",
        "--",
        *argv,
    ]


class PostgresServerProcess(ManagedProcess):
    """``postgres`` on a free loopback port with its own data directory."""

    def __init__(self, *, log_dir: Path, bindir: Path, ready_timeout_s: float = 60.0) -> None:
        self.bindir = bindir
        self.user = _run_as()
        self.port = free_port()
        # Under /tmp, not the test's tmp_path: the server's user must be able to reach it.
        self.root = Path(tempfile.mkdtemp(prefix="coreexec-pg-"))
        self.data_dir = self.root / "data"
        argv = [
            str(bindir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-k", str(self.root),
            "-c", f"listen_addresses={LOOPBACK}",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ]  # fmt: skip
        super().__init__(
            _as_user(argv, self.user),
            name="postgres",
            log_dir=log_dir,
            ready=self._is_ready,
            ready_timeout_s=ready_timeout_s,
        )

    def url_for(self, database: str) -> str:
        return f"postgresql://{USER}:{PASSWORD}@{LOOPBACK}:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def _initdb(self) -> None:
        password_file = self.root / "pwfile"
        password_file.write_text(PASSWORD)
        if self.user is not None:
            for path in (self.root, password_file):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        argv = [
            str(self.bindir / "initdb"),
            "-D", str(self.data_dir),
            "-U", USER,
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--no-sync",
            "-E", "UTF8",
        ]  # fmt: skip
        done = subprocess.run(
            _as_user(argv, self.user), capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _is_ready(self) -> bool:
        import psycopg

        with psycopg.connect(self.url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def start(self) -> Self:
        self._initdb()
        return super().start()

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Fast shutdown (SIGINT: open sessions are ended), then the usual stop by pid."""
        if self.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._started().wait(timeout=timeout_s or self.stop_timeout_s)
        code = super().stop(timeout_s)
        shutil.rmtree(self.root, ignore_errors=True)
        return code
