"""API errors: the typed exceptions of the store, each carrying the exact `Status` body kube-apiserver sends.

The tree follows apimachinery's `k8s.io/apimachinery/pkg/api/errors` (one class per `StatusReason`)::

    ApiError                    any failure; `.code`, `.reason`, `.status` (the Status body as a dict)
    ├── BadRequest              400 BadRequest (bad selector, malformed body, name mismatch)
    ├── Unauthorized            401 Unauthorized (missing or wrong bearer token)
    ├── Forbidden               403 Forbidden (admission: namespace terminating, resize not allowed)
    ├── NotFound                404 NotFound (object, namespace, or the resource itself)
    ├── MethodNotAllowed        405 MethodNotAllowed
    ├── AlreadyExists           409 AlreadyExists
    ├── Conflict                409 Conflict (stale resourceVersion, failed precondition)
    ├── Expired                 410 Expired (watch or continue token older than the kept history)
    ├── UnsupportedMediaType    415 UnsupportedMediaType (unknown patch type)
    ├── Invalid                 422 Invalid (validation, with `details.causes`)
    ├── TooManyRequests         429 TooManyRequests (injected; `Retry-After`)
    └── InternalError           500 InternalError (and other injected 5xx)

Messages reproduce the real server's wording (see tests/golden/apiserver), because clients log them and
some branch on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Cause:
    """One field error of an Invalid answer (`details.causes[]`), as `field.Error` renders it."""

    reason: str
    """`FieldValueRequired`, `FieldValueInvalid`, `FieldValueForbidden`, `FieldValueNotSupported`..."""
    message: str
    """The error without the field path, e.g. ``Required value`` or ``Invalid value: "x": msg``."""
    field: str
    """The dotted field path, e.g. ``spec.capacity``."""

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def go_value(value: object) -> str:
    """Render a field value as `field.Error` does: strings quoted, numbers bare, null for None."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def required(field: str, detail: str = "") -> Cause:
    return Cause("FieldValueRequired", "Required value" + (f": {detail}" if detail else ""), field)


def invalid_value(field: str, value: object, detail: str, *, rendered: str | None = None) -> Cause:
    shown = rendered if rendered is not None else go_value(value)
    return Cause("FieldValueInvalid", f"Invalid value: {shown}: {detail}", field)


def forbidden(field: str, detail: str) -> Cause:
    return Cause("FieldValueForbidden", f"Forbidden: {detail}", field)


def not_supported(field: str, value: object, supported: list[str]) -> Cause:
    values = ", ".join(go_value(s) for s in supported)
    return Cause(
        "FieldValueNotSupported", f"Unsupported value: {go_value(value)}: supported values: {values}", field
    )


class ApiError(Exception):
    """A failed request; `status` is the `kind: Status` body the HTTP layer sends verbatim."""

    code: int = 500
    reason: str = "InternalError"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers: dict[str, str] = headers or {}
        self.metadata: dict[str, Any] = metadata or {}

    @property
    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": dict(self.metadata),
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


class BadRequest(ApiError):
    code = 400
    reason = "BadRequest"


class Unauthorized(ApiError):
    code = 401
    reason = "Unauthorized"


class Forbidden(ApiError):
    code = 403
    reason = "Forbidden"


class NotFound(ApiError):
    code = 404
    reason = "NotFound"


class MethodNotAllowed(ApiError):
    code = 405
    reason = "MethodNotAllowed"


class AlreadyExists(ApiError):
    code = 409
    reason = "AlreadyExists"


class Conflict(ApiError):
    code = 409
    reason = "Conflict"


class Expired(ApiError):
    code = 410
    reason = "Expired"


class UnsupportedMediaType(ApiError):
    code = 415
    reason = "UnsupportedMediaType"


class Invalid(ApiError):
    code = 422
    reason = "Invalid"


class TooManyRequests(ApiError):
    code = 429
    reason = "TooManyRequests"


