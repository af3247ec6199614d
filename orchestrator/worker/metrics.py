"""Prometheus metrics of the worker, in a registry of their own (no module globals)."""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from orchestrator.breaker.machine import GAUGE
from orchestrator.core.operator_key import OperatorKey
from orchestrator.tenants.metrics import TenantMetrics
from orchestrator.utilisation.base import Reading
from orchestrator.utilisation.estimate.hypotheses import header_delay_s
from orchestrator.worker.health import Health
from orchestrator.worker.health import serve as serve_with_probes

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_LAG_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14_400, 86_400)


class WorkerMetrics:
    """The worker's gauges, counters and histograms, labelled by deployment."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        tenants: Iterable[str] = ("default",),
        deployments: Iterable[str] = (),
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._server: WSGIServer | None = None
        r = self.registry
        self.tenants = TenantMetrics(r, tenants, deployments)
        self.utilisation = Gauge(
            "ptu_worker_utilisation_ratio",
            "Last utilisation reading (1 = 100 %)",
            ["deployment"],
            registry=r,
        )
        self.utilisation_age = Gauge(
            "ptu_worker_utilisation_age_seconds",
            "Age of the last reading",
            ["deployment"],
            registry=r,
        )
        self.pool_member = Gauge(
            "ptu_pool_member_info",
            "1 for each member of a PTU pool (join on deployment to group by pool)",
            ["pool", "deployment"],
            registry=r,
        )
        self.model = Gauge(
            "ptu_worker_utilisation_model_ratio",
            "The estimate's open-loop token-event model, before calibration",
            ["deployment"],
            registry=r,
        )
        self.observed = Gauge(
            "ptu_worker_utilisation_observed_ratio",
            "The newest utilisation the deployment reported (azure-openai-deployment-utilization)",
            ["deployment"],
            registry=r,
        )
        self.correction = Gauge(
            "ptu_worker_utilisation_correction_ratio",
            "What calibration adds to the model (negative: the model over-estimates)",
            ["deployment"],
            registry=r,
        )
        self.correction_age = Gauge(
            "ptu_worker_utilisation_correction_age_seconds",
            "Age of the newest deployment signal behind the correction",
            ["deployment"],
            registry=r,
        )
        self.unseen = Gauge(
            "ptu_worker_unseen_traffic_ratio",
            "Share of capacity used by load the model cannot see (other callers, capacity)",
            ["deployment"],
            registry=r,
        )
        self.uncertainty = Gauge(
            "ptu_worker_utilisation_uncertainty_ratio",
            "The estimate filter's own uncertainty about the header's reading (std. deviation)",
            ["deployment"],
            registry=r,
        )
        self.header_delay = Gauge(
            "ptu_worker_utilisation_header_delay_seconds",
            "The delay (or averaging time) of the utilisation header, as learnt",
            ["deployment"],
            registry=r,
        )
        self.lower_threshold = Gauge(
            "ptu_worker_lower_threshold_ratio",
            "Utilisation at or below which low priority runs at full concurrency",
            ["deployment"],
            registry=r,
        )
        self.upper_threshold = Gauge(
            "ptu_worker_upper_threshold_ratio",
            "Utilisation at or above which low priority is paused",
            ["deployment"],
            registry=r,
        )
        self.limit = Gauge(
            "ptu_worker_concurrency_limit",
            "Global low-priority concurrency the policy allows",
            ["deployment"],
            registry=r,
        )
        self.in_flight = Gauge(
            "ptu_worker_in_flight",
            "Low-priority calls this worker has in flight",
            ["deployment"],
            registry=r,
        )
        self.global_in_flight = Gauge(
            "ptu_worker_global_in_flight",
            "Low-priority slots leased by all workers",
            ["deployment"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "ptu_worker_queue_depth", "Messages waiting or in flight", ["deployment"], registry=r
        )
        self.class_depth = Gauge(
            "ptu_worker_queue_class_depth",
            "Messages waiting or in flight, by queued class (low before batch)",
            ["deployment", "class"],
            registry=r,
        )
        self.redis_data_lost = Counter(
            "ptu_redis_data_lost", "Times Redis was seen to have lost its data set", registry=r
        )
        self.results = Counter(
            "ptu_worker_results", "Results written, by status", ["deployment", "status"], registry=r
        )
        self.calls = Counter(
            "ptu_worker_upstream_calls",
            "Upstream attempts, by HTTP status",
            ["deployment", "status_code"],
            registry=r,
        )
        self.sized_calls = Counter(
            "ptu_worker_sized_calls",
            "Queued calls sent with a learnt output limit (outcome fit), or cut short by it and"
            " run again with the caller's (outcome rerun)",
            ["deployment", "outcome"],
            registry=r,
        )
        self.spilled = Counter(
            "ptu_worker_spilled",
            "Low-priority calls Azure spilled to a standard deployment (pay-as-you-go price)",
            ["deployment", "to", "tenant"],
            registry=r,
        )
        self.tokens = Counter(
            "ptu_worker_tokens",
            "Tokens used by completed calls",
            ["deployment", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "ptu_worker_upstream_latency_seconds",
            "Duration of upstream attempts",
            ["deployment"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_lag = Histogram(
            "ptu_worker_queue_lag_seconds",
            "Time from enqueue to first receive, by queued class (low, batch)",
            ["deployment", "class"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )

        self.circuit_state = Gauge(
            "ptu_worker_circuit_state",
            "Circuit breaker of the deployment: 0 closed, 1 half-open, 2 open",
            ["deployment"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "ptu_worker_dead_letters",
            "Requests in the deployment's dead-letter store",
            ["deployment"],
            registry=r,
        )

    def thresholds(self, deployment: str, lower: float, upper: float) -> None:
        """The deployment's throttle thresholds (dashboards draw utilisation against them)."""
        self.lower_threshold.labels(deployment).set(lower)
        self.upper_threshold.labels(deployment).set(upper)

    def member(self, pool: str, deployment: str) -> None:
        """`deployment` is a member of `pool` (its queue depth is the pool's)."""
        self.pool_member.labels(pool, deployment).set(1)

    def circuit(self, deployment: str, state: str) -> None:
        """The deployment's breaker changed state."""
        self.circuit_state.labels(deployment).set(GAUGE.get(state, 0))

    def observe_throttle(
        self, deployment: str, limit: int, in_flight: int, reading: Reading | None, now: float
    ) -> None:
        """Record the throttle's current state."""
        self.limit.labels(deployment).set(limit)
        self.in_flight.labels(deployment).set(in_flight)
        if reading is not None:
            self.utilisation.labels(deployment).set(reading.value)
            self.utilisation_age.labels(deployment).set(reading.age(now))
            cal = reading.calibration
            if cal is not None:
                self.model.labels(deployment).set(cal.model)
                self.correction.labels(deployment).set(cal.correction)
                self.unseen.labels(deployment).set(cal.unseen)
                if cal.observed is not None:
                    self.observed.labels(deployment).set(cal.observed)
                if cal.correction_age_s is not None:
                    self.correction_age.labels(deployment).set(cal.correction_age_s)
                if cal.uncertainty is not None:
                    self.uncertainty.labels(deployment).set(cal.uncertainty)
                if (delay := header_delay_s(cal.model_kind)) is not None:
                    self.header_delay.labels(deployment).set(delay)

    def call(self, deployment: str, status_code: int, latency_s: float) -> None:
        """Count one upstream attempt and its duration."""
        self.calls.labels(deployment, str(status_code)).inc()
        self.latency.labels(deployment).observe(latency_s)

    def result(self, deployment: str, status: str) -> None:
        """Count one result written."""
        self.results.labels(deployment, status).inc()

    def usage(self, deployment: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count the tokens of a completed call."""
        self.tokens.labels(deployment, "prompt").inc(prompt_tokens)
        self.tokens.labels(deployment, "completion").inc(completion_tokens)

    def spilled_call(self, deployment: str, to: str, tenant: str) -> None:
        """Count one low-priority call served by the standard deployment `to`."""
        t, d = self.tenants.label(tenant, to)
        self.spilled.labels(deployment, d, t).inc()

    def lag(self, deployment: str, seconds: float, work_class: str = "low") -> None:
        """Record how long a message of a queued class waited in the queue."""
        self.queue_lag.labels(deployment, work_class).observe(max(0.0, seconds))

    def serve(
        self,
        port: int,
        addr: str = "0.0.0.0",
        health: Health | None = None,
        key: OperatorKey | None = None,
    ) -> int:
        """Serve `/metrics` (behind `key` when it requires one; with `health` the probes
        `/healthz`, `/readyz`, always open) from a daemon thread; returns the bound port (0
        picks one)."""
        if health is not None or (key is not None and key.required):
            self._server, _thread = serve_with_probes(self.registry, health, port, addr, key=key)
        else:
            self._server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving, if `serve` was called."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __repr__(self) -> str:
        return f"<WorkerMetrics collectors={len(list(self.registry.collect()))}>"
