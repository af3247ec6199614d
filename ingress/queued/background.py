"""Background responses: the Responses API's own asynchronous call, served by the queue.

`POST …/responses` with `background: true` is a low-priority request in the shape every
SDK already speaks: the ingress queues it as usual (`queued.enqueue`) and answers the
Response object the API defines with `status: "queued"`. The request's id is the
response's id, so `GET /v1/requests/{id}` and the reply key work for it as for any queued
request; the Response object as accepted (the request's echo) is kept beside the request
record (`keys.background_response`), with the same expiry.

`GET …/responses/{id}` reads the record and the result (`ResultStore.get`) and answers the
Response object with the live status: `queued`, `in_progress`, then the upstream's own
Response (its status `completed` or `incomplete`) with our id, or `failed` with the
error, or `cancelled`. `POST …/cancel` writes a `cancelled` result only while the request
is still queued (`ResultStore.complete_if_queued`: the worker then never calls it); a call
already running finishes and is reported. `DELETE` cancels a queued one, then removes the
Response object and the stored answer (the result key keeps a content-free tombstone, so
a redelivery is still recognised as done). Another tenant's id is unknown (404).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from openai.types.responses import Response as ResponseObject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingress.http.auth import Authenticator
from ingress.http.errors import ApiError, bad_request
from ingress.http.models import ResponsePath
from ingress.http.openapi import Reply, operation
from ingress.queued.enqueue import Enqueuer, unavailable
from ingress.queued.requests import lost
from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.losses import is_lost
from orchestrator.core.redis_replies import text
from orchestrator.core.results import RequestState, ResultStore
from orchestrator.core.schemas import QueuedRequest, ResultDocument

_store = redis_boundary("background responses")
CANCELLED: Final = "cancelled"
"""The error code of the result of a request cancelled while queued."""
DELETED: Final = "deleted"
"""The error code of a deleted background response's tombstone result."""
ECHOED = (
    "instructions", "max_output_tokens", "max_tool_calls", "metadata", "parallel_tool_calls",
    "previous_response_id", "prompt", "prompt_cache_key", "reasoning", "safety_identifier",
    "service_tier", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p",
    "truncation", "user",
)  # fmt: skip
"""Request fields a Response object repeats as sent."""
_DEFAULTS: dict[str, Any] = {"parallel_tool_calls": True, "tool_choice": "auto", "tools": []}


def check(body: dict[str, Any]) -> None:
    """Refuse what a background response cannot be (400), else drop `background` from the
    body: the deployment is called as a plain response."""
    if body.get("stream") is True:
        raise bad_request(
            "background: true with stream: true is not served: the response is queued; "
            "send it without stream and poll GET /responses/{id}",
            param="stream",
        )
    if body.get("store") is False:
        raise bad_request(
            "background: true needs store: true (or no store): a background response is "
            "retrieved later",
            param="store",
        )
    body.pop("background", None)


def accepted_response(req: QueuedRequest) -> dict[str, Any]:
    """The Response object of a background request as accepted: status `queued`."""
    body = req.body
    echo = {name: body[name] for name in ECHOED if name in body}
    return {
        **_DEFAULTS,
        **echo,
        "id": req.id,
        "object": "response",
        "created_at": int(req.enqueued_at),
        "status": "queued",
        "background": True,
        "model": req.deployment,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "usage": None,
        "store": True,
    }


def live(accepted: dict[str, Any], state: RequestState) -> dict[str, Any]:
    """The Response object now: the accepted one with the live status, or the final one."""
    result = state.result
    if result is None:
        return {**accepted, "status": state.status}
    if result.status == "completed" and result.response is not None:
        final = dict(result.response)
        final.update(id=accepted["id"], background=True)
        return final
    error = result.error or {}
    code = str(error.get("code") or result.status)
    if code == CANCELLED:
        return {**accepted, "status": "cancelled"}
    message = str(error.get("message") or f"the request ended {result.status}")
    return {**accepted, "status": "failed", "error": {"code": code, "message": message}}


def not_found(response_id: str) -> ApiError:
    """The 404 of an unknown (or another tenant's, or deleted) background response."""
    return ApiError(404, "response_not_found", f"no response {response_id[:100]!r}")


