"""OpenTelemetry traces and GenAI metrics: one trace per request, off unless configured.

A queued request crosses processes and waits in a queue, so its trace is carried in
the message itself: the ingress's producer span writes its W3C `traceparent` into the
`QueuedRequest`, and the worker's consumer span continues that trace, so one trace runs
from the client's HTTP request through the queue to the worker's call to the
deployment. High-priority calls get the same GenAI client span inside the ingress.

Spans follow the OpenTelemetry semantic conventions: HTTP server spans, messaging
producer/consumer spans (`messaging.system` is the queue backend), and GenAI client
spans (`gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model` (the
deployment the request names), `gen_ai.usage.*_tokens`, `gen_ai.response.finish_reasons`)
plus the GenAI client metrics `gen_ai.client.operation.duration` and
`gen_ai.client.token.usage`.

Configuration is the SDK's own `OTEL_*` variables (endpoint, headers, protocol
details, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, sampler). Tracing is on when
`OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or, without it, when an
OTLP endpoint is set; metrics likewise with `OTEL_METRICS_EXPORTER`;
`APPLICATIONINSIGHTS_CONNECTION_STRING` sends both to Application Insights through the
`appinsights` extra. Otherwise `OFF` is used: its methods return shared no-op objects
and nothing of OpenTelemetry is imported, so a default run pays one method call per
request and nothing more.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.core.schemas import QueuedRequest

PROVIDER = "azure.ai.openai"
"""`gen_ai.provider.name` (and the older `gen_ai.system`) of every call: Azure OpenAI."""
OPERATION = "chat"
"""`gen_ai.operation.name` of chat completions and Responses API calls alike."""
INSTRUMENTATION = "ptu-orchestrator"


class LLMCall:
    """One call to a deployment, ended once with its outcome (this base does nothing)."""

    __slots__ = ()

    def end(
        self,
        status_code: int | None,
        *,
        usage: Mapping[str, Any] | None = None,
        finish_reason: str | None = None,
        response_model: str | None = None,
        response_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record the outcome (status, token usage, finish reason) and end the span."""


class ServerSpan:
    """The span of one HTTP request to the ingress (this base does nothing)."""

    __slots__ = ()

    def response(self, status_code: int) -> None:
        """The status the ingress answered."""

    def route(self, template: str) -> None:
        """The route template that matched (names the span)."""


NOOP_CALL = LLMCall()
NOOP_SERVER = ServerSpan()
_NULL_SERVER: AbstractContextManager[ServerSpan] = contextlib.nullcontext(NOOP_SERVER)
_NULL: AbstractContextManager[None] = contextlib.nullcontext()


class Telemetry:
    """Tracing off: every method is a no-op that returns a shared object (see `OFF`)."""

    enabled = False

    def server(
        self, method: str, path: str, headers: Mapping[str, str]
    ) -> AbstractContextManager[ServerSpan]:
        """An HTTP server span continuing the client's `traceparent`, if any."""
        return _NULL_SERVER

    def producing(self, request: QueuedRequest) -> AbstractContextManager[None]:
        """A producer span around enqueueing `request`; writes its `traceparent` into it."""
        return _NULL

    def consuming(
        self, request: QueuedRequest, delivery_count: int
    ) -> AbstractContextManager[None]:
        """A consumer span, continuing the request's trace, around handling one delivery."""
        return _NULL

    def outcome(self, status: str, status_code: int | None) -> None:
        """Note a request's result on the current span."""

    def llm_call(
        self,
        deployment: str,
        *,
        request_id: str,
        priority: str,
        tenant: str,
        max_tokens: int | None = None,
        server: str | None = None,
    ) -> LLMCall:
        """Start the GenAI client span of one call to `deployment` (a child of the current)."""
        return NOOP_CALL

    def shutdown(self) -> None:
        """Flush and stop the exporters this object started."""


OFF = Telemetry()
"""The telemetry of a process with no exporter configured."""
