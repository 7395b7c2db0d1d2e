"""Versioned schema migrations, one SQL file per version: ``NNNN_what_it_does.sql``."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> tuple[Migration, ...]:
    """The migrations of ``dialect`` (a folder beside this file), oldest first; versions
    are 1, 2, 3, ... without gaps."""
    folder = resources.files(__package__).joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        number, _, rest = name.partition("_")
        found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort(key=lambda migration: migration.version)
    expected = list(range(1, len(found) + 1))
    if [migration.version for migration in found] != expected:
        raise RuntimeError(f"{dialect} migrations are not numbered 1..{len(found)}: {found}")
    return tuple(found)
