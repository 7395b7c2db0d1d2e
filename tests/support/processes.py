"""Real processes for tests: redis-server, celery workers and Flower.

Every process starts in its own session (so its own process group), writes stdout and
stderr to a log file, and is stopped by its pid and the process group taken from that
pid, never by name. Readiness is a condition waited on with a deadline; when the
deadline passes or the process dies first, the error carries the tail of its log.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from itertools import count
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.ports import LOOPBACK, free_port
from tests.support.waiting import WaitTimeout, holds_within, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root; children get it first on PYTHONPATH."""

DEFAULT_STOP_TIMEOUT_S = 10.0
_KILL_WAIT_S = 10.0
_LOG_TAIL_LINES = 40
_log_counter = count(1)


class ProcessError(RuntimeError):
    """A test process did not start, did not become ready, or could not be stopped."""

    def __init__(self, message: str, *, name: str, log_tail: str) -> None:
        super().__init__(f"{message}\n--- last lines of the {name} log ---\n{log_tail}")
        self.name = name
        self.log_tail = log_tail


class ProcessExitedError(ProcessError):
    """The process exited while something was waiting on it."""


class ProcessTimeoutError(ProcessError):
    """A condition on a running process did not hold before its deadline."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours, then ``extra``, repo root first on PYTHONPATH."""
    env = dict(os.environ)
    if extra:
        env.update(extra)
    paths = [str(REPO_ROOT)]
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != paths[0]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # Children write their logs to a file; unbuffered output keeps the tail current.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, pgid) of a process from /proc, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie counts as gone)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry))
    return sorted(members)


