"""The step entrypoint: ``python -m workers.entrypoint`` (console script ``coreexec-step``).

What a container or pod runs for one step attempt. It takes identifiers only, from its
arguments or, for each one not given, from the environment::

    --run-id      COREEXEC_RUN_ID
    --step-key    COREEXEC_STEP_KEY
    --attempt     COREEXEC_ATTEMPT        (the attempt's number, 1 for the first try)
    --attempt-id  COREEXEC_ATTEMPT_ID
    --job         COREEXEC_JOB            ("package.module:attribute")

Settings (never on the command line: ``docker inspect`` shows it) come from the
environment, ``COREEXEC_REDIS_URL`` (the run's event stream and claims) and
``COREEXEC_HOME`` / ``COREEXEC_STORAGE_URL`` (the run storage and outputs), or from a
settings file of ``NAME=value`` lines named by ``COREEXEC_SETTINGS_FILE`` (default
``/etc/coreexec/settings.env`` when it exists; mount it read-only), whose values do not
override the environment. Values in the file are not shown by ``docker inspect``.

Supervised (the default): the supervisor claimed the attempt and heartbeats for it;
the entrypoint verifies the claim, runs the step, publishes its logs as they happen and
holds the events that end it for the supervisor (:mod:`coreexec.transport.attempt_ends`).
``--standalone``: no supervisor; it claims, heartbeats and publishes everything itself.

Exit status: 0 the step succeeded; 1 it failed (reported); 2 bad arguments or settings;
3 the attempt is not this process's to run (fenced, or claimed by nobody); 143 stopped by
SIGTERM (it runs as PID 1 in a container, where SIGTERM is ignored unless handled, so it
installs a handler: a cancelled step ends as cancelled, not by the kill after the grace).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from coreexec.attempt_runner import (
    AttemptIds,
    AttemptResult,
    HeldEndSink,
    prepare_attempt,
    run_attempt,
    run_prepared,
)
from coreexec.attempt_runtime import AttemptRuntime
from coreexec.errors import CoreExecError
from coreexec.events import Event
from coreexec.instance import REDIS_URL_ENV
from coreexec.transport.attempt_ends import AttemptEnds

SETTINGS_FILE_ENV = "COREEXEC_SETTINGS_FILE"
DEFAULT_SETTINGS_FILE = "/etc/coreexec/settings.env"

EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_OURS = 3
EXIT_TERMINATED = 128 + signal.SIGTERM

ID_ENV = {
    "run_id": "COREEXEC_RUN_ID",
    "step_key": "COREEXEC_STEP_KEY",
    "attempt": "COREEXEC_ATTEMPT",
    "attempt_id": "COREEXEC_ATTEMPT_ID",
    "job": "COREEXEC_JOB",
}


class EntrypointError(CoreExecError):
    """The entrypoint was started with missing or bad identifiers or settings."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coreexec-step",
        description=(
            "Run one step attempt of a coreexec run (what a step container or pod runs). "
            "Identifiers only; each missing option is read from its environment variable. "
            f"Settings come from the environment ({REDIS_URL_ENV}, COREEXEC_HOME, "
            f"COREEXEC_STORAGE_URL) or the file named by {SETTINGS_FILE_ENV} "
            f"(default {DEFAULT_SETTINGS_FILE})."
        ),
    )
    parser.add_argument("--run-id", help=f"the run's id (env {ID_ENV['run_id']})")
    parser.add_argument("--step-key", help=f"the step's key (env {ID_ENV['step_key']})")
    parser.add_argument("--attempt", help=f"the attempt's number (env {ID_ENV['attempt']})")
    parser.add_argument("--attempt-id", help=f"the attempt's id (env {ID_ENV['attempt_id']})")
    parser.add_argument("--job", help=f"job reference pkg.module:attr (env {ID_ENV['job']})")
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="no supervisor: claim the attempt, heartbeat and publish its end here",
    )
    return parser


def ids_from(args: argparse.Namespace, environ: Mapping[str, str]) -> AttemptIds:
    """The attempt's identifiers; EntrypointError naming what is missing or bad."""
    values: dict[str, str] = {}
    for name, env in ID_ENV.items():
        value = getattr(args, name) or environ.get(env)
        if not value:
            option = "--" + name.replace("_", "-")
            raise EntrypointError(f"missing {option} (or environment variable {env})")
        values[name] = value
    try:
        number = int(values["attempt"])
    except ValueError:
        raise EntrypointError(
            f"--attempt must be the attempt's number (1, 2, ...), got {values['attempt']!r}"
        ) from None
    return AttemptIds(
        values["run_id"], values["step_key"], number, values["attempt_id"], values["job"]
    )


def load_settings_file(environ: dict[str, str] | os._Environ[str]) -> None:
    """Add the settings file's ``NAME=value`` lines to ``environ`` (not overriding)."""
    named = environ.get(SETTINGS_FILE_ENV)
    path = Path(named or DEFAULT_SETTINGS_FILE)
    if not path.exists():
        if named:
            raise EntrypointError(f"{SETTINGS_FILE_ENV}={named!r}: no such file")
        return
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EntrypointError(f"cannot read settings file {str(path)!r}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise EntrypointError(f"{path}:{number}: expected NAME=value, got {text!r}")
        environ.setdefault(name.strip(), value.strip())


def _terminated(signum: int, frame: FrameType | None) -> None:
    # SystemExit inside the user's code: the step runner reports a cancelled attempt.
    raise SystemExit(EXIT_TERMINATED)


def run_supervised(runtime: AttemptRuntime, ids: AttemptIds, owner: str) -> int:
    """Verify the supervisor's claim, run the step, hold its end."""
    holder = runtime.claims.holder(ids.run_id, ids.attempt_id)
    if holder is None or holder.startswith("fenced:"):
        why = "nobody claimed it" if holder is None else f"the coordinator gave it up ({holder})"
        print(f"coreexec-step: not running attempt {ids.attempt_id}: {why}", file=sys.stderr)
        return EXIT_NOT_OURS
    ends = AttemptEnds(runtime.client, url=runtime.redis_url)

    def hold(events: list[Event]) -> None:
        ends.hold(ids.run_id, ids.attempt_id, events)

    prepared = prepare_attempt(runtime, ids, owner, emit=lambda event: hold([event]))
    if isinstance(prepared, AttemptResult):
        return EXIT_FAILURE
    result = run_prepared(
        runtime, prepared, HeldEndSink(prepared.info.stream, hold), heartbeat=False
    )
    return EXIT_SUCCESS if result.success else EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Run one attempt; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        load_settings_file(os.environ)
        ids = ids_from(args, os.environ)
        redis_url = os.environ.get(REDIS_URL_ENV)
        if not redis_url:
            raise EntrypointError(
                f"{REDIS_URL_ENV} is not set: the step's events go to the run's Redis; "
                "forward it with the executor's env_vars or the settings file"
            )
    except EntrypointError as exc:
        print(f"coreexec-step: {exc}", file=sys.stderr)
        return EXIT_USAGE
    owner = f"coreexec-step@{socket.gethostname()}:{os.getpid()}"
    try:
        runtime = AttemptRuntime(redis_url)
        if args.standalone:
            result = run_attempt(runtime, ids, owner=owner)
            return EXIT_SUCCESS if result.success else EXIT_FAILURE
        return run_supervised(runtime, ids, owner)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_TERMINATED
    except CoreExecError as exc:
        print(
            f"coreexec-step: attempt {ids.attempt_id} of run {ids.run_id}: {exc}", file=sys.stderr
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
