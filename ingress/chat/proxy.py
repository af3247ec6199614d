"""High priority: straight to the PTU deployment, spilling over along its chain on failure.

One shared pooled client (`transport`); the request body is forwarded as received unless
governance or the usage option changed it; status and headers come back as the
deployment sent them (`headers`), plus `x-ptu-deployment` naming the deployment that
served (`Answer.served`: a natively spilled call names the standard deployment, which is
the one charged, counted and logged). The walk along a deployment's `spillover` chain,
its breakers and its short 429 wait are `spillover`'s; a streamed answer is relayed by
`stream`; every call's token events, span and accounting go through one `CallRecorder`
(`recorder`).

A Responses API call goes to the resource's `/openai/v1/responses` (versionless; the
deployment is the body's `model`, rewritten to the spillover deployment's name when the
call moves on); its usage is read from the response's `usage`, for a stream from the
final `response.completed` event.
"""

from __future__ import annotations

import asyncio

import httpx2
from starlette.responses import Response

from ingress.chat.accounting import Accounting
from ingress.chat.call import Call
from ingress.chat.credentials import UpstreamAuth
from ingress.chat.headers import FIXED_HEADERS, answered_by, forwarded_headers, passed_headers
from ingress.chat.recorder import CallRecorder
from ingress.chat.sniff import finish_reason_in, response_end, service_tier_in, usage_of
from ingress.chat.spillover import Spillover, SpilloverPolicy
from ingress.chat.sse import SSEFilter
from ingress.chat.stream import UpstreamStream
from ingress.chat.token_events import TokenEvents
from ingress.chat.transport import Transport
from ingress.http.errors import ApiError
from ingress.metrics import IngressMetrics
from orchestrator.telemetry.base import OFF, Telemetry

CLIENT_CLOSED = 499
"""The status an answer nobody received is counted and logged with (nginx's convention)."""

__all__ = ["Call", "Proxy"]


class Proxy:
    """Forwards high-priority calls: transport, spillover and one recorder, wired together."""

    def __init__(
        self,
        client: httpx2.AsyncClient,
        auth: UpstreamAuth,
        events: TokenEvents,
        metrics: IngressMetrics,
        *,
        policy: SpilloverPolicy | None = None,
        accounting: Accounting | None = None,
        telemetry: Telemetry = OFF,
    ) -> None:
        self.transport = Transport(client, auth)
        self.recorder = CallRecorder(events, accounting=accounting, telemetry=telemetry)
        self.spillover = Spillover(
            self.transport, self.recorder, metrics, policy or SpilloverPolicy()
        )

    async def forward(self, call: Call) -> Response:
        """The deployment's answer to `call`, streamed when the call streams."""
        headers = forwarded_headers(call.client_headers)
        headers.extend(FIXED_HEADERS)
        recorder = self.recorder
        started = recorder.started(call)
        try:
            answer = await self.spillover.answer(call, headers)
        except ApiError as exc:
            recorder.ended(call, call.target.name, exc.status, started, None, None, None)
            raise
        except asyncio.CancelledError:  # the client hung up before the answer
            recorder.ended(call, call.target.name, CLIENT_CLOSED, started, None, None, None)
            raise
        ttfb = recorder.timer() - started
        resp, used = answer.resp, answer.used
        # The request decides: some upstreams stream without `text/event-stream`.
        if answer.chunks is not None:
            sse = SSEFilter(strip_usage=call.strip_usage)
            return UpstreamStream(answer, sse, call, recorder, (started, ttfb))
        content = await resp.aread() if call.stream else resp.content
        if call.stream:
            await resp.aclose()
        usage = usage_of(content) if resp.status_code < 300 else None
        recorder.finished(answer.admitted, call, used, usage, answer)
        reason = (
            finish_reason_in(content) if call.endpoint != "responses" else response_end(content)
        )
        tier = service_tier_in(content) if resp.status_code < 300 else None
        recorder.ended(call, answer.served, resp.status_code, started, ttfb, usage, reason, tier)
        out = Response(content, status_code=resp.status_code)
        out.raw_headers.extend(passed_headers(resp.headers.raw))
        asked = answer.served if call.target.speaks_for(answer.served) else call.target.name
        out.raw_headers.extend(answered_by(asked, answer.served))
        return out

    def __repr__(self) -> str:
        return f"<Proxy {self.spillover!r} recorder={self.recorder!r}>"
