"""The in-process launcher: the attempt runs in the supervisor's own process.

This is what a Celery worker did before launchers existed, at the same cost: the step
runs in the worker process (:func:`coreexec.attempt_runner.run_prepared`), its events
go straight to the run's stream, and nothing outlives the process, so there is nothing
to find, terminate or clean up (a cancel is the worker's SIGTERM).
"""

from __future__ import annotations

from coreexec.attempt_runner import run_prepared
from coreexec.attempt_runtime import AttemptRuntime
from workers.launcher import EndReason, Launch, LaunchEnd, LaunchRequest

IN_PROCESS = "in_process"


class InProcessLauncher:
    """Runs the attempt inside :meth:`launch`; the supervisor heartbeats meanwhile."""

    name = IN_PROCESS

    def __init__(self, runtime: AttemptRuntime) -> None:
        self.runtime = runtime

    def launch(self, request: LaunchRequest) -> Launch:
        result = run_prepared(self.runtime, request.prepared, heartbeat=False)
        end = LaunchEnd(EndReason.IN_PROCESS, exit_code=0 if result.success else 1, result=result)
        return Launch(self.name, "in-process", request.ids, end=end)

    def find(self, request: LaunchRequest) -> Launch | None:
        return None

    def follow(self, launch: Launch) -> LaunchEnd:
        assert launch.end is not None, "an in-process launch has ended when launch() returns"
        return launch.end

    def terminate(self, launch: Launch) -> None:
        """Nothing: an in-process attempt stops with its process."""

    def cleanup(self, launch: Launch) -> None:
        """Nothing was launched."""
