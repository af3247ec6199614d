"""The chat completions routes (Azure shape and OpenAI shape) and the Responses API routes.

Both APIs take the same path: high priority is proxied, low priority queued with the
endpoint it calls (`QueuedRequest.endpoint`), so the worker calls the same API.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from openai.types.chat import ChatCompletion
from openai.types.responses import Response as ResponseObject
from starlette.requests import Request
from starlette.responses import Response

from ingress.chat.call import Call
from ingress.chat.governance import CAPPED_HEADER, Governance, Governed
from ingress.chat.limits import TenantLimits
from ingress.chat.proxy import Proxy
from ingress.chat.targets import Target, target_for
from ingress.http import access
from ingress.http.answers import QueuedRequestStatus
from ingress.http.auth import Authenticator
from ingress.http.body import parse_object, read_body
from ingress.http.errors import ApiError, bad_request
from ingress.http.limits import unless_disconnected
from ingress.http.models import (
    AzureChatPath,
    AzureChatQuery,
    ChatCompletionRequest,
    ChatHeaders,
    OpenAIChatCompletionRequest,
    ResponsesRequest,
    parse_priority,
    parse_ttl,
    validated,
)
from ingress.http.openapi import Reply, operation
from ingress.metrics import IngressMetrics
from ingress.queued import background as background_mode
from ingress.queued import idempotency
from ingress.queued.background import BackgroundResponses
from ingress.queued.enqueue import Enqueuer, accepted, new_request_id
from ingress.queued.idempotency import Idempotency
from ingress.queued.waiting import APPLIED_HEADER, Waiting
from orchestrator.calls.versions import accepts_stream_options, api_version_of
from orchestrator.core.schemas import PRIORITY_HEADER, Endpoint, QueuedRequest
from orchestrator.core.settings import Settings
from orchestrator.core.tokens import estimate_prompt_tokens, requested_max_tokens

REPLIES = {
    200: Reply(
        "the deployment's answer (JSON, or an SSE stream when stream is true)",
        ChatCompletion,
        also=("text/event-stream",),
    ),
    202: Reply("queued (low priority): GET the Location for the result", QueuedRequestStatus),
}
RESPONSES_REPLIES = {
    200: Reply(
        "the deployment's response (JSON, or an SSE stream of events when stream is true)",
        ResponseObject,
        also=("text/event-stream",),
    ),
    202: REPLIES[202],
}
ERRORS = (400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504)
"""The ingress's own errors and those a deployment answers, passed through as sent."""


@dataclass(frozen=True, slots=True)
class QueuedPaths:
    """Where a low-priority call goes: the queue, and the two shapes that wait on it."""

    enqueuer: Enqueuer
    background: BackgroundResponses | None = None
    """Responses API background mode (made from the enqueuer when None)."""
    waiting: Waiting | None = None
    """`Prefer: wait=N` calls held until their result (none: every call answers 202)."""
    idempotency: Idempotency | None = None
    """`Idempotency-Key` claims (made from the enqueuer's Redis when None)."""


