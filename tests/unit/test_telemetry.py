"""Which telemetry the standard variables select, and what the off path costs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.core.errors import ConfigError
from orchestrator.core.schemas import QueuedRequest
from orchestrator.core.settings import load_settings
from orchestrator.telemetry import factory
from orchestrator.telemetry.base import NOOP_CALL, OFF
from orchestrator.telemetry.factory import Plan, plan

ENDPOINT = "http://127.0.0.1:4318"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Plan()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, Plan("otlp", "otlp")),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT}, Plan("otlp", None)),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": ENDPOINT}, Plan(None, "otlp")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_METRICS_EXPORTER": "none"},
         Plan("otlp", None)),
        ({"OTEL_TRACES_EXPORTER": "console"}, Plan("console", None)),
        ({"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_METRICS_EXPORTER": "otlp"},
         Plan("otlp", "otlp")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "true"}, Plan()),
        ({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=0"},
         Plan(appinsights=True)),
    ],
)  # fmt: skip
def test_plan_from_standard_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: Plan
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    chosen = plan(load_settings())
    assert chosen == expected
    assert chosen.enabled == (expected != Plan())


def test_unknown_exporter_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    with pytest.raises(ConfigError, match=r"^OTEL_TRACES_EXPORTER: 'jaeger'"):
        factory.from_settings(load_settings(), "ptu-ingress")


def test_invalid_standard_variable_is_named_without_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "maybe")
    with pytest.raises(ConfigError, match=r"^OTEL_SDK_DISABLED: "):
        load_settings()


def test_default_is_off_and_its_objects_are_shared() -> None:
    tracing = factory.from_settings(load_settings(), "ptu-worker")
    assert tracing is OFF and not tracing.enabled
    call = tracing.llm_call("d", request_id="r", priority="low", tenant="t")
    assert call is NOOP_CALL
    call.end(200, usage={"prompt_tokens": 1})
    message = QueuedRequest(
        id="r", deployment="d", body={}, reply_key="k", enqueued_at=0.0, deadline=1.0
    )
    with tracing.producing(message):
        pass
    assert message.traceparent is None
    assert "traceparent" not in message.model_dump_json()


def test_otlp_provider_is_built_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ptu-ingress-eu")
    tracing = factory.from_settings(load_settings(), "ptu-ingress")
    try:
        assert tracing.enabled
        resource = tracing._provider.resource  # type: ignore[attr-defined]
        assert resource.attributes["service.name"] == "ptu-ingress-eu"  # the variable wins
        assert repr(tracing) == "<Tracing system=redis metrics=True>"
    finally:
        tracing.shutdown()


def test_application_insights_through_the_distro(tmp_path: Path) -> None:
    # a subprocess: the distro installs global providers, which must not leak into the suite
    script = (
        "from orchestrator.core.settings import load_settings\n"
        "from orchestrator.telemetry import factory\n"
        "t = factory.from_settings(load_settings(), 'ptu-worker')\n"
        "assert t.enabled, t\n"
        "call = t.llm_call('d', request_id='r', priority='low', tenant='t', max_tokens=5)\n"
        "call.end(200, usage={'prompt_tokens': 3, 'completion_tokens': 2}, finish_reason='stop')\n"
        "t.shutdown()\n"
        "print('done', repr(t))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PTU_", "OTEL_"))}
    env["TMPDIR"] = str(tmp_path)  # the distro's offline retry storage
    env["APPLICATIONINSIGHTS_CONNECTION_STRING"] = (
        "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
        "IngestionEndpoint=http://127.0.0.1:9/"  # discard port: nothing leaves the machine
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "done <Tracing system=redis metrics=True>" in done.stdout
    assert "exporter=application_insights" in done.stdout + done.stderr


def test_genai_calls_record_duration_and_token_usage_metrics() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from orchestrator.telemetry.otel import Tracing

    reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing = Tracing(provider, MeterProvider(metric_readers=[reader]))
    ok = tracing.llm_call("ptu", request_id="r1", priority="low", tenant="t", max_tokens=9)
    ok.end(200, usage={"prompt_tokens": 30, "completion_tokens": 7}, finish_reason="stop")
    ok.end(500)  # a second end changes nothing
    failed = tracing.llm_call("ptu", request_id="r2", priority="high", tenant="t")
    failed.end(429)
    data = reader.get_metrics_data()
    assert data is not None
    metrics = {
        m.name: m.data.data_points
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    tokens = {
        p.attributes["gen_ai.token.type"]: p.sum for p in metrics["gen_ai.client.token.usage"]
    }
    assert tokens == {"input": 30, "output": 7}
    durations = metrics["gen_ai.client.operation.duration"]
    assert sorted(p.count for p in durations) == [1, 1]  # one ok, one with error.type
    assert {p.attributes.get("error.type") for p in durations} == {None, "429"}
    first, second = spans.get_finished_spans()
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["gen_ai.usage.input_tokens"] == 30
    assert first.attributes["http.response.status_code"] == 200
    assert second.attributes["error.type"] == "429" and not second.status.is_ok
    tracing.shutdown()


def test_log_lines_of_a_traced_request_carry_its_trace_id() -> None:
    import structlog
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from orchestrator.telemetry.otel import Tracing

    tracing = Tracing.in_memory(InMemorySpanExporter(), "ptu-worker")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    message = QueuedRequest(
        id="r", deployment="d", body={}, reply_key="k", enqueued_at=0.0, deadline=1.0,
        traceparent=f"00-{trace_id}-00f067aa0ba902b7-01",
    )  # fmt: skip
    with tracing.consuming(message, 1):
        assert structlog.contextvars.get_contextvars()["trace_id"] == trace_id
    assert "trace_id" not in structlog.contextvars.get_contextvars()
    with tracing.server("POST", "/v1/chat/completions", {"traceparent": message.traceparent}):
        assert structlog.contextvars.get_contextvars()["trace_id"] == trace_id
    tracing.shutdown()
