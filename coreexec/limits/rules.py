"""Tag concurrency rules and the slots a step's tags need under them.

A rule is ``{key, value, limit}``:

* ``value: "warehouse"`` limits steps tagged ``key=warehouse``;
* ``value: {applyLimitPerUniqueValue: true}`` gives every value of the key its own limit;
* no value: every value of the key shares one limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coreexec.errors import ConfigError


class PerUniqueValue(BaseModel):
    """``{applyLimitPerUniqueValue: true}``: one limit for each distinct value of the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    applyLimitPerUniqueValue: bool = True


class TagConcurrencyLimit(BaseModel):
    """One rule of ``tag_concurrency_limits``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1)
    value: str | PerUniqueValue | None = None
    limit: int = Field(ge=0)

    def slot_for(self, tags: Mapping[str, str]) -> SlotSpec | None:
        """The slot this rule asks of a step with ``tags``, or None when it does not apply."""
        if self.key not in tags:
            return None
        tag_value = str(tags[self.key])
        if self.value is None:
            return SlotSpec(name=f"{self.key}=*", limit=self.limit, rule=self.describe())
        if isinstance(self.value, PerUniqueValue):
            if not self.value.applyLimitPerUniqueValue:
                return SlotSpec(name=f"{self.key}=*", limit=self.limit, rule=self.describe())
            return SlotSpec(name=f"{self.key}={tag_value}", limit=self.limit, rule=self.describe())
        if tag_value != self.value:
            return None
        return SlotSpec(name=f"{self.key}={self.value}", limit=self.limit, rule=self.describe())

    def describe(self) -> str:
        """A short human form: ``database=warehouse limit 2``."""
        if self.value is None:
            shown = f"{self.key} (any value)"
        elif isinstance(self.value, PerUniqueValue):
            shown = f"{self.key} (per unique value)"
        else:
            shown = f"{self.key}={self.value}"
        return f"{shown} limit {self.limit}"


@dataclass(frozen=True)
class SlotSpec:
    """A named counting semaphore a step needs one slot of."""

    name: str
    limit: int
    rule: str


def parse_limits(
    raw: Sequence[Mapping[str, Any] | TagConcurrencyLimit] | None, *, path: str
) -> tuple[TagConcurrencyLimit, ...]:
    """Parse user rules; a bad rule raises ConfigError naming ``path[i].field``."""
    rules: list[TagConcurrencyLimit] = []
    for index, item in enumerate(raw or ()):
        if isinstance(item, TagConcurrencyLimit):
            rules.append(item)
            continue
        try:
            rules.append(TagConcurrencyLimit.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            where = f"{path}[{index}].{field}" if field else f"{path}[{index}]"
            raise ConfigError(
                f"{where}: {first['msg']} (a rule is {{key, value?, limit}}, e.g. "
                f"{{key: database, value: warehouse, limit: 2}})",
                path=where,
            ) from exc
    return tuple(rules)


def slots_for(
    rules: Sequence[TagConcurrencyLimit], tags: Mapping[str, str]
) -> tuple[SlotSpec, ...]:
    """Every slot a step with ``tags`` needs, one per matching rule, sorted by name.

    When two rules name the same slot the smaller limit wins, so a step never needs the
    same slot twice.
    """
    by_name: dict[str, SlotSpec] = {}
    for rule in rules:
        slot = rule.slot_for(tags)
        if slot is None:
            continue
        known = by_name.get(slot.name)
        if known is None or slot.limit < known.limit:
            by_name[slot.name] = slot
    return tuple(by_name[name] for name in sorted(by_name))
