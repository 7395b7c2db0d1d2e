"""Option parsing shared by commands: config files, tags, errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import yaml

from coreexec.instance import Instance


def load_run_config(paths: Sequence[str]) -> dict[str, Any]:
    """Merge YAML files in order (later files win, deeply)."""
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {path}: {exc.strerror}", param_hint="-c"
            ) from exc
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"{path} is not valid YAML: {exc}", param_hint="-c") from exc
        if not isinstance(loaded, dict):
            raise click.BadParameter(f"{path} must hold a mapping at the top", param_hint="-c")
        _merge(merged, loaded)
    return merged


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def parse_tags(items: Sequence[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--tag")
        tags[key] = value
    return tags


def instance_from_env() -> Instance:
    return Instance.from_env()


config_option = click.option(
    "-c",
    "--config",
    "config_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Run config YAML (steps.<key>.config, execution.config); repeat to merge.",
)
tag_option = click.option(
    "--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Run tag; repeatable."
)
