"""`Tracing`: the `Telemetry` contract on OpenTelemetry providers (SDK or Application Insights).

Imported only once an exporter is configured (see `factory`), or by tests that export
to memory; the spans and attributes it makes are described in `base`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace
from opentelemetry.metrics import Histogram, MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from orchestrator.core.tokens import usage_counts
from orchestrator.telemetry.base import (
    INSTRUMENTATION,
    OPERATION,
    PROVIDER,
    LLMCall,
    ServerSpan,
    Telemetry,
)

if TYPE_CHECKING:
    from orchestrator.core.schemas import QueuedRequest


class _Call(LLMCall):
    __slots__ = ("_attributes", "_histograms", "_span", "_started")

    def __init__(
        self,
        span: Span,
        attributes: dict[str, Any],
        histograms: tuple[Histogram, Histogram] | None,
    ) -> None:
        self._span: Span | None = span
        self._attributes = attributes
        self._histograms = histograms
        self._started = time.perf_counter()

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
        """See `LLMCall.end`; a second call does nothing."""
        span, self._span = self._span, None
        if span is None:
            return

        prompt, completion, _ = usage_counts(dict(usage) if usage is not None else None)
        attrs: dict[str, Any] = {}
        if status_code:
            attrs["http.response.status_code"] = status_code
        if usage is not None:
            attrs["gen_ai.usage.input_tokens"] = prompt
            attrs["gen_ai.usage.output_tokens"] = completion
        if finish_reason:
            attrs["gen_ai.response.finish_reasons"] = (finish_reason,)
        if response_model:
            attrs["gen_ai.response.model"] = response_model
        if response_id:
            attrs["gen_ai.response.id"] = response_id
        failed = error is not None or status_code is None or status_code >= 400
        if failed:
            attrs["error.type"] = error or str(status_code or "no_response")
            span.set_status(StatusCode.ERROR)
        span.set_attributes(attrs)
        span.end()
        if self._histograms is not None:
            duration, tokens = self._histograms
            common = dict(self._attributes)
            if failed:
                common["error.type"] = attrs["error.type"]
            duration.record(time.perf_counter() - self._started, common)
            if usage is not None:
                tokens.record(prompt, {**self._attributes, "gen_ai.token.type": "input"})
                tokens.record(completion, {**self._attributes, "gen_ai.token.type": "output"})


class _Server(ServerSpan):
    __slots__ = ("_method", "_span")

    def __init__(self, span: Span, method: str) -> None:
        self._span = span
        self._method = method

    def response(self, status_code: int) -> None:
        """See `ServerSpan.response`; 5xx marks the span as an error."""

        self._span.set_attribute("http.response.status_code", status_code)
        if status_code >= 500:
            self._span.set_status(StatusCode.ERROR)
            self._span.set_attribute("error.type", str(status_code))

    def route(self, template: str) -> None:
        """See `ServerSpan.route`."""
        self._span.set_attribute("http.route", template)
        self._span.update_name(f"{self._method} {template}")


class Tracing(Telemetry):
    """Telemetry through OpenTelemetry providers (the SDK's or Application Insights')."""

    enabled = True

    def __init__(
        self,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider | None = None,
        *,
        messaging_system: str = "redis",
        owned: bool = True,
    ) -> None:

        self._provider = tracer_provider
        self._meters = meter_provider
        self._owned = owned
        self._tracer: Tracer = tracer_provider.get_tracer(INSTRUMENTATION)
        self._w3c = TraceContextTextMapPropagator()
        self._system = messaging_system
        self._histograms: tuple[Histogram, Histogram] | None = None
        if meter_provider is not None:
            meter = meter_provider.get_meter(INSTRUMENTATION)
            self._histograms = (
                meter.create_histogram(
                    "gen_ai.client.operation.duration", unit="s", description="GenAI call duration"
                ),
                meter.create_histogram(
                    "gen_ai.client.token.usage", unit="{token}", description="tokens per call"
                ),
            )

    @classmethod
    def in_memory(
        cls, exporter: SpanExporter, service: str, *, messaging_system: str = "redis"
    ) -> Tracing:
        """Spans exported synchronously to `exporter` (tests: `InMemorySpanExporter`)."""

        provider = SdkTracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return cls(provider, messaging_system=messaging_system)

    @contextlib.contextmanager
    def server(self, method: str, path: str, headers: Mapping[str, str]) -> Iterator[ServerSpan]:
        """See `Telemetry.server`; its log lines carry the trace id."""
        parent = self._w3c.extract(headers)
        with self._tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        ) as span:
            with _logged(span):
                yield _Server(span, method)

    @contextlib.contextmanager
    def producing(self, request: QueuedRequest) -> Iterator[None]:
        """See `Telemetry.producing`."""
        attributes = self._messaging(request, "send")
        with self._tracer.start_as_current_span(
            f"send {request.deployment}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            self._w3c.inject(carrier)
            request.traceparent = carrier.get("traceparent")
            yield

    @contextlib.contextmanager
    def consuming(self, request: QueuedRequest, delivery_count: int) -> Iterator[None]:
        """See `Telemetry.consuming`; a message without a `traceparent` starts a new trace.

        The worker's log lines of the request carry the trace id, as the ingress's do.
        """
        carrier = {"traceparent": request.traceparent} if request.traceparent else {}
        attributes = self._messaging(request, "process")
        attributes["messaging.message.delivery_count"] = delivery_count
        attributes["ptu.queued_s"] = round(max(0.0, time.time() - request.enqueued_at), 3)
        with self._tracer.start_as_current_span(
            f"process {request.deployment}",
            context=self._w3c.extract(carrier),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            with _logged(span):
                yield

    def outcome(self, status: str, status_code: int | None) -> None:
        """See `Telemetry.outcome`."""

        span = trace.get_current_span()
        span.set_attribute("ptu.result", status)
        if status_code is not None:
            span.set_attribute("http.response.status_code", status_code)

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
        """See `Telemetry.llm_call`."""

        common = {
            "gen_ai.operation.name": OPERATION,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.system": PROVIDER,
            "gen_ai.request.model": deployment,
        }
        attributes: dict[str, Any] = {
            **common,
            "ptu.deployment": deployment,
            "ptu.priority": priority,
            "ptu.tenant": tenant,
            "ptu.request_id": request_id,
        }
        if max_tokens:
            attributes["gen_ai.request.max_tokens"] = max_tokens
        if server:
            attributes["server.address"] = server
        span = self._tracer.start_span(
            f"{OPERATION} {deployment}", kind=SpanKind.CLIENT, attributes=attributes
        )
        return _Call(span, common, self._histograms)

    def shutdown(self) -> None:
        """See `Telemetry.shutdown`; providers given by the caller are left running."""
        if not self._owned:
            return
        for provider in (self._provider, self._meters):
            stop = getattr(provider, "shutdown", None)
            if stop is not None:
                stop()

    def _messaging(self, request: QueuedRequest, operation: str) -> dict[str, Any]:
        return {
            "messaging.system": self._system,
            "messaging.operation.type": operation,
            "messaging.destination.name": request.deployment,
            "messaging.message.id": request.id,
            "ptu.deployment": request.deployment,
            "ptu.tenant": request.tenant,
            "ptu.request_id": request.id,
            "ptu.priority": "low",
            **({"ptu.batch_id": request.batch_id} if request.batch_id else {}),
        }

    def __repr__(self) -> str:
        return f"<Tracing system={self._system} metrics={self._histograms is not None}>"


def _logged(span: Span) -> contextlib.AbstractContextManager[None]:
    """Bind the span's trace id into structlog's context (log lines join their trace)."""
    context = span.get_span_context()
    return structlog.contextvars.bound_contextvars(
        trace_id=format(context.trace_id, "032x"), span_id=format(context.span_id, "016x")
    )
