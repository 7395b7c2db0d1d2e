"""Config blocks that select one of their keys: ``retries: {disabled: {}}``,
``start_method: {spawn: {}}``, ``cluster: {local: {...}}``.

YAML ``disabled:`` with nothing after it parses to None; in these blocks it still
selects ``disabled`` (with its defaults), and giving two of the keys is an error.
"""

from __future__ import annotations

import types
from typing import Any, ClassVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator


def _takes_options(annotation: Any) -> bool:
    """Whether a choice's value is a config model (``{...}``) rather than a bare ``{}``."""
    if isinstance(annotation, type):
        return issubclass(annotation, BaseModel)
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_takes_options(arg) for arg in get_args(annotation))
    return False


class OneOfConfig(BaseModel):
    """A block whose ``choices`` exclude each other; a key given as null is selected
    with its defaults. Subclasses list their ``choices`` (fields defaulting to None)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    choices: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _null_means_selected(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: ({} if item is None else item) for key, item in value.items()}
        return value

    @model_validator(mode="after")
    def _one_of(self) -> OneOfConfig:
        chosen = [name for name in self.choices if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(self._both_message(chosen))
        return self

    @classmethod
    def _both_message(cls, chosen: list[str]) -> str:
        names = cls.choices
        if len(names) == 2:
            shown = [
                f"{name}: {{...}}"
                if _takes_options(cls.model_fields[name].annotation)
                else f"{name}: {{}}"
                for name in names
            ]
            return f"give either {shown[0]} or {shown[1]}, not both"
        return f"give one of {', '.join(names[:-1])} or {names[-1]}, not {chosen}"
