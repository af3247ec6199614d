"""The relay of a streamed answer: SSE event by event, recorded once when it ends.

A client that hangs up ends the relay at once: a watcher waits for the client's
`http.disconnect` beside the relay, and cancels it; closing the upstream response closes
its connection, which is how an HTTP caller cancels a call (Azure stops generating, the
PTU capacity goes back to whoever reads). Without the watcher the relay would read the
upstream to its end (the server drops writes to a gone client silently), spending
capacity nobody reads. What was relayed is still recorded: the usage chunk never came, so
the completion tokens are the content events relayed (`SSEFilter.content_events`).
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx2
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ingress.chat.call import Answer, Call
from ingress.chat.headers import answered_by, passed_headers
from ingress.chat.recorder import CallRecorder
from ingress.chat.sniff import finish_reason_in, service_tier_in
from ingress.chat.sse import SSEFilter
from ingress.http.limits import hung_up

log = structlog.get_logger(__name__)


class UpstreamStream(Response):
    """Relays an SSE response event by event; records usage when it ends."""

    def __init__(
        self,
        answer: Answer,
        sse: SSEFilter,
        call: Call,
        recorder: CallRecorder,
        timing: tuple[float, float],
    ) -> None:
        upstream = answer.resp
        self.status_code = upstream.status_code
        self._timing = timing
        self._finish_reason: str | None = None
        self._service_tier: str | None = None
        self.background = None
        self.raw_headers = [
            (k, v) for k, v in passed_headers(upstream.headers.raw) if k != b"content-type"
        ]
        self.raw_headers.append((b"content-type", b"text/event-stream"))
        asked = answer.served if call.target.speaks_for(answer.served) else call.target.name
        self.raw_headers.extend(answered_by(asked, answer.served))
        self._answer = answer
        recorder.observed(call, answer)
        self._sse = sse
        self._call = call
        self._recorder = recorder

    def _note_finish(self, chunk: bytes) -> None:
        if b'"finish_reason"' in chunk:
            self._finish_reason = finish_reason_in(chunk) or self._finish_reason
        if b'"service_tier"' in chunk:
            self._service_tier = service_tier_in(chunk) or self._service_tier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Relay the stream until it ends or the client hangs up, whichever is first."""
        relay = asyncio.ensure_future(self._relay(send))
        watch = asyncio.ensure_future(hung_up(receive))
        try:
            await asyncio.wait((relay, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # cancelled ourselves (shutdown), or the client left: the relay ends now
            for task in (relay, watch):
                task.cancel()
            if watch.done() and not watch.cancelled() and not relay.done():
                log.info("stream_client_disconnected", request_id=self._call.request_id)
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _relay(self, send: Send) -> None:
        """Send the status, then each whole event as it arrives."""
        sse, answer = self._sse, self._answer
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            self._note_finish(answer.first)
            out = sse.feed(answer.first)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            assert answer.chunks is not None
            async for chunk in answer.chunks:
                self._note_finish(chunk)
                out = sse.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            await send({"type": "http.response.body", "body": sse.flush(), "more_body": False})
        except httpx2.HTTPError as exc:
            log.warning("upstream_stream_broken", request_id=self._call.request_id, error=repr(exc))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await answer.resp.aclose()
            call = self._call
            # a stream that ended without its usage chunk: one token per content event
            usage = sse.usage or {
                "prompt_tokens": call.prompt_tokens,
                "completion_tokens": sse.content_events,
            }
            # spilled: the PTU learnt its saturation at the first byte; the tokens are not its
            spent = None if answer.spilled else usage
            self._recorder.finished(answer.admitted, call, answer.used, spent)
            started, ttfb = self._timing
            self._recorder.ended(
                call, answer.served, self.status_code, started, ttfb, usage,
                self._finish_reason, self._service_tier,
            )  # fmt: skip
