"""The OpenAI error envelope and the ingress's own error type.

Every error the ingress answers looks like OpenAI's:
`{"error": {"code": ..., "message": ..., "type": ..., "param": null}}`, so SDK
clients raise their usual typed exceptions (`BadRequestError`, `NotFoundError`...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

log = structlog.get_logger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


class ApiError(Exception):
    """An error answered to the client in the OpenAI envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})

    def response(self) -> Response:
        """The error as an HTTP response."""
        return error_response(
            self.status, self.code, self.message, param=self.param, headers=self.headers
        )


def envelope(status: int, code: str, message: str, param: str | None = None) -> bytes:
    """The JSON bytes of an OpenAI error envelope."""
    err = {"code": code, "message": message, "type": error_type(status), "param": param}
    return json.dumps({"error": err}).encode()


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error response with the OpenAI envelope."""
    return Response(
        envelope(status, code, message, param),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


def bad_request(
    message: str, *, code: str = "invalid_request", param: str | None = None
) -> ApiError:
    """A 400 with a message naming what is wrong."""
    return ApiError(400, code, message, param=param)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 answered in the envelope."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def unhandled_error_handler(request: Request, exc: Exception) -> Response:
    """Last resort: log with context and answer 500 in the envelope."""
    log.error("ingress_unhandled_error", path=request.url.path, error=repr(exc), exc_info=exc)
    return error_response(500, "internal_error", "the ingress failed to handle the request")


def unavailable(what: str) -> ApiError:
    """The 503 for a backing store that cannot be reached; the client should retry."""
    return ApiError(
        503,
        "service_unavailable",
        f"{what} is unavailable; nothing was changed, retry later",
        headers={"retry-after": "2"},
    )
