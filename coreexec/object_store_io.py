"""Step outputs in an object store (or any fsspec filesystem), named by URL.

``COREEXEC_IO_URL=s3://bucket/prefix`` (also ``gs://``, ``file:///path``, ``memory://``
for tests) puts every output at ``<url>/<run_id>/<step_key>/<output_name>``, so workers
on other machines load what a step stored without a shared disk. fsspec comes with
coreexec; the ``s3`` extra adds s3fs (``pip install 'coreexec[s3]'``). Credentials come
from where the store's own client looks (for S3: ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and ``~/.aws/credentials``,
``AWS_ENDPOINT_URL`` for an S3-compatible server), never from messages or run config.

A reader never sees half a value: object stores (S3, GCS, Azure, memory) make an
object visible only once its single or multipart upload completes; on the others the
value is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

from coreexec.errors import ConfigError, IOManagerError
from coreexec.io_managers import OutputKey, pickle_output, unpickle_output

IO_URL_ENV = "COREEXEC_IO_URL"
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})
S3_PART_BYTES = 8 * 2**20
"""Values of twice this size or more go to S3 as multipart uploads of parts this big
(s3fs's own default, 50 MiB, holds 100 MiB in one request)."""


def _protocol(fs: Any) -> str:
    protocol = fs.protocol
    return str(protocol[0] if isinstance(protocol, tuple | list) else protocol)


class ObjectStoreIOManager:
    """Pickled outputs under an fsspec URL; safe for many processes on many machines."""

    persistent = True

    def __init__(self, url: str) -> None:
        try:
            import fsspec
        except ImportError as exc:
            raise ConfigError(
                f"{IO_URL_ENV}={url} needs fsspec ({exc}), a dependency of coreexec: "
                "pip install fsspec",
                path=IO_URL_ENV,
            ) from exc
        self.url = url.rstrip("/")
        self._fsspec = fsspec
        self._lock = threading.Lock()
        self._fs: Any = None
        self._root = ""
        self._pid = 0
        self._filesystem()  # a bad URL or a missing driver fails here, not in a step

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Worker processes rebuild the filesystem from the URL (clients do not pickle).
        return (type(self), (self.url,))

    def _filesystem(self) -> tuple[Any, str]:
        with self._lock:
            if self._fs is None or self._pid != os.getpid():
                try:
                    fs, root = self._fsspec.core.url_to_fs(self.url, skip_instance_cache=True)
                except (ImportError, ValueError) as exc:
                    raise ConfigError(
                        f"{IO_URL_ENV}={self.url}: {exc}; for s3:// install "
                        "'coreexec[s3]' (s3fs), for other stores their fsspec driver",
                        path=IO_URL_ENV,
                    ) from exc
                self._fs, self._root, self._pid = fs, str(root).rstrip("/"), os.getpid()
            return self._fs, self._root

    def url_for(self, key: OutputKey) -> str:
        return f"{self.url}/{key.run_id}/{key.step_key}/{key.output_name}"

    def _path(self, key: OutputKey) -> str:
        return f"{self._filesystem()[1]}/{key.run_id}/{key.step_key}/{key.output_name}"

    def store(self, key: OutputKey, value: Any) -> None:
        payload = pickle_output(key, value)
        fs, _ = self._filesystem()
        path = self._path(key)
        try:
            protocol = _protocol(fs)
            if protocol in ("s3", "s3a"):
                fs.pipe_file(path, payload, chunksize=S3_PART_BYTES)
            elif protocol in ATOMIC_PUT_PROTOCOLS:
                fs.pipe_file(path, payload)
            else:
                parent = path.rsplit("/", 1)[0]
                fs.makedirs(parent, exist_ok=True)
                temporary = f"{parent}/.{key.output_name}.{uuid.uuid4().hex}.tmp"
                fs.pipe_file(temporary, payload)
                fs.mv(temporary, path)
        except Exception as exc:
            raise self._error(exc, key, "write") from exc

    def load(self, key: OutputKey) -> Any:
        fs, _ = self._filesystem()
        try:
            payload = fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise IOManagerError(
                f"input missing: output {key.output_name!r} of step {key.step_key!r} was not "
                f"found at {self.url_for(key)}; every process must use the same "
                f"{IO_URL_ENV}",
                step_key=key.step_key,
                output_name=key.output_name,
            ) from None
        except Exception as exc:
            raise self._error(exc, key, "read") from exc
        return unpickle_output(key, bytes(payload), where=self.url_for(key))

    def has(self, key: OutputKey) -> bool:
        fs, _ = self._filesystem()
        path = self._path(key)
        try:
            fs.invalidate_cache(path)
            return bool(fs.isfile(path))
        except Exception as exc:
            raise self._error(exc, key, "look up") from exc

    def check(self) -> None:
        """Write, read and delete a probe object: the store is reachable and writable."""
        fs, root = self._filesystem()
        probe = f"{root}/.coreexec-probe-{uuid.uuid4().hex}"
        key = OutputKey("-", "-", probe.rsplit("/", 1)[1])
        try:
            if _protocol(fs) not in ATOMIC_PUT_PROTOCOLS:
                fs.makedirs(root, exist_ok=True)
            fs.pipe_file(probe, b"ok")
            fs.cat_file(probe)
            fs.rm_file(probe)
        except Exception as exc:
            raise self._error(exc, key, "write a probe to") from exc

    def _error(self, exc: Exception, key: OutputKey, doing: str) -> IOManagerError:
        return IOManagerError(
            f"cannot {doing} output {key.output_name!r} of step {key.step_key!r} at "
            f"{self.url_for(key)}: {describe_store_error(exc, self.url)}",
            step_key=key.step_key,
            output_name=key.output_name,
        )


def describe_store_error(exc: BaseException, url: str) -> str:
    """What went wrong with the store at ``url``, and what to do about it."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return (
            f"no credentials for {url.split('://', 1)[0]}:// ({exc}); set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with "
            "~/.aws/credentials, in the environment of every process"
        )
    scheme, _, rest = url.partition("://")
    if isinstance(exc, FileNotFoundError) and scheme in ATOMIC_PUT_PROTOCOLS - {"memory"}:
        bucket = rest.split("/", 1)[0]
        return f"{exc} (does the bucket {bucket!r} exist? create it, or fix {IO_URL_ENV})"
    if isinstance(exc, PermissionError):
        return f"access denied ({exc}); the credentials in use may not write to {url}"
    return f"{type(exc).__name__}: {exc}"


def io_manager_from_url(url: str) -> ObjectStoreIOManager:
    """The IO manager for an fsspec URL (``s3://bucket/prefix``, ``file:///dir``, ...)."""
    if "://" not in url:
        raise ConfigError(
            f"{IO_URL_ENV}={url!r} is not a URL; use s3://bucket/prefix, gs://bucket/prefix "
            "or file:///absolute/path",
            path=IO_URL_ENV,
        )
    return ObjectStoreIOManager(url)
