"""Run launchers: who starts the coordinator of a submitted run, and where.

``submit_job`` stores a QUEUED run and hands its id to a run launcher. The launcher is a
plug point chosen by configuration, like an executor: ``$COREEXEC_RUN_LAUNCHER`` names an
entry point of the group ``coreexec.run_launchers`` (default ``celery``, whose
implementation lives in ``celery_app`` so that ``coreexec`` never imports Celery) or,
for launchers outside any installed distribution, a ``package.module:Attribute``
reference. The launcher class is instantiated without arguments and reads its own
settings from the environment.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol, runtime_checkable

from coreexec.errors import ConfigError, CoreExecError
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.storage.base import RunStatus

RUN_LAUNCHER_ENV = "COREEXEC_RUN_LAUNCHER"
ENTRY_POINT_GROUP = "coreexec.run_launchers"
DEFAULT_RUN_LAUNCHER = "celery"


@runtime_checkable
class RunLauncher(Protocol):
    """Starts a coordinator for a stored run somewhere else (a worker, a process, ...).

    ``launch`` must return once the run is handed over (it must not wait for the run)
    and raise :class:`~coreexec.errors.BrokerConnectionError` when the hand-over cannot
    reach its transport, so the caller can mark the run failed with the reason.
    """

    name: str

    def launch(self, run_id: str, *, resume: bool = False) -> None:
        """Hand the run over to a coordinator; ``resume`` skips its succeeded steps."""
        ...


@runtime_checkable
class AttemptTerminator(Protocol):
    """A launcher that can also stop step attempts on its workers by attempt id.

    A cancel uses it for a run whose coordinator is dead, which would otherwise have
    stopped them itself: the attempts a worker had already taken are terminated (they
    end as cancelled), the others are fenced and never start.
    """

    def terminate_attempts(self, run_id: str, attempt_ids: Sequence[str]) -> None:
        """Ask the workers running these attempts to stop them (without waiting);
        raise a CoreExecError when the request cannot be sent."""
        ...


def terminator_for(launcher: RunLauncher | None = None) -> AttemptTerminator | None:
    """``launcher`` (else the configured one) if it can terminate attempts; else None."""
    try:
        chosen = launcher or get_run_launcher()
    except ConfigError:
        return None
    return chosen if isinstance(chosen, AttemptTerminator) else None


def _installed() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load_reference(reference: str) -> object:
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{RUN_LAUNCHER_ENV}={reference!r}: cannot import module {module_name!r}: {exc}",
            path=RUN_LAUNCHER_ENV,
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(
            f"{RUN_LAUNCHER_ENV}={reference!r}: module {module_name!r} has no attribute {attr!r}",
            path=RUN_LAUNCHER_ENV,
        ) from None


def _load_entry_point(name: str) -> object:
    installed = _installed()
    entry = installed.get(name)
    if entry is None:
        known = ", ".join(sorted(installed)) or "none"
        raise ConfigError(
            f"no run launcher named {name!r} is installed (entry point group "
            f"{ENTRY_POINT_GROUP!r} holds: {known}); install the distribution that provides "
            f"it (`pip install -e .` installs 'celery'), or set {RUN_LAUNCHER_ENV} to "
            "'package.module:LauncherClass'",
            path=RUN_LAUNCHER_ENV,
        )
    try:
        return entry.load()
    except ImportError as exc:
        raise ConfigError(
            f"run launcher {name!r} ({entry.value}) cannot be imported: {exc}; is its "
            "package installed?",
            path=RUN_LAUNCHER_ENV,
        ) from exc


def get_run_launcher(name: str | None = None) -> RunLauncher:
    """The configured run launcher: ``name``, else ``$COREEXEC_RUN_LAUNCHER``, else celery.

    ``name`` is an entry point name of ``coreexec.run_launchers`` or a
    ``package.module:Attribute`` reference to a launcher class (or factory). Raises
    ConfigError naming the setting when nothing usable is found.
    """
    chosen = name or os.environ.get(RUN_LAUNCHER_ENV) or DEFAULT_RUN_LAUNCHER
    target = _load_reference(chosen) if ":" in chosen else _load_entry_point(chosen)
    if not callable(target):
        raise ConfigError(
            f"run launcher {chosen!r} is a {type(target).__name__}, not a class or factory",
            path=RUN_LAUNCHER_ENV,
        )
    launcher = target()
    if not isinstance(launcher, RunLauncher):
        raise ConfigError(
            f"run launcher {chosen!r} made a {type(launcher).__name__}, which lacks "
            "`name` and `launch(run_id, *, resume=False)`",
            path=RUN_LAUNCHER_ENV,
        )
    return launcher


def event_redis_url(instance: Instance, launcher: RunLauncher | None = None) -> str | None:
    """The Redis of the run event streams: the instance's (``COREEXEC_REDIS_URL``), else
    the launcher's (given, else the configured one when it loads), else None."""
    if instance.redis_url:
        return instance.redis_url
    if launcher is None:
        try:
            launcher = get_run_launcher()
        except CoreExecError:
            return None
    url = getattr(launcher, "redis_url", None)
    return url if isinstance(url, str) else None


def mark_launch_failed(
    instance: Instance, run_id: str, launcher_name: str, exc: BaseException
) -> None:
    """Record why a run never reached a coordinator: status FAILURE and a RUN_FAILURE event."""
    message = f"could not hand the run to the {launcher_name!r} run launcher: {exc}"
    instance.storage.append_events(
        run_id,
        [
            Event(
                kind=EventKind.RUN_FAILURE,
                run_id=run_id,
                timestamp=time.time(),
                message=message,
                data={"reason": "launch_failed", "error": type(exc).__name__},
            )
        ],
    )
    instance.storage.set_status(run_id, RunStatus.FAILURE, expected=(RunStatus.QUEUED,))