class InternalError(ApiError):
    code = 500
    reason = "InternalError"


class ServiceUnavailable(ApiError):
    code = 503
    reason = "ServiceUnavailable"


def _resource_details(name: str, plural: str, group: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = plural
    return details


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> NotFound:
    """`persistentvolumeclaims "x" not found` (golden case 12)."""
    return NotFound(
        f'{_qualified(plural, group)} "{name}" not found', details=_resource_details(name, plural, group)
    )


def resource_not_found() -> NotFound:
    """The 404 of an unknown path (golden case 46)."""
    return NotFound("the server could not find the requested resource", details={})


def already_exists(plural: str, group: str, name: str) -> AlreadyExists:
    """`persistentvolumeclaims "x" already exists` (golden case 10)."""
    return AlreadyExists(
        f'{_qualified(plural, group)} "{name}" already exists', details=_resource_details(name, plural, group)
    )


STALE_OBJECT = "the object has been modified; please apply your changes to the latest version and try again"


def conflict(plural: str, group: str, name: str, detail: str = STALE_OBJECT) -> Conflict:
    """`Operation cannot be fulfilled on persistentvolumeclaims "x": ...` (golden case 15)."""
    return Conflict(
        f'Operation cannot be fulfilled on {_qualified(plural, group)} "{name}": {detail}',
        details=_resource_details(name, plural, group),
    )


def precondition_conflict(kind: str, group: str, name: str, detail: str) -> Conflict:
    """A failed DeleteOptions precondition names the Kind, not the resource (golden case 31)."""
    return Conflict(
        f'Operation cannot be fulfilled on {_qualified(kind, group)} "{name}": {detail}',
        details=_resource_details(name, kind, group),
    )


def invalid(kind: str, group: str, name: str, causes: list[Cause]) -> Invalid:
    """`Kind "name" is invalid: cause` or `...: [c1, c2]`, with `details.causes` (golden 23, 38, 41)."""
    unique = list(dict.fromkeys(str(c) for c in causes))  # `ErrorList.ToAggregate` drops repeated messages
    rendered = unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"
    details = _resource_details(name, kind, group)
    details["causes"] = [c.as_dict() for c in causes]
    return Invalid(f'{_qualified(kind, group)} "{name}" is invalid: {rendered}', details=details)


def unprocessable_patch() -> Invalid:
    """What a JSON patch that cannot be applied (e.g. a failing `test`) gets (golden case 19)."""
    return Invalid("the server rejected our request due to an error in our request", details={})


def forbidden_request(plural: str, group: str, name: str, detail: str) -> Forbidden:
    """An admission refusal: `persistentvolumeclaims "x" is forbidden: ...`."""
    return Forbidden(
        f'{_qualified(plural, group)} "{name}" is forbidden: {detail}',
        details=_resource_details(name, plural, group),
    )


def internal_error(detail: str) -> InternalError:
    return InternalError(f"Internal error occurred: {detail}", details={"causes": [{"message": detail}]})


def too_many_requests(retry_after: int) -> TooManyRequests:
    """What API priority and fairness answers when a request is rejected; the header tells when to retry."""
    return TooManyRequests(
        "Too many requests, please try again later.",
        details={"retryAfterSeconds": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


def method_not_allowed() -> MethodNotAllowed:
    return MethodNotAllowed("the server does not allow this method on the requested resource", details={})


def too_old_resource_version(requested: int, oldest: int) -> Expired:
    """The watch cache's answer to a watch from before the kept history (README of the golden file)."""
    return Expired(f"too old resource version: {requested} ({oldest})")


_BY_CODE: dict[int, type[ApiError]] = {
    cls.code: cls
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict, Expired)
}


def error_for_code(code: int, message: str) -> ApiError:
    """An error of the class matching an HTTP code (for injected faults); unknown codes are InternalError."""
    cls = _BY_CODE.get(code, InternalError)
    err = cls(message, details={})
    if cls is InternalError and code != 500:
        err.code = code
    return err
