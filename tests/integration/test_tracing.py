"""OpenTelemetry: one trace from the ingress through the queue to the worker's call.

The ingress (its own thread and event loop) and the worker (in-process, the test's
loop) each get their own tracer provider, as two processes would; both export to one
in-memory exporter, so the only link between their spans is the `traceparent` the
queued message carries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ingress.server import IngressThread
from orchestrator.core.settings import Settings, load_settings
from orchestrator.telemetry.otel import Tracing
from orchestrator.utilisation.static import StaticSource
from orchestrator.worker.loop import WorkerTiming
from orchestrator.worker.main import build_worker
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

DEP = "traced"
MESSAGES: Any = [{"role": "user", "content": "Trace this request end to end."}]
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs([f"{DEP}=gpt-4o-mini:15"], tbt_ms=0.0, ttft_ms=0.0)
    with SimulatorThread(config) as server:
        yield server


def _settings(redis_url: str, sim: SimulatorThread) -> Settings:
    return load_settings(
        redis_url=redis_url,
        redis_cluster=redis_mode.CLUSTER,
        azure_openai_endpoint=sim.url,
        azure_openai_api_key="k",
        deployments=[{"name": DEP, "model": "gpt-4o-mini", "ptus": 15}],
        estimate_window_s=10.0,
    )


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def ingress(
    redis_url: str, sim: SimulatorThread, exporter: InMemorySpanExporter
) -> Iterator[IngressThread]:
    tracing = Tracing.in_memory(exporter, "ptu-ingress")
    with IngressThread(_settings(redis_url, sim), tracing=tracing) as server:
        yield server
    tracing.shutdown()


def _of_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def _one(spans: list[ReadableSpan], kind: SpanKind, service: str) -> ReadableSpan:
    found = [
        s for s in spans if s.kind == kind and s.resource.attributes["service.name"] == service
    ]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def _parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_trace_spans_enqueue_to_the_workers_call(
    ingress: IngressThread,
    sim: SimulatorThread,
    redis_url: str,
    redis: aioredis.Redis,
    exporter: InMemorySpanExporter,
) -> None:
    exporter.clear()
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=30) as http:
        accepted = await http.post(
            "/v1/chat/completions",
            json={"model": DEP, "messages": MESSAGES, "max_tokens": 16},
            headers={"x-priority": "low", "traceparent": CLIENT_PARENT},
        )
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["id"]

        settings = _settings(redis_url, sim)
        worker_tracing = Tracing.in_memory(exporter, "ptu-worker")
        built = build_worker(
            settings,
            redis,
            settings.deployments,
            "w-traced",
            source=StaticSource({DEP: 0.0}),
            timing=WorkerTiming(receive_timeout_s=0.2, heartbeat_s=0.2, drain_timeout_s=2),
            tracing=worker_tracing,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(built.worker.run(stop))
        try:
            done = await http.get(f"/v1/requests/{request_id}", params={"wait": "20"})
        finally:
            stop.set()
            await task
            await built.close()
    assert done.status_code == 200 and done.json()["status"] == "completed", done.text

    trace_id = int(CLIENT_TRACE, 16)  # the client's own trace is continued
    spans = _of_trace(exporter, trace_id)
    server = _one(spans, SpanKind.SERVER, "ptu-ingress")
    producer = _one(spans, SpanKind.PRODUCER, "ptu-ingress")
    consumer = _one(spans, SpanKind.CONSUMER, "ptu-worker")
    call = _one(spans, SpanKind.CLIENT, "ptu-worker")
    assert server.name == "POST /v1/chat/completions"
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 202
    assert _parent_of(server) == int(CLIENT_PARENT.split("-")[2], 16)
    assert _parent_of(producer) == server.context.span_id
    assert _parent_of(consumer) == producer.context.span_id  # through the queued message
    assert _parent_of(call) == consumer.context.span_id

    assert producer.attributes is not None and consumer.attributes is not None
    assert producer.attributes["messaging.system"] == "redis"
    assert producer.attributes["messaging.message.id"] == request_id
    assert consumer.attributes["ptu.result"] == "completed"
    attrs = call.attributes
    assert attrs is not None
    assert call.name == f"chat {DEP}"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "azure.ai.openai"
    assert attrs["gen_ai.request.model"] == DEP
    assert attrs["gen_ai.request.max_tokens"] == 16
    usage = done.json()["usage"]
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 0
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == (
        done.json()["response"]["choices"][0]["finish_reason"],
    )
    assert attrs["ptu.priority"] == "low" and attrs["ptu.request_id"] == request_id
    assert server.start_time is not None and call.end_time is not None
    assert server.start_time <= call.start_time and call.end_time <= consumer.end_time  # type: ignore[operator]


def test_high_priority_call_is_a_genai_span_under_the_request(
    ingress: IngressThread, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(model=DEP, messages=MESSAGES, max_tokens=12)
    chunks = list(
        client.chat.completions.create(model=DEP, messages=MESSAGES, max_tokens=12, stream=True)
    )
    assert completion.usage is not None and chunks
    deadline = time.monotonic() + 5  # a stream's spans end after its last byte is sent
    while len(exporter.get_finished_spans()) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    calls = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert len(servers) == 2 and len(calls) == 2, [(s.name, s.kind) for s in spans]
    for server, call in zip(servers, calls, strict=True):
        assert call.context.trace_id == server.context.trace_id
        assert _parent_of(call) == server.context.span_id
        assert call.attributes is not None
        assert call.attributes["gen_ai.request.model"] == DEP
        assert call.attributes["ptu.priority"] == "high"
        assert call.attributes["gen_ai.usage.output_tokens"] > 0
        assert call.attributes["gen_ai.response.finish_reasons"] in (("stop",), ("length",))
    plain = calls[0].attributes
    assert plain is not None
    assert plain["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert plain["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens


def test_probes_are_not_traced(ingress: IngressThread, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    assert httpx2.get(ingress.url + "/healthz").status_code == 200
    assert httpx2.get(ingress.url + "/metrics").status_code == 200
    assert exporter.get_finished_spans() == ()


def test_a_responses_api_call_is_traced_with_its_usage(
    ingress: IngressThread, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    response = client.responses.create(model=DEP, input="Trace a response.", max_output_tokens=16)
    assert response.usage is not None
    (call,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert call.attributes is not None
    assert call.attributes["gen_ai.usage.input_tokens"] == response.usage.input_tokens
    assert call.attributes["gen_ai.usage.output_tokens"] == response.usage.output_tokens
