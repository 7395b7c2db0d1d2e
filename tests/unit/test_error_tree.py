"""Every exception coreexec raises is a CoreExecError defined in coreexec.errors, and bad
input is refused with one of them, naming the field or id and what to give instead."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import coreexec
from coreexec import RetryPolicy
from coreexec.errors import (
    ConfigError,
    CoreExecError,
    Failure,
    InvalidIdError,
    MalformedEventError,
    RetryRequested,
)
from coreexec.events import Event
from coreexec.retry import FailureClass
from coreexec.transport import keys

PACKAGE = Path(coreexec.__file__).parent


def _exception_classes_outside_errors() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {ast.unparse(base) for base in node.bases}
            # The CLI's click exceptions carry an exit code to click, not an error of ours.
            if any(base.startswith("click.") for base in bases):
                continue
            if any(base.endswith(("Error", "Exception", "Timeout")) for base in bases):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.name}")
    return found


def test_every_public_exception_of_the_package_lives_in_errors_py() -> None:
    assert _exception_classes_outside_errors() == []


def test_the_exceptions_user_code_raises_are_in_the_tree_and_the_top_level_api() -> None:
    assert coreexec.Failure is Failure
    assert coreexec.RetryRequested is RetryRequested
    assert Failure("broke", allow_retries=True).allow_retries is True
    assert RetryRequested(max_retries=2, seconds_to_wait=1.5).seconds_to_wait == 1.5


@pytest.mark.parametrize(
    ("arguments", "field", "words"),
    [
        ({"max_retries": -1}, "max_retries", "must be >= 0, got -1"),
        ({"delay": -0.5}, "delay", "must be >= 0 seconds, got -0.5"),
        (
            {"retry_on": frozenset({FailureClass.CANCELLED})},
            "retry_on",
            "cancellation is final",
        ),
    ],
)
def test_a_bad_retry_policy_is_a_config_error_naming_the_field(
    arguments: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        RetryPolicy(**arguments)  # type: ignore[arg-type]
    assert caught.value.path == field


@pytest.mark.parametrize("bad", ["", "x" * 129, "has{brace}", "line\nbreak"])
def test_an_id_that_cannot_name_a_key_is_refused_naming_what_it_is(bad: str) -> None:
    with pytest.raises(InvalidIdError, match="run id") as caught:
        keys.run_events(bad)
    assert caught.value.what == "run id"
    assert caught.value.value == bad
    assert isinstance(caught.value, CoreExecError)


def test_a_malformed_event_is_a_transport_error_naming_the_body() -> None:
    with pytest.raises(MalformedEventError, match="no-such-kind"):
        Event.from_dict({"kind": "no-such-kind", "run_id": "r", "ts": 1.0})
