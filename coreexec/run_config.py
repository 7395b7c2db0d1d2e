"""Run config: per-step config and executor config, checked before anything runs.

Shape::

    steps:
      <step_key>:
        config: {...}          # validated by the step's config_schema
    execution:
      config: {...}            # validated by the executor's config_schema
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from coreexec.errors import ConfigError
from coreexec.job import JobDefinition

_TOP_LEVEL = ("steps", "execution")


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    parts = [prefix, *(str(item) for item in loc)]
    return ".".join(part for part in parts if part)


def validation_error(prefix: str, exc: ValidationError, *, hint: str = "") -> ConfigError:
    """A ConfigError naming the first bad field of a pydantic error as ``a.b.c``."""
    first = exc.errors()[0]
    where = _path(prefix, tuple(first["loc"]))
    given = first.get("input")
    shown = "" if isinstance(given, dict) else f" (got {given!r})"
    suffix = f"; {hint}" if hint else ""
    return ConfigError(f"{where}: {first['msg']}{shown}{suffix}", path=where)


def parse_model(schema: type[BaseModel], raw: Any, *, prefix: str, hint: str = "") -> BaseModel:
    try:
        return schema.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise validation_error(prefix, exc, hint=hint) from exc


def _unknown_keys(schema: type[BaseModel], raw: Any, prefix: str, owner: str) -> None:
    """Refuse keys ``schema`` does not declare, unless the schema says what to do with
    extras itself (``model_config = ConfigDict(extra=...)``): pydantic would drop them
    silently, and a typo would run with the default."""
    if schema.model_config.get("extra") is not None or not isinstance(raw, Mapping):
        return
    fields = schema.model_fields
    known: dict[str, str] = {}
    for name, info in fields.items():
        known[name] = name
        if info.alias:
            known[info.alias] = name
    for key, value in raw.items():
        field_name = known.get(str(key))
        if field_name is None:
            valid = ", ".join(fields) or "nothing (the schema has no fields)"
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{prefix}.{key}: unknown key; {guess}{owner} takes: {valid}",
                path=f"{prefix}.{key}",
            )
        nested = fields[field_name].annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            _unknown_keys(nested, value, f"{prefix}.{key}", f"{prefix}.{key}")


def parse_step_config(
    schema: type[BaseModel], raw: Any, *, step_key: str, hint: str = ""
) -> BaseModel:
    """A step's config, parsed by its schema; unknown keys are refused (see above)."""
    prefix = f"run_config.steps.{step_key}.config"
    _unknown_keys(schema, raw, prefix, f"step {step_key!r}")
    return parse_model(schema, raw, prefix=prefix, hint=hint)


def check_run_config(job: JobDefinition, run_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the step part of ``run_config``; returns it as a plain dict.

    Unknown top-level keys, unknown step keys, config for a step without a schema and
    values the schema rejects all raise ConfigError naming the path.
    """
    config = dict(run_config or {})
    for key in config:
        if key not in _TOP_LEVEL:
            raise ConfigError(
                f"run_config.{key}: unknown key; run config takes {', '.join(_TOP_LEVEL)}",
                path=f"run_config.{key}",
            )
    steps = config.get("steps") or {}
    if not isinstance(steps, Mapping):
        raise ConfigError(
            "run_config.steps: must be a mapping of step key to {config: ...}",
            path="run_config.steps",
        )
    for step_key, body in steps.items():
        _check_step_entry(job, step_key, body)
    for step_key, node in job.nodes.items():
        schema = node.step.config_schema
        if schema is not None and step_key not in steps:
            # Fails here, before the run starts, when the schema has required fields.
            parse_step_config(schema, {}, step_key=step_key, hint="give it in run_config.steps")
    execution = config.get("execution")
    if execution is not None and (
        not isinstance(execution, Mapping) or set(execution) - {"config"}
    ):
        raise ConfigError(
            "run_config.execution: must be {config: {...}}", path="run_config.execution"
        )
    return config


def _check_step_entry(job: JobDefinition, step_key: str, body: Any) -> None:
    """One entry of ``run_config.steps``: a step of the job, with a schema for its config."""
    prefix = f"run_config.steps.{step_key}"
    if step_key not in job.nodes:
        raise ConfigError(
            f"{prefix}: job {job.name!r} has no step {step_key!r}; its steps are: "
            f"{', '.join(list(job.nodes)[:20])}",
            path=prefix,
        )
    if not isinstance(body, Mapping) or set(body) - {"config"}:
        raise ConfigError(f"{prefix}: must be {{config: {{...}}}}", path=prefix)
    schema = job.nodes[step_key].step.config_schema
    if schema is None:
        raise ConfigError(
            f"{prefix}.config: step {step_key!r} takes no config (it has no config_schema)",
            path=f"{prefix}.config",
        )
    parse_step_config(schema, body.get("config"), step_key=step_key)


def step_config(
    job: JobDefinition, step_key: str, run_config: Mapping[str, Any]
) -> BaseModel | None:
    """The parsed config of one step (None when the step has no config_schema)."""
    schema = job.nodes[step_key].step.config_schema
    if schema is None:
        return None
    raw = ((run_config.get("steps") or {}).get(step_key) or {}).get("config")
    return parse_step_config(schema, raw, step_key=step_key)


def execution_config(run_config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    execution = run_config.get("execution")
    if not execution:
        return None
    result: Mapping[str, Any] | None = execution.get("config")
    return result
