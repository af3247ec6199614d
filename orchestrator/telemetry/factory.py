"""Which telemetry a process runs, from the standard `OTEL_*` variables (see `base`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator.core.errors import ConfigError, MissingDependencyError
from orchestrator.telemetry.base import OFF, Telemetry

if TYPE_CHECKING:
    from orchestrator.core.settings import Settings

log = structlog.get_logger(__name__)

_NO_EXPORTER = ("", "none")
_EXPORTERS = ("otlp", "console")


@dataclass(frozen=True, slots=True)
class Plan:
    """Which signals to export and how, decided from the standard variables alone."""

    traces: str | None = None
    """`otlp`, `console`, or None (no traces)."""
    metrics: str | None = None
    appinsights: bool = False

    @property
    def enabled(self) -> bool:
        """True when anything is exported."""
        return self.appinsights or self.traces is not None or self.metrics is not None


def _exporter(named: str | None, endpoints: tuple[str | None, ...], variable: str) -> str | None:
    if named is None:
        return "otlp" if any(endpoints) else None
    first = named.split(",")[0].strip().lower()
    if first in _NO_EXPORTER:
        return None
    if first not in _EXPORTERS:
        raise ConfigError(f"{variable}: {named!r} is not one of otlp, console, none")
    return first


def plan(settings: Settings) -> Plan:
    """What `settings` (its `OTEL_*` and Application Insights fields) ask to export."""
    if settings.otel_sdk_disabled:
        return Plan()
    if settings.applicationinsights_connection_string is not None:
        return Plan(appinsights=True)
    endpoint = settings.otel_exporter_otlp_endpoint
    return Plan(
        traces=_exporter(
            settings.otel_traces_exporter,
            (endpoint, settings.otel_exporter_otlp_traces_endpoint),
            "OTEL_TRACES_EXPORTER",
        ),
        metrics=_exporter(
            settings.otel_metrics_exporter,
            (endpoint, settings.otel_exporter_otlp_metrics_endpoint),
            "OTEL_METRICS_EXPORTER",
        ),
    )


def from_settings(settings: Settings, service: str) -> Telemetry:
    """The process's telemetry: `OFF`, the OTLP/console SDK, or Application Insights.

    Raises MissingDependencyError naming the extra when the packages are missing, and
    ConfigError for an exporter name it does not know.
    """
    chosen = plan(settings)
    if not chosen.enabled:
        return OFF
    system = "eventhubs" if settings.queue_backend == "eventhubs" else "redis"
    try:
        if chosen.appinsights:
            return _appinsights(settings, service, system)
        return _sdk(chosen, service, system)
    except ModuleNotFoundError as exc:
        extra = "appinsights" if chosen.appinsights else "otel"
        raise MissingDependencyError(exc.name or "opentelemetry-sdk", extra) from exc


def _resource(service: str) -> Any:
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win over the process's default name
    return Resource.create({"service.name": service}).merge(OTELResourceDetector().detect())


def _sdk(chosen: Plan, service: str, system: str) -> Telemetry:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    resource = _resource(service)
    provider = SdkTracerProvider(resource=resource)
    if chosen.traces is not None:
        exporter: SpanExporter
        if chosen.traces == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    meters = None
    if chosen.metrics is not None:
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            MetricExporter,
            PeriodicExportingMetricReader,
        )

        metric_exporter: MetricExporter
        if chosen.metrics == "console":
            metric_exporter = ConsoleMetricExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            metric_exporter = OTLPMetricExporter()
        reader = PeriodicExportingMetricReader(metric_exporter)
        meters = SdkMeterProvider(resource=resource, metric_readers=[reader])
    log.info("telemetry_enabled", traces=chosen.traces, metrics=chosen.metrics, service=service)
    from orchestrator.telemetry.otel import Tracing

    return Tracing(provider, meters, messaging_system=system)


def _appinsights(settings: Settings, service: str, system: str) -> Telemetry:
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry import metrics, trace

    secret = settings.applicationinsights_connection_string
    assert secret is not None
    # our spans only: no library auto-instrumentation (it would trace every Redis and
    # Event Hubs operation) and no live metrics
    off = {"enabled": False}
    configure_azure_monitor(
        connection_string=secret.get_secret_value(),
        resource=_resource(service),
        enable_live_metrics=False,
        instrumentation_options={
            name: off
            for name in (
                "azure_sdk", "django", "fastapi", "flask", "psycopg2", "requests", "urllib",
                "urllib3",
            )
        },
    )  # fmt: skip
    from orchestrator.telemetry.otel import Tracing

    log.info("telemetry_enabled", exporter="application_insights", service=service)
    return Tracing(
        trace.get_tracer_provider(), metrics.get_meter_provider(), messaging_system=system
    )