class BackgroundResponses:
    """Create (with the enqueuer), retrieve, cancel and delete background responses."""

    def __init__(
        self,
        results: ResultStore,
        enqueuer: Enqueuer,
        auth: Authenticator,
        *,
        vanished: Callable[[str, str], ApiError | None] = lambda _id, _tenant: None,
    ) -> None:
        self._vanished = vanished
        """The 410 of an id this data set issued to the tenant whose record is gone (Redis
        lost it: `ingress/queued/requests`), None for an unknown id."""
        self._results = results
        self._redis = results.redis
        self._enqueuer = enqueuer
        self._auth = auth

    async def put(self, req: QueuedRequest) -> Response:
        """Keep the accepted Response object, enqueue `req` (all or nothing), answer it."""
        accepted = accepted_response(req)
        ttl_s = max(1, int(req.deadline - req.enqueued_at) + self._results.reply_ttl_s)
        key = keys.background_response(req.id)
        try:
            await self._keep(key, JSONResponse(accepted).body, ttl_s)
        except StoreUnavailable as exc:
            raise unavailable(f"record: {exc}") from exc
        try:
            await self._enqueuer.put(req)
        except BaseException:
            await self._forget(key)
            raise
        return JSONResponse(accepted, headers={"location": f"/v1/requests/{req.id}"})

    async def again(self, response_id: str) -> Response:
        """The answer to a retried create whose `Idempotency-Key` stands for `response_id`:
        the Response object as it stands now."""
        raw = await self._read(keys.background_response(response_id))
        state = await self._results.get(response_id) if raw is not None else None
        if raw is None or state is None:
            raise not_found(response_id)
        accepted: dict[str, Any] = json.loads(text(raw))
        return JSONResponse(
            live(accepted, state), headers={"location": f"/v1/requests/{response_id}"}
        )

    async def _find(self, request: Request) -> tuple[dict[str, Any], RequestState]:
        tenant = self._auth.tenant(request.headers)
        response_id = request.path_params["response_id"]
        raw = await self._read(keys.background_response(response_id))
        state = await self._results.get(response_id)
        if raw is None and state is None:  # never here, or lost with Redis's data
            raise self._vanished(response_id, tenant) or not_found(response_id)
        if raw is None and state is not None and state.tenant == tenant:
            if state.result is not None and is_lost(state.result):  # sealed by a poll
                raise lost(response_id)
        if raw is None or state is None or state.tenant != tenant:
            raise not_found(response_id)
        accepted: dict[str, Any] = json.loads(text(raw))
        return accepted, state

    @operation(
        "a background response with its live status",
        {200: Reply("the Response object", ResponseObject)},
        errors=(401, 404, 503),
        path=ResponsePath,
    )
    async def retrieve(self, request: Request) -> Response:
        """The Response object: queued, in_progress, or its final form."""
        accepted, state = await self._find(request)
        return JSONResponse(live(accepted, state))

    @operation(
        "cancel a queued background response (a running one finishes)",
        {200: Reply("the Response object", ResponseObject)},
        errors=(401, 404, 503),
        path=ResponsePath,
    )
    async def cancel(self, request: Request) -> Response:
        """Cancel while queued; answer the Response object as it stands after."""
        accepted, state = await self._find(request)
        if state.result is None and state.status == "queued":
            await self._cancel(accepted, state)
            state = await self._results.get(accepted["id"]) or state
        return JSONResponse(live(accepted, state))

    @operation(
        "delete a background response (cancelled first when queued)",
        {200: Reply("deleted")},
        errors=(401, 404, 503),
        path=ResponsePath,
    )
    async def delete(self, request: Request) -> Response:
        """Cancel if queued, then remove the Response object and the stored answer."""
        accepted, state = await self._find(request)
        rid = accepted["id"]
        if state.result is None and state.status == "queued":
            await self._cancel(accepted, state)
        tombstone = self._ending(accepted, state, DELETED, "the response was deleted")
        await self._remove(rid, state.reply_key, tombstone)
        return JSONResponse({"id": rid, "object": "response.deleted", "deleted": True})

    # the stored Response objects: Redis errors leave as StoreUnavailable (503)

    @_store
    async def _keep(self, key: str, body: bytes | memoryview, ttl_s: int) -> None:
        await self._redis.set(key, body, ex=ttl_s)

    @_store
    async def _forget(self, key: str) -> None:
        await self._redis.delete(key)

    @_store
    async def _read(self, key: str) -> bytes | str | None:
        raw: bytes | str | None = await self._redis.get(key)
        return raw

    @_store
    async def _remove(self, rid: str, reply_key: str, tombstone: ResultDocument) -> None:
        """Delete the Response object and the stored answer; keep a `deleted` result."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.background_response(rid))
            if reply_key == keys.reply(rid):
                pipe.delete(reply_key)
            pipe.set(keys.result(rid), tombstone.model_dump_json(), xx=True, keepttl=True)
            await pipe.execute()

    async def _cancel(self, accepted: dict[str, Any], state: RequestState) -> bool:
        doc = self._ending(accepted, state, CANCELLED, "the response was cancelled while queued")
        return await self._results.complete_if_queued(doc, state.reply_key)

    def _ending(
        self, accepted: dict[str, Any], state: RequestState, code: str, message: str
    ) -> ResultDocument:
        """A `failed` result document that ends the request with `code` (no call made)."""
        return ResultDocument(
            id=accepted["id"],
            status="failed",
            error={"code": code, "message": message},
            deployment=state.deployment or accepted["model"],
            enqueued_at=float(accepted["created_at"]),
            completed_at=self._enqueuer.clock(),
            tenant=state.tenant,
        )

    def __repr__(self) -> str:
        return f"<BackgroundResponses results={self._results!r}>"
