"""Checking Kubernetes JSON (camelCase, as in a manifest) against the client's models.

The official client describes every object by model classes whose ``openapi_types``
(field → type) and ``attribute_map`` (field → JSON key) hold the API's schema. Walking a
dict along them finds unknown keys (a snake_case ``image_pull_policy`` where the API
wants ``imagePullPolicy``, a typo) and values of the wrong shape, with the path of the
field, before a Job is sent. Both spellings of the client's type strings are read
(``List[V1EnvVar]`` / ``list[V1EnvVar]``, ``Dict[str, str]`` / ``dict(str, str)``).
Without the ``kubernetes`` extra installed, nothing is checked here (the server still is).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_LIST = re.compile(r"^[Ll]ist\[(.+)\]$")
_DICT = re.compile(r"^(?:Dict\[str, (.+)\]|dict\(str, (.+)\))$")
_SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str, int, float),  # quantities and int-or-string fields are typed str
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
    "object": (object,),
}


def _model(name: str) -> Any:
    # Imported here: the client takes ~0.5 s to import, and config parsing happens in
    # every coordinator and worker, most of which never launch a Job.
    from kubernetes import client

    return getattr(client, name, None) or getattr(client.models, name, None)


def check_json(value: Any, type_name: str, path: str) -> list[str]:
    """Problems of ``value`` as JSON of the client type ``type_name``, each naming its path."""
    type_name = type_name.strip()
    if match := _LIST.match(type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        problems: list[str] = []
        for index, item in enumerate(value):
            problems += check_json(item, match.group(1), f"{path}[{index}]")
        return problems
    if match := _DICT.match(type_name):
        if not isinstance(value, Mapping):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        inner = match.group(1) or match.group(2)
        problems = []
        for key, item in value.items():
            problems += check_json(item, inner, f"{path}.{key}")
        return problems
    if type_name in _SCALARS:
        if isinstance(value, bool) and bool not in _SCALARS[type_name]:
            return [f"{path}: expected {type_name}, got a boolean"]
        if not isinstance(value, _SCALARS[type_name]):
            return [f"{path}: expected {type_name}, got {type(value).__name__}"]
        return []
    return _check_model(value, type_name, path)


def _check_model(value: Any, type_name: str, path: str) -> list[str]:
    try:
        model = _model(type_name)
    except ImportError:
        return []
    if model is None:
        return []  # a type this client version does not know: leave it to the server
    if not isinstance(value, Mapping):
        return [f"{path}: expected an object ({type_name}), got {type(value).__name__}"]
    by_key = {key: name for name, key in model.attribute_map.items()}
    problems = []
    for key, item in value.items():
        field = by_key.get(key)
        if field is None:
            hint = _hint(key, by_key)
            problems.append(f"{path}.{key}: not a field of {type_name}{hint}")
        elif item is not None:
            problems += check_json(item, model.openapi_types[field], f"{path}.{key}")
    return problems


def _hint(key: str, by_key: Mapping[str, str]) -> str:
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
    if camel != key and camel in by_key:
        return f" (Kubernetes JSON is camelCase: {camel!r})"
    return ""