class ChatRoutes:
    """`POST …/chat/completions` (Azure and OpenAI shapes) and `POST …/responses`."""

    def __init__(
        self,
        settings: Settings,
        targets: Mapping[str, Target],
        auth: Authenticator,
        proxy: Proxy,
        queued: QueuedPaths,
        metrics: IngressMetrics,
        limits: TenantLimits | None = None,
    ) -> None:
        enqueuer = queued.enqueuer
        self._waiting = queued.waiting
        self._background = queued.background or BackgroundResponses(
            enqueuer.results, enqueuer, auth
        )
        self._once = queued.idempotency or Idempotency(
            enqueuer.results.redis, enqueuer.results.reply_ttl_s
        )
        self._targets = targets
        self._limits = limits or TenantLimits(auth.tenancy, None, None)
        self._auth = auth
        self._proxy = proxy
        self._enqueuer = enqueuer
        self._metrics = metrics
        self._default_priority = settings.default_priority
        self._max_body = settings.max_body_bytes
        self._ceiling = settings.max_tokens_ceiling
        self._default_max_tokens = settings.default_max_tokens
        self._governance = Governance.of(settings.deployments, settings.default_max_tokens)
        self._default_ttl_s = settings.default_ttl_s
        self._default_query = "?api-version=" + quote(settings.azure_openai_api_version)

    @operation(
        "chat completion, Azure shape",
        REPLIES,
        errors=ERRORS,
        body=ChatCompletionRequest,
        path=AzureChatPath,
        query=AzureChatQuery,
        headers=ChatHeaders,
    )
    async def azure(self, request: Request) -> Response:
        """Azure shape: the deployment is in the path, `api-version` passes through."""
        query = request.scope["query_string"]
        if b"api-version=" in query:
            return await self._chat(
                request, request.path_params["deployment"], "?" + query.decode("latin-1")
            )
        return await self._chat(request, request.path_params["deployment"], self._default_query)

    @operation(
        "chat completion, OpenAI shape",
        REPLIES,
        errors=ERRORS,
        body=OpenAIChatCompletionRequest,
        headers=ChatHeaders,
    )
    async def openai(self, request: Request) -> Response:
        """OpenAI shape: `model` names the deployment."""
        return await self._chat(request, None, self._default_query)

    @operation(
        "create a response (Responses API)",
        RESPONSES_REPLIES,
        errors=ERRORS,
        body=ResponsesRequest,
        query=AzureChatQuery,
        headers=ChatHeaders,
    )
    async def responses(self, request: Request) -> Response:
        """The Responses API: `model` names the deployment; called on the v1 surface upstream.

        Any `api-version` is the client's own (Azure's older `/openai/responses`): the
        resource's v1 Responses API takes none.
        """
        return await self._chat(request, None, "", "responses")

    async def _chat(
        self,
        request: Request,
        deployment: str | None,
        query: str,
        endpoint: Endpoint = "chat/completions",
    ) -> Response:
        headers = request.headers
        tenant = self._auth.tenant(headers)
        priority = parse_priority(headers.get(PRIORITY_HEADER), self._default_priority)
        raw = await read_body(request, self._max_body)
        body = parse_object(raw)
        background = False
        if endpoint == "responses":
            parsed = validated(ResponsesRequest, body)
            deployment, background = parsed.model, parsed.background is True
            if background:  # the API's own asynchronous call: our low priority
                background_mode.check(body)
                priority = "low"
        elif deployment is None:
            deployment = validated(OpenAIChatCompletionRequest, body).model
        else:
            validated(ChatCompletionRequest, body)
        self._metrics.request(priority)
        target = target_for(self._targets, deployment)
        stream = body.get("stream") is True
        request_id = self._enqueuer.new_id(tenant) if priority == "low" else new_request_id()
        access.note(deployment=target.name, priority=priority, request_id=request_id)
        await self._limits.admit(tenant, target.name, priority, request_id, body)
        ceiling = self._limits.ceiling(tenant, self._ceiling)
        if priority == "low":
            return await self._enqueue(
                request, tenant, target, body, stream, ceiling, request_id, endpoint, background
            )
        governed = self._governance.apply(
            body, target.name, ceiling=ceiling, endpoint=endpoint, stream=stream
        )
        changed = governed.changed
        strip_usage = False
        if (
            stream
            and endpoint == "chat/completions"
            and (target.provisioned or target.spillover)
            and accepts_stream_options(api_version_of(query))
        ):  # an older api-version refuses the option: the relay counts the stream instead
            strip_usage = not _wants_usage(body)
            if strip_usage:
                options = body.get("stream_options") or {}
                body["stream_options"] = {**options, "include_usage": True}
                changed = True
        provisioned = target.provisioned
        call = Call(
            target=target,
            payload=json.dumps(body, separators=(",", ":")).encode() if changed else raw,
            query=query,
            client_headers=request.headers.raw,
            request_id=request_id,
            prompt_tokens=estimate_prompt_tokens(body) if provisioned else 0,
            max_tokens=requested_max_tokens(body, self._default_max_tokens) if provisioned else 0,
            stream=stream,
            strip_usage=strip_usage,
            tenant=tenant,
            endpoint=endpoint,
        )
        # a client that hangs up before the answer cancels the call (a stream's relay
        # watches for it itself once the answer starts)
        answer = await unless_disconnected(request.receive, self._proxy.forward(call))
        return _capped(answer, governed)

    async def _enqueue(
        self,
        request: Request,
        tenant: str,
        target: Target,
        body: dict[str, Any],
        stream: bool,
        ceiling: int,
        request_id: str,
        endpoint: Endpoint,
        background: bool = False,
    ) -> Response:
        if stream:
            raise bad_request(
                "stream: true cannot be queued: a low-priority request is answered as one "
                "document (GET /v1/requests/{id}); send it without stream or with x-priority: high",
                param="stream",
            )
        if not target.provisioned:
            raise bad_request(
                f"deployment {target.name!r} is a standard deployment; low priority fills "
                "provisioned (PTU) deployments only",
                code="not_provisioned",
            )
        headers = request.headers
        key = idempotency.key_of(headers.get(idempotency.HEADER))
        print_ = idempotency.fingerprint(target.name, endpoint, body) if key else ""
        governed = self._governance.apply(body, target.name, ceiling=ceiling, endpoint=endpoint)
        req = self._enqueuer.build(
            target.name,
            body,
            endpoint=endpoint,
            tenant=tenant,
            request_id=request_id,
            reply_key_header=headers.get("x-reply-key"),
            ttl_s=parse_ttl(headers.get("x-ptu-ttl-s"), self._default_ttl_s),
        )
        wait_s = 0.0
        if self._waiting is not None and not background:
            wait_s = self._waiting.seconds(headers.getlist("prefer"), tenant, target.name)
        answers: list[Response] = []

        async def accept() -> None:
            if background:
                answers.append(await self._background.put(req))
            else:
                await self._enqueuer.put(req)

        if key is None:
            await accept()
        elif (earlier := await self._once.once(key, print_, req, accept)) is not None:
            access.note(request_id=earlier)  # the access line names the request answered
            if background:
                return _capped(await self._background.again(earlier), governed)
            req = await self._again(earlier, req)
        if answers:
            return _capped(answers[0], governed)
        if wait_s > 0 and self._waiting is not None:
            answered = await self._waiting.hold(req, wait_s)
            if answered is not None:
                return _capped(answered, governed)
            timed_out = accepted(req)
            timed_out.headers[APPLIED_HEADER] = f"wait={math.ceil(wait_s)}"
            return _capped(timed_out, governed)
        return _capped(accepted(req), governed)

    async def _again(self, earlier: str, req: QueuedRequest) -> QueuedRequest:
        """`req` as the earlier request its idempotency key stands for (its id, reply key)."""
        state = await self._enqueuer.results.get(earlier)
        if state is None:
            raise ApiError(
                409,
                "idempotency_key_expired",
                f"this Idempotency-Key stands for request {earlier}, which is no longer known",
                param=idempotency.HEADER,
            )
        return req.model_copy(update={"id": earlier, "reply_key": state.reply_key})

    def __repr__(self) -> str:
        return f"<ChatRoutes deployments={','.join(self._targets)}>"


def _capped(response: Response, governed: Governed) -> Response:
    """`response`, telling the client the limit governance lowered its own to, if it did."""
    if governed.capped is not None:
        response.headers[CAPPED_HEADER] = str(governed.capped)
    return response


def _wants_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
