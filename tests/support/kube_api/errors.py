"""API errors as the Kubernetes API server returns them: a ``Status`` object and its code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ApiError(Exception):
    """An error response: HTTP ``code`` with a ``kind: Status`` body."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def resource_label(group: str, plural: str) -> str:
    """``jobs.batch`` for a grouped resource, ``pods`` for the core group."""
    return f"{plural}.{group}" if group else plural


def _details(group: str, plural: str, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return details


def not_found(group: str, plural: str, name: str) -> ApiError:
    label = resource_label(group, plural)
    return ApiError(404, "NotFound", f'{label} "{name}" not found', _details(group, plural, name))


def already_exists(group: str, plural: str, name: str) -> ApiError:
    label = resource_label(group, plural)
    message = f'{label} "{name}" already exists'
    return ApiError(409, "AlreadyExists", message, _details(group, plural, name))


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """A 422 with one cause per (field, message), as validation failures come back."""
    label = f"{kind}.{group}" if group else kind
    text = ", ".join(f"{path}: {message}" for path, message in causes)
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [
            {"reason": "FieldValueInvalid", "message": message, "field": path}
            for path, message in causes
        ],
    }
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{label} "{name}" is invalid: {text}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def method_not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed", "the server does not allow this method")


def forbidden(group: str, plural: str, name: str, why: str) -> ApiError:
    """A 403 as admission plugins answer: ``pods "x-" is forbidden: <why>``."""
    label = resource_label(group, plural)
    return ApiError(
        403, "Forbidden", f'{label} "{name}" is forbidden: {why}', _details(group, plural, name)
    )
