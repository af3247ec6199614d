"""The OpenAI error envelope, the ingress's own error type and the app's error handlers.

Every error the ingress answers looks like OpenAI's:
`{"error": {"code": ..., "message": ..., "type": ..., "param": null}}`, so SDK
clients raise their usual typed exceptions (`BadRequestError`, `NotFoundError`...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ingress.http import access
from orchestrator.core.errors import StoreUnavailable

if TYPE_CHECKING:
    from ingress.metrics import IngressMetrics

ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]
RETRY_AFTER_S = "2"
"""What a 503 tells the client to wait before retrying."""

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


class ErrorDetail(BaseModel):
    code: str | None
    message: str
    type: str
    param: str | None = None


class ErrorEnvelope(BaseModel):
    """Every error answer: OpenAI's envelope, so SDK clients raise their typed errors."""

    error: ErrorDetail


def envelope(status: int, code: str, message: str, param: str | None = None) -> bytes:
    """The JSON bytes of an OpenAI error envelope."""
    detail = ErrorDetail(code=code, message=message, type=error_type(status), param=param)
    return ErrorEnvelope(error=detail).model_dump_json().encode()


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


def invalid(exc: ValidationError, where: str = "") -> ApiError:
    """The 400 for a value that does not fit its model, naming the first wrong field.

    Built from pydantic's structured errors (`loc`, `msg`), never from its message text.
    """
    first = exc.errors(include_url=False, include_input=False)[0]
    param = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
    ).lstrip(".")
    prefix = f"{where}: " if where else ""
    return bad_request(f"{prefix}{param or 'body'}: {first['msg']}", param=param or None)


def unavailable(what: str, *, code: str = "service_unavailable", detail: str = "") -> ApiError:
    """The 503 for a backing store that cannot be reached; the client should retry.

    `detail` is logged, never answered: it names internal hosts and ports.
    """
    if detail:
        log.warning("backend_unavailable", what=what, code=code, detail=detail[:500])
    return ApiError(
        503,
        code,
        f"{what} is unavailable; nothing was changed, retry later",
        headers={"retry-after": RETRY_AFTER_S},
    )


def exception_handlers(metrics: IngressMetrics) -> dict[Any, ExceptionHandler]:
    """Starlette's handlers: every error the app answers leaves in the envelope, counted.

    `ApiError` is answered as raised; a Redis error that no handler translated is a
    503 (nothing was changed); Starlette's own 404/405 get the envelope; anything
    else is logged with context and answered 500.
    """

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        metrics.error(exc.code)
        access.note(error=exc.code)
        return exc.response()

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("store_unavailable", path=request.url.path, error=repr(exc))
        return await api_error(request, unavailable("the state store (Redis)"))

    async def http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.error(code)
        access.note(error=code)
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    async def unhandled(request: Request, exc: Exception) -> Response:
        log.error("ingress_unhandled_error", path=request.url.path, error=repr(exc), exc_info=exc)
        metrics.error("internal_error")
        access.note(error="internal_error")
        return error_response(500, "internal_error", "the ingress failed to handle the request")

    return {
        ApiError: api_error,
        StoreUnavailable: store_unavailable,
        HTTPException: http_exception,
        Exception: unhandled,
    }
