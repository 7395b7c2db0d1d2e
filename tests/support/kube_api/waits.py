"""Waiting on cluster state through the real client: list, then watch from the list's
version until a condition holds (no polling), with a deadline.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from kubernetes import watch


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline; carries the last objects seen."""


def wait_for(
    list_func: Callable[..., Any],
    condition: Callable[[list[Any]], bool],
    *args: Any,
    timeout_s: float = 30.0,
    **kwargs: Any,
) -> list[Any]:
    """Items of ``list_func(*args, **kwargs)`` once ``condition(items)`` holds.

    The items are kept current from a watch that resumes from the list's
    resourceVersion; DELETED events remove an object.
    """
    deadline = time.monotonic() + timeout_s
    listing = list_func(*args, **kwargs)
    items = {item.metadata.uid: item for item in listing.items}
    version = listing.metadata.resource_version
    while not condition(list(items.values())):
        remaining = int(deadline - time.monotonic()) + 1
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"condition not met in {timeout_s}s; last state: {items}")
        stream = watch.Watch().stream(
            list_func, *args, resource_version=version, timeout_seconds=remaining, **kwargs
        )
        with contextlib.closing(stream):
            for event in stream:
                obj = event["object"]
                version = obj.metadata.resource_version
                if event["type"] == "DELETED":
                    items.pop(obj.metadata.uid, None)
                else:
                    items[obj.metadata.uid] = obj
                if condition(list(items.values())):
                    break
    return list(items.values())
