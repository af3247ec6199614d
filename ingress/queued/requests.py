"""`GET /v1/requests/{id}?wait=SECONDS`: a queued request's result, long-polled.

200 with the result document once it exists; 202 with the request's status
while it is queued or in progress; 404 when it is unknown or another tenant's
(the two are indistinguishable on purpose); 410 `request_lost` when its record is
gone because Redis lost its data after accepting it (its id names an older
incarnation of the data set: `orchestrator.core.incarnation`). `wait` is capped at 60 s.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingress.http.answers import QueuedRequestStatus
from ingress.http.auth import Authenticator
from ingress.http.errors import ApiError, unavailable
from ingress.http.models import RequestPath, WaitQuery, parse_wait
from ingress.http.openapi import Reply, operation
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import ResultDocument


def not_found(request_id: str) -> ApiError:
    """The 404 for an unknown (or someone else's) request."""
    return ApiError(404, "request_not_found", f"no request {request_id[:100]!r}")


def lost(request_id: str) -> ApiError:
    """The 410 for a request accepted before Redis lost its data."""
    return ApiError(
        410,
        "request_lost",
        f"request {request_id[:100]!r} was accepted, but the state store lost its data since; "
        "submit it again",
    )


class RequestsApi:
    """The result retrieval route."""

    def __init__(
        self,
        results: ResultStore,
        auth: Authenticator,
        *,
        issued_before_loss: Callable[[str], bool] = lambda _id: False,
    ) -> None:
        self._results = results
        self._auth = auth
        self._issued_before_loss = issued_before_loss

    @operation(
        "a queued request's result",
        {
            200: Reply("the result document", ResultDocument),
            202: Reply("still queued or in progress", QueuedRequestStatus),
        },
        errors=(400, 401, 404, 410, 503),
        path=RequestPath,
        query=WaitQuery,
    )
    async def get(self, request: Request) -> Response:
        """The result document (200), the status (202), 404, or 410 when lost."""
        tenant = self._auth.tenant(request.headers)
        request_id = request.path_params["request_id"]
        wait = parse_wait(request.query_params.get("wait"))
        try:
            state = await self._results.get(request_id)
            if state is None and self._issued_before_loss(request_id):
                raise lost(request_id)
            if state is None or state.tenant != tenant:
                raise not_found(request_id)
            if state.result is None and wait > 0:
                state = await self._results.wait(request_id, wait)
        except StoreUnavailable as exc:
            raise unavailable("the result store", code="store_unavailable") from exc
        if state is None:
            raise not_found(request_id)
        if state.result is not None:
            return Response(state.result.model_dump_json(), media_type="application/json")
        queued = QueuedRequestStatus(id=request_id, status=state.status, reply_key=state.reply_key)
        return JSONResponse(
            queued.model_dump(),
            status_code=202,
            headers={"retry-after": "1"},
        )

    def __repr__(self) -> str:
        return f"<RequestsApi results={self._results!r}>"
