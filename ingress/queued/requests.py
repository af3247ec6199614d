"""`GET /v1/requests/{id}?wait=SECONDS`: a queued request's result, long-polled.

200 with the result document once it exists; 202 with the request's status
while it is queued or in progress; 404 when it is unknown or another tenant's
(the two are indistinguishable on purpose); 410 `request_lost` when its record is
gone because Redis lost its data after accepting it (its id names an older
incarnation of the data set: `orchestrator.core.incarnation`), or because it lost part of
it (the id is one this data set issued to this tenant, `Incarnation.issued`, within the
life of a record, yet the record is gone: the request is sealed with its lost result,
`core/losses`, and every later poll answers 410 alike). A request whose record outlived
its life answers 410 `request_expired`. `wait` is capped at 60 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingress.http.answers import QueuedRequestStatus
from ingress.http.auth import Authenticator
from ingress.http.errors import ApiError, unavailable
from ingress.http.models import RequestPath, WaitQuery, parse_wait
from ingress.http.openapi import Reply, operation
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.losses import Losses, is_lost, lost_document
from orchestrator.core.results import RequestState, ResultStore
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


def expired(request_id: str) -> ApiError:
    """The 410 for a request this data set issued whose record has outlived its life."""
    return ApiError(
        410, "request_expired", f"request {request_id[:100]!r} expired and was forgotten"
    )


class RequestsApi:
    """The result retrieval route."""

    def __init__(
        self,
        results: ResultStore,
        auth: Authenticator,
        *,
        issued_before_loss: Callable[[str], bool] = lambda _id: False,
        issued: Callable[[str, str], float | None] = lambda _id, _tenant: None,
        losses: Losses | None = None,
        kept_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._results = results
        self._auth = auth
        self._issued_before_loss = issued_before_loss
        self._issued = issued
        self._losses = losses
        self._kept_s = kept_s
        """The longest a request's record lives (the longest TTL + the reply TTL)."""
        self._clock = clock

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
            if state is None:
                state = await self._vanished(request_id, tenant)
            if state is None or state.tenant != tenant:
                raise not_found(request_id)
            if state.result is None and wait > 0:
                state = await self._results.wait(request_id, wait)
        except StoreUnavailable as exc:
            raise unavailable("the result store", code="store_unavailable") from exc
        if state is None:
            raise not_found(request_id)
        if state.result is not None and is_lost(state.result):
            raise lost(request_id)
        if state.result is not None:
            return Response(state.result.model_dump_json(), media_type="application/json")
        queued = QueuedRequestStatus(id=request_id, status=state.status, reply_key=state.reply_key)
        return JSONResponse(
            queued.model_dump(),
            status_code=202,
            headers={"retry-after": "1"},
        )

    def gone(self, request_id: str, tenant: str) -> ApiError | None:
        """For an id without record or result: 410 `request_lost` if a wiped data set or this
        one issued it (to `tenant`, within a record's life), 410 `request_expired` past that
        life, else None."""
        if self._issued_before_loss(request_id):  # a wiped data set's
            return lost(request_id)
        issued_at = self._issued(request_id, tenant)
        if issued_at is None:
            return None
        return expired(request_id) if self._clock() - issued_at > self._kept_s else lost(request_id)

    async def _vanished(self, request_id: str, tenant: str) -> RequestState | None:
        """No record, no result: a lost request if this data set issued the id to `tenant`
        (sealed now, so the answer stays 410), else unknown (None)."""
        issued_at = self._issued(request_id, tenant)
        if issued_at is None or self._losses is None:
            return None
        now = self._clock()
        if now - issued_at > self._kept_s:
            raise expired(request_id)
        doc = lost_document(request_id, tenant, found="poll", now=now, enqueued_at=issued_at)
        result = await self._losses.seal(doc, "poll")
        return RequestState(status=result.status, tenant=result.tenant, reply_key="", result=result)

    def __repr__(self) -> str:
        return f"<RequestsApi results={self._results!r}>"
