"""Tags with a meaning to coreexec, and how their values are read."""

from __future__ import annotations

from collections.abc import Mapping

from coreexec.errors import DefinitionError

PRIORITY_TAG = "coreexec/priority"
"""Integer, default 0, higher runs first; also picks the Celery queue band."""

QUEUE_TAG = "coreexec/queue"
"""Names the Celery queue of a step outright, overriding the priority bands."""

LAUNCHER_TAG = "coreexec/launcher"
"""Where a step runs under the celery executors: ``in_process``, ``docker`` or ``k8s``."""

EXECUTOR_TAG = "coreexec/executor"
"""``in_process`` runs a step in the coordinating process under the multiprocess executor."""

IO_URL_TAG = "coreexec/io_url"
"""Set on a run when its outputs are at an fsspec URL (the executor's ``io_url``, else
``COREEXEC_IO_URL`` of the process that made the run): every process that runs, resumes
or reads the run stores and loads its outputs there, whatever its own settings say."""

TagValue = str | int


def normalize_tags(tags: Mapping[str, TagValue] | None, *, owner: str) -> dict[str, str]:
    """Tags as ``str -> str``; a bad key or value raises naming ``owner``."""
    result: dict[str, str] = {}
    for key, value in (tags or {}).items():
        if not isinstance(key, str) or not key:
            raise DefinitionError(f"{owner}: tag keys must be non-empty strings, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise DefinitionError(
                f"{owner}: tag {key!r} must be a string or an integer, got {value!r}"
            )
        result[key] = str(value)
    if PRIORITY_TAG in result:
        parse_priority(result[PRIORITY_TAG], owner=owner)
    return result


def parse_priority(value: str | None, *, owner: str) -> int:
    """The integer value of a ``coreexec/priority`` tag (0 when absent)."""
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        raise DefinitionError(
            f"{owner}: tag {PRIORITY_TAG!r} must be an integer such as 5 or -5, got {value!r}"
        ) from None
