"""A StepLauncher that runs the step entrypoint as a local child process.

It exercises the launch protocol, the supervisor and the real entrypoint against a
real Redis where no container engine runs. Like the Docker launcher it names what it
launches from the attempt (a pid file ``<dir>/<launch name>.pid``), so another
supervisor finds and adopts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workers.launcher import EndReason, Launch, LaunchEnd, LaunchRequest, launch_name

REPO = Path(__file__).resolve().parents[2]


class LocalProcessLauncher:
    name = "local"

    def __init__(self, directory: Path, *, redis_url: str, grace_s: float = 5.0) -> None:
        self.directory = directory
        self.redis_url = redis_url
        self.grace_s = grace_s
        self.launched: list[str] = []
        self.exited_at: dict[str, float] = {}
        """When each launched process was seen to end (``time.time()``)."""
        self.killed: list[str] = []
        """Launches that outlived SIGTERM by ``grace_s`` and were killed."""
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._terminated: set[str] = set()
        directory.mkdir(parents=True, exist_ok=True)

    def _pid_file(self, name: str) -> Path:
        return self.directory / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def launch(self, request: LaunchRequest) -> Launch:
        found = self.find(request)
        if found is not None:
            return found
        ids = request.ids
        name = launch_name(ids)
        env = {
            **os.environ,
            "COREEXEC_REDIS_URL": self.redis_url,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        command = [
            sys.executable,
            "-m",
            "workers.entrypoint",
            "--run-id",
            ids.run_id,
            "--step-key",
            ids.step_key,
            "--attempt",
            str(ids.attempt_number),
            "--attempt-id",
            ids.attempt_id,
            "--job",
            ids.job_reference,
        ]
        with self.log_file(name).open("wb") as log:
            child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._children[name] = child
        self._pid_file(name).write_text(str(child.pid))
        self.launched.append(name)
        return Launch(self.name, name, ids, handle=str(child.pid))

    def find(self, request: LaunchRequest) -> Launch | None:
        name = launch_name(request.ids)
        pid_file = self._pid_file(name)
        if not pid_file.exists():
            return None
        return Launch(self.name, name, request.ids, adopted=True, handle=pid_file.read_text())

    def follow(self, launch: Launch) -> LaunchEnd:
        pid = int(launch.handle)
        child = self._children.get(launch.name)
        if child is not None:
            status = child.wait()
            code = status if status >= 0 else 128 - status
        else:
            # Adopted from another supervisor in this test process: wait for its child.
            code = self._wait_foreign(pid, launch.name)
        self.exited_at[launch.name] = time.time()
        logs = tuple(self.log_file(launch.name).read_text().splitlines()[-20:])
        if launch.name in self._terminated:
            return LaunchEnd(EndReason.TERMINATED, code, f"stopped, exit code {code}", logs=logs)
        if code == 128 + signal.SIGKILL:
            return LaunchEnd(EndReason.KILLED, code, f"exit code {code}: killed", logs=logs)
        return LaunchEnd(EndReason.EXITED, code, f"exit code {code}", logs=logs)

    def _wait_foreign(self, pid: int, name: str) -> int:
        for other in self._children.values():
            if other.pid == pid:
                return other.wait()
        while True:  # not our child: it is gone when signal 0 fails
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return -1
            time.sleep(0.05)

    def terminate(self, launch: Launch) -> None:
        self._terminated.add(launch.name)
        pid = int(launch.handle)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        child = self._children.get(launch.name)
        if child is not None:
            try:
                child.wait(self.grace_s)
            except subprocess.TimeoutExpired:
                self.killed.append(launch.name)
                child.kill()

    def cleanup(self, launch: Launch) -> None:
        self._pid_file(launch.name).unlink(missing_ok=True)
