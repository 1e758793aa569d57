"""Every error the HTTP app answers is JSON ``{"error": {"type": …, "message": …}}``.

:class:`HttpError` subclasses carry their status and type; the handlers installed by
:func:`install` turn them, FastAPI's own errors (unknown route, wrong method, request
validation) and metersync's errors into that shape. Unexpected exceptions answer 500 with
a message that reveals nothing; their traceback goes to the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapter.errors import (
    ConfigurationError,
    InvalidUsage,
    MetersyncError,
    NoSubscription,
    UnknownAccount,
    UnknownMeter,
)

log = structlog.get_logger("metersync.http")

#: The error type of each status Starlette itself may answer with.
_STARLETTE_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


class HttpError(MetersyncError):
    """An error answered with ``status`` and ``{"error": {"type", "message"}}``."""

    status = 500
    type = "internal_error"

    def __init__(
        self, message: str, *, type: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        if type is not None:
            self.type = type
        self.headers = dict(headers or {})


class BadRequest(HttpError):
    """400: the request cannot be read (bad JSON, bad signature, not a Stripe event)."""

    status, type = 400, "invalid_request"


class Unauthorized(HttpError):
    """401: no bearer token, or the wrong one."""

    status, type = 401, "unauthorized"


class Forbidden(HttpError):
    """403: the request is refused whatever it carries (e.g. the ops API is disabled)."""

    status, type = 403, "forbidden"


class NotFound(HttpError):
    """404: the thing named does not exist."""

    status, type = 404, "not_found"


class PayloadTooLarge(HttpError):
    """413: the body (or the batch) is larger than allowed."""

    status, type = 413, "payload_too_large"


class Unprocessable(HttpError):
    """422: the request is well-formed but its content is invalid."""

    status, type = 422, "validation_error"


class Unavailable(HttpError):
    """503: a setting or service this request needs is missing or down."""

    status, type = 503, "service_unavailable"


def error_body(type: str, message: str) -> dict[str, Any]:
    """The JSON body of an error."""
    return {"error": {"type": type, "message": message}}


def error_response(
    status: int, type: str, message: str, *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error as a JSON response."""
    return JSONResponse(error_body(type, message), status_code=status, headers=headers)


def describe_validation(errors: Iterable[Any]) -> str:
    """One line naming each invalid field and what is wrong, without echoing input."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HttpError)
    return error_response(exc.status, exc.type, str(exc), headers=exc.headers)


def _starlette(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _STARLETTE_TYPES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else kind.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = "no such route; see the API in the README"
    return error_response(exc.status_code, kind, message, headers=exc.headers)


def _validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "validation_error", describe_validation(exc.errors()))


def _metersync(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, UnknownAccount | UnknownMeter):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, NoSubscription):
        return error_response(404, "no_subscription", str(exc))
    if isinstance(exc, InvalidUsage):
        return error_response(422, "invalid_usage", str(exc))
    if isinstance(exc, ConfigurationError):
        return error_response(500, "configuration_error", str(exc))
    return error_response(500, "metersync_error", str(exc))


def _database(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("http.database_unavailable", error=type(exc).__name__)
    return error_response(
        503, "database_unavailable", "the database is unreachable; try again shortly"
    )


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("http.unexpected_error", path=request.url.path)
    return error_response(500, "internal_error", "internal error; the server log has details")


def install(app: FastAPI) -> None:
    """Install the handlers that keep every error JSON."""
    app.add_exception_handler(HttpError, _http_error)
    app.add_exception_handler(StarletteHTTPException, _starlette)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(MetersyncError, _metersync)
    app.add_exception_handler(sa.exc.OperationalError, _database)
    app.add_exception_handler(Exception, _unexpected)
