"""IO managers: where step outputs are stored and inputs loaded from.

Values never travel with messages: a step stores its outputs here and a downstream
step, possibly in another process or on another machine, loads them from here.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from coreexec.errors import IOManagerError


@dataclass(frozen=True)
class OutputKey:
    """Names one stored output."""

    run_id: str
    step_key: str
    output_name: str


@runtime_checkable
class IOManager(Protocol):
    """Stores and loads step outputs."""

    persistent: bool
    """True when another process can load what this one stored."""

    def store(self, key: OutputKey, value: Any) -> None: ...

    def load(self, key: OutputKey) -> Any: ...

    def has(self, key: OutputKey) -> bool: ...


def pickle_output(key: OutputKey, value: Any) -> bytes:
    """The bytes stored for an output, or an IOManagerError saying how to fix the value."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise IOManagerError(
            f"output {key.output_name!r} of step {key.step_key!r} cannot be pickled "
            f"({type(value).__name__}: {exc}); return a picklable value (plain data, "
            "dataclasses at module level) or store it yourself and return its path",
            step_key=key.step_key,
            output_name=key.output_name,
        ) from exc


def unpickle_output(key: OutputKey, payload: bytes, *, where: str) -> Any:
    """The value of stored bytes; ``where`` names the place in the error."""
    try:
        return pickle.loads(payload)
    except Exception as exc:
        raise IOManagerError(
            f"output {key.output_name!r} of step {key.step_key!r} at {where!r} "
            f"cannot be unpickled: {exc!r}",
            step_key=key.step_key,
            output_name=key.output_name,
        ) from exc


class InMemoryIOManager:
    """Outputs in a dict, for runs that stay in one process."""

    persistent = False

    def __init__(self) -> None:
        self._values: dict[OutputKey, Any] = {}
        self._lock = threading.Lock()

    def store(self, key: OutputKey, value: Any) -> None:
        with self._lock:
            self._values[key] = value

    def load(self, key: OutputKey) -> Any:
        with self._lock:
            if key not in self._values:
                raise IOManagerError(
                    f"no stored value for output {key.output_name!r} of step {key.step_key!r} "
                    f"in run {key.run_id}",
                    step_key=key.step_key,
                    output_name=key.output_name,
                )
            return self._values[key]

    def has(self, key: OutputKey) -> bool:
        with self._lock:
            return key in self._values


class FilesystemIOManager:
    """Pickled outputs under ``<base_dir>/<run_id>/<step_key>/<output_name>``.

    Writes go to a temporary file renamed into place, so a reader never sees half a
    value and a step killed mid-write leaves nothing behind under the final name.
    """

    persistent = True

    def __init__(self, base_dir: Path | str) -> None:
        self.base_dir = Path(base_dir)

    def path_for(self, key: OutputKey) -> Path:
        return self.base_dir / key.run_id / key.step_key / key.output_name

    def store(self, key: OutputKey, value: Any) -> None:
        payload = pickle_output(key, value)
        path = self.path_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key.output_name}.")
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
            os.replace(tmp, path)
        except OSError as exc:
            raise IOManagerError(
                f"cannot write output {key.output_name!r} of step {key.step_key!r} to "
                f"{str(path)!r}: {exc}; check that the storage directory is writable",
                step_key=key.step_key,
                output_name=key.output_name,
            ) from exc

    def load(self, key: OutputKey) -> Any:
        path = self.path_for(key)
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            raise IOManagerError(
                f"input missing: output {key.output_name!r} of step {key.step_key!r} was not "
                f"found at {str(path)!r}; every worker must share the storage directory "
                "(COREEXEC_HOME or the io manager's base_dir), or use COREEXEC_IO_URL=s3://... "
                "for workers on several machines",
                step_key=key.step_key,
                output_name=key.output_name,
            ) from None
        return unpickle_output(key, payload, where=str(path))

    def has(self, key: OutputKey) -> bool:
        return self.path_for(key).is_file()