class ManagedProcess:
    """A child process in its own process group, logged to a file, stopped by pid.

    ``env`` is merged over this process's environment (see :func:`child_env`). When
    ``ready`` is given, :meth:`start` waits until it returns true (exceptions it raises
    count as "not yet") and stops the process again if that does not happen in
    ``ready_timeout_s``. Use as a context manager to stop on exit.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        log_dir: Path | str | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout_s: float = 30.0,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    ) -> None:
        if not argv:
            raise ValueError("ManagedProcess needs a non-empty argv")
        self.argv = [str(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.env = dict(env or {})
        self.cwd = Path(cwd) if cwd is not None else REPO_ROOT
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp())
        self.log_path = self.log_dir / f"{self.name}-{next(_log_counter)}.log"
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._ready = ready
        self._popen: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None

    # ------------------------------------------------------------------ state

    @property
    def pid(self) -> int:
        """The pid of the started process."""
        return self._started().pid

    @property
    def pgid(self) -> int:
        """The process group of the started process (equal to its pid)."""
        self._started()
        assert self._pgid is not None
        return self._pgid

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited, else None."""
        return self._started().poll()

    def is_running(self) -> bool:
        """True while the process has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def group_pids(self) -> list[int]:
        """Live processes in this process's group (it and the children it started)."""
        return group_pids(self.pgid)

    def read_log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.read_log().splitlines()[-lines:])

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Start the process and, if a readiness check was given, wait for it."""
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started (pid {self._popen.pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(self.env),
                cwd=self.cwd,
                start_new_session=True,
            )
        # Popen returns after exec, so setsid() has run: the group is the pid's own.
        self._pgid = os.getpgid(self._popen.pid)
        if self._ready is not None:
            try:
                self.wait_until(self._ready, self.ready_timeout_s, f"{self.name} to become ready")
            except BaseException:
                self.stop()
                raise
        return self

    def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout_s: float,
        what: str,
        *,
        interval_s: float = 0.05,
    ) -> None:
        """Wait until ``predicate()`` is true.

        Raises :class:`ProcessExitedError` if the process exits first and
        :class:`ProcessTimeoutError` after ``timeout_s``; both carry the log's tail. An
        exception raised by the predicate counts as false and is reported on failure.
        """
        popen = self._started()
        last_error: BaseException | None = None

        def because() -> str:
            return f" (last check raised {last_error!r})" if last_error else ""

        def holds() -> bool:
            nonlocal last_error
            try:
                if predicate():
                    return True
            except Exception as exc:
                last_error = exc
            if popen.poll() is not None:
                raise ProcessExitedError(
                    f"{self.name} (pid {popen.pid}) exited with code {popen.returncode} "
                    f"while waiting for {what}{because()}",
                    name=self.name,
                    log_tail=self.log_tail(),
                )
            return False

        try:
            wait_until(holds, what, timeout_s, interval_s=interval_s)
        except WaitTimeout:
            raise ProcessTimeoutError(
                f"timed out after {timeout_s:g}s waiting for {what} "
                f"({self.name}, pid {popen.pid}){because()}",
                name=self.name,
                log_tail=self.log_tail(),
            ) from None

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Stop the process and everything left in its process group.

        SIGTERM goes to the pid; if it has not exited after ``timeout_s`` the whole group
        gets SIGKILL. Processes of the group that outlive the leader get SIGTERM, then
        SIGKILL. Returns the leader's exit code (None if it was never started).
        """
        if self._popen is None:
            return None
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        popen, pgid = self._popen, self.pgid
        if popen.poll() is None:
            _signal_pid(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                popen.wait(timeout=_KILL_WAIT_S)
        self._stop_group(pgid, timeout_s)
        return popen.returncode

    def kill9(self) -> int:
        """SIGKILL the pid only (a crash); the rest of its group stays until :meth:`stop`."""
        popen = self._started()
        if popen.poll() is None:
            _signal_pid(popen.pid, signal.SIGKILL)
        return popen.wait(timeout=_KILL_WAIT_S)

    def _stop_group(self, pgid: int, timeout_s: float) -> None:
        if not group_pids(pgid):
            return
        _signal_group(pgid, signal.SIGTERM)
        if holds_within(lambda: not group_pids(pgid), timeout_s):
            return
        _signal_group(pgid, signal.SIGKILL)
        if not holds_within(lambda: not group_pids(pgid), _KILL_WAIT_S):
            raise ProcessError(
                f"processes {group_pids(pgid)} of group {pgid} survived SIGKILL",
                name=self.name,
                log_tail=self.log_tail(),
            )

    def _started(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} has not been started; call start() first")
        return self._popen

    def __enter__(self) -> Self:
        if self._popen is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self._popen.pid if self._popen is not None else None
        return f"<{type(self).__name__} {self.name} pid={pid} log={self.log_path}>"


def _signal_pid(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


# ---------------------------------------------------------------------- redis-server


def redis_server_binary() -> str:
    """Path of ``redis-server``, or an error that says how to install it."""
    path = shutil.which("redis-server")
    if path is None:
        raise FileNotFoundError(
            "redis-server is not on PATH; run `bash scripts/setup.sh` "
            "(it installs Debian's redis-server package)"
        )
    return path


class RedisServerProcess(ManagedProcess):
    """A throwaway ``redis-server`` on a free loopback port, without persistence unless
    ``persistent`` (append-only file, fsync on every write, in ``log_dir/redis-data``:
    a server started again on the same port and ``log_dir`` finds the data).

    Ready when the server on its port reports this process's pid. When no port is given
    and the chosen one is taken in the meantime, it retries on another free port.
    """

    _PORT_ATTEMPTS = 3

    def __init__(
        self,
        *,
        port: int | None = None,
        log_dir: Path | str | None = None,
        ready_timeout_s: float = 20.0,
        persistent: bool = False,
    ) -> None:
        self.persistent = persistent
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp())
        self.data_dir = log_dir / "redis-data"
        super().__init__(
            self._argv(),
            name="redis-server",
            log_dir=log_dir,
            ready=self._is_ready,
            ready_timeout_s=ready_timeout_s,
        )

    def _argv(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
        ]  # fmt: skip

    def start(self) -> Self:
        """Start redis-server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, self._PORT_ATTEMPTS + 1):
            try:
                return super().start()
            except ProcessExitedError as exc:
                port_taken = "Address already in use" in exc.log_tail
                if self._fixed_port or not port_taken or attempt == self._PORT_ATTEMPTS:
                    raise
            # Another process took the port between free_port() and bind(): try again.
            self.port = free_port()
            self.argv = self._argv()
            self._popen = None
            self._pgid = None
        raise AssertionError("unreachable")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """The URL of database ``db`` of this server."""
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        """A new client (bytes responses, no read timeout); close it, e.g. with ``with``."""
        # No socket_timeout: tests may hold blocking reads (XREAD BLOCK) as long as they like.
        return redis.Redis(
            host=LOOPBACK, port=self.port, db=db, decode_responses=False, socket_connect_timeout=2.0
        )

    def ping(self) -> bool:
        """True when the server answers PING (one try, no retries)."""
        with self._probe_client() as client:
            return bool(client.ping())

    def _probe_client(self) -> redis.Redis:
        # redis-py retries refused connections with backoff by default; a readiness probe
        # must answer at once.
        return redis.Redis(
            host=LOOPBACK, port=self.port, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
        )

    def _is_ready(self) -> bool:
        # Ask for the pid, not just PING: another server on the same port would answer.
        with self._probe_client() as client:
            info = client.info("server")
        return int(info["process_id"]) == self.pid


# ---------------------------------------------------------------------- celery worker


def _expand_nodename(name: str) -> str:
    # Celery expands %h in -n to socket.gethostname(); we need the same name to ping it.
    return name.replace("%h", socket.gethostname())


class CeleryWorkerProcess(ManagedProcess):
    """``python -m celery -A APP worker`` with a prefork pool, ready when it answers ping.

    ``hostname`` is the node name (``name@host``; ``%h`` is expanded); a unique one is
    made when omitted. ``queues`` None means the app's default queue. The readiness
    check runs ``celery inspect ping`` in a subprocess so the test process need not
    import the app.
    """

    def __init__(
        self,
        app: str = "celery_app",
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        env: Mapping[str, str] | None = None,
        hostname: str | None = None,
        *,
        pool: str = "prefork",
        loglevel: str = "INFO",
        task_events: bool = False,
        extra_args: Sequence[str] = (),
        log_dir: Path | str | None = None,
        ready_timeout_s: float = 60.0,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.app = app
        self.queues = list(queues) if queues is not None else None
        self.concurrency = concurrency
        if hostname is None:
            hostname = f"w{uuid.uuid4().hex[:10]}@%h"
        elif "@" not in hostname:
            hostname = f"{hostname}@%h"
        self.hostname = hostname
        self.nodename = _expand_nodename(hostname)
        self.loglevel = loglevel
        argv = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "-c", str(concurrency),
            "--pool", pool,
            "-n", hostname,
            "--without-gossip",
            "--without-mingle",
            "--loglevel", loglevel,
        ]  # fmt: skip
        if self.queues:
            argv += ["-Q", ",".join(self.queues)]
        if task_events:
            argv.append("-E")
        argv += list(extra_args)
        super().__init__(
            argv,
            name=f"celery-worker-{self.nodename.split('@')[0]}",
            env=env,
            log_dir=log_dir,
            ready=self._is_ready,
            ready_timeout_s=ready_timeout_s,
            stop_timeout_s=stop_timeout_s,
        )

    def _is_ready(self) -> bool:
        # The worker logs "<nodename> ready." once consuming; checking the log first saves
        # starting a ping subprocess (a full celery import) while it is still booting.
        if self.loglevel.upper() in ("DEBUG", "INFO") and " ready." not in self.read_log():
            return False
        return self.ping()

    def ping(self, timeout_s: float = 1.0) -> bool:
        """True when this worker answers ``celery inspect ping`` within ``timeout_s``."""
        argv = [
            sys.executable, "-m", "celery", "-A", self.app,
            "inspect", "ping", "-d", self.nodename, "-t", f"{timeout_s:g}",
        ]  # fmt: skip
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=child_env(self.env),
            cwd=self.cwd,
            timeout=timeout_s + 30.0,
            check=False,
        )
        return done.returncode == 0 and self.nodename.encode() in done.stdout


# ---------------------------------------------------------------------- flower


class FlowerProcess(ManagedProcess):
    """Flower on 127.0.0.1 with basic auth, ready when its API answers with credentials."""

    def __init__(
        self,
        broker_url: str,
        port: int | None = None,
        basic_auth: str = "user:pass",
        *,
        app: str | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        log_dir: Path | str | None = None,
        ready_timeout_s: float = 60.0,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    ) -> None:
        if ":" not in basic_auth:
            raise ValueError(f"basic_auth must be 'user:password', got {basic_auth!r}")
        self.broker_url = broker_url
        self.port = port if port is not None else free_port()
        self.basic_auth = basic_auth
        argv = [sys.executable, "-m", "celery"]
        if app is not None:
            argv += ["-A", app]
        argv += [
            f"--broker={broker_url}",
            "flower",
            f"--port={self.port}",
            f"--address={LOOPBACK}",
            f"--basic-auth={basic_auth}",
            *extra_args,
        ]
        super().__init__(
            argv,
            name="flower",
            env=env,
            log_dir=log_dir,
            ready=self._is_ready,
            ready_timeout_s=ready_timeout_s,
            stop_timeout_s=stop_timeout_s,
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.port}"

    def get(self, path: str, *, auth: bool = True, timeout_s: float = 10.0) -> tuple[int, bytes]:
        """GET ``path``; returns (HTTP status, body) without raising on 4xx/5xx."""
        request = urllib.request.Request(self.url + path)
        if auth:
            token = base64.b64encode(self.basic_auth.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                status: int = response.status
                return status, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read()

    def get_json(self, path: str, *, timeout_s: float = 10.0) -> Any:
        """GET ``path`` with credentials and decode the JSON body; non-200 raises."""
        status, body = self.get(path, timeout_s=timeout_s)
        if status != 200:
            raise RuntimeError(f"GET {path} on flower answered {status}: {body[:200]!r}")
        return json.loads(body)

    def _is_ready(self) -> bool:
        status, body = self.get("/api/tasks", timeout_s=2.0)
        if status != 200:
            raise RuntimeError(f"GET /api/tasks answered {status}: {body[:200]!r}")
        return True
