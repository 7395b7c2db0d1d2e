"""What the dispatcher of a run writes for the processes that run its steps.

The hash ``coreexec:run:{<run_id>}:settings`` is written once when a run starts; workers
read it once per run and process. It holds settings of the executor, never run config
values or secrets: the heartbeat interval, the launcher of steps that name none, and the
config of each launcher (the celery_docker executor's ``docker`` block, for instance).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coreexec.redis_clients import text
from coreexec.transport.outage import DEFAULT_OUTAGE_TOLERANCE_S

DEFAULT_HEARTBEAT_INTERVAL_S = 2.0
"""Used when a run's settings say nothing (a dispatcher older than this worker)."""

DEFAULT_LAUNCHER = "in_process"
"""Where a step runs when neither its tag nor its executor names a launcher."""


@dataclass(frozen=True)
class RunSettings:
    """The run's settings hash, as a value."""

    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    default_launcher: str = DEFAULT_LAUNCHER
    launcher_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Config per launcher name (JSON), e.g. ``{"docker": {"image": ...}}``."""
    outage_tolerance_s: float = DEFAULT_OUTAGE_TOLERANCE_S
    """How long a worker keeps retrying a step's events while Redis is unreachable."""

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> RunSettings:
        """Settings from the hash; fields that are missing or unreadable keep defaults."""
        values = {text(k): text(v) for k, v in raw.items()}
        interval = DEFAULT_HEARTBEAT_INTERVAL_S
        with contextlib.suppress(ValueError):
            interval = float(values.get("heartbeat_interval_s") or interval)
        tolerance = DEFAULT_OUTAGE_TOLERANCE_S
        with contextlib.suppress(ValueError):
            tolerance = float(values.get("outage_tolerance_s") or tolerance)
        config: dict[str, Mapping[str, Any]] = {}
        try:
            loaded = json.loads(values.get("launcher_config") or "{}")
            if isinstance(loaded, dict):
                config = {str(k): v for k, v in loaded.items() if isinstance(v, dict)}
        except ValueError:
            pass
        return cls(
            heartbeat_interval_s=interval,
            default_launcher=values.get("default_launcher") or DEFAULT_LAUNCHER,
            launcher_config=config,
            outage_tolerance_s=tolerance,
        )

    def to_hash(self) -> dict[str, str]:
        return {
            "heartbeat_interval_s": repr(self.heartbeat_interval_s),
            "default_launcher": self.default_launcher,
            "launcher_config": json.dumps(dict(self.launcher_config), sort_keys=True),
            "outage_tolerance_s": repr(self.outage_tolerance_s),
        }
