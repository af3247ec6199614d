"""Prometheus metrics of one ingress app, in its own registry (served at /metrics)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

from orchestrator.breaker.machine import GAUGE
from orchestrator.tenants.metrics import TenantMetrics

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class IngressMetrics:
    """Counters the handlers bump; children are cached so the hot path does one `inc`."""

    content_type = CONTENT_TYPE_PLAIN_0_0_4

    def __init__(
        self,
        *,
        tenants: Iterable[str] = ("default",),
        deployments: Iterable[str] = (),
        shared: str | None = None,
    ) -> None:
        self.shared = shared
        """The directory every process of `ptu ingress --workers N` writes its values to
        (prometheus_client's multiprocess mode); /metrics then answers their sum."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.tenants = TenantMetrics(r, tenants, deployments)
        self.latency = Histogram(
            "ptu_ingress_high_latency_seconds",
            "High-priority calls: time to first byte (phase=ttfb) and to the last (phase=total)",
            ["deployment", "phase"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._deployments = frozenset(deployments)
        self._requests = Counter(
            "ptu_ingress_chat_requests", "Chat completions received", ["priority"], registry=r
        )
        self._errors = Counter(
            "ptu_ingress_errors", "Requests answered with an error", ["code"], registry=r
        )
        self._throttled = Counter(
            "ptu_ingress_ptu_throttled", "429s from a PTU deployment", ["deployment"], registry=r
        )
        self._spillover = Counter(
            "ptu_ingress_spillover",
            "High-priority calls spilled over: moved along our chain (kind=chain, by reason), or"
            " served by Azure's native spillover (kind=native)",
            ["deployment", "to", "reason", "kind"],
            registry=r,
        )
        self._enqueued = Counter(
            "ptu_ingress_enqueued", "Requests put on the queue", ["deployment"], registry=r
        )
        self._enqueue_failed = Counter(
            "ptu_ingress_enqueue_failed", "Enqueues refused (queue unavailable)", ["deployment"],
            registry=r,
        )  # fmt: skip
        self._circuit = Gauge(
            "ptu_ingress_circuit_state",
            "Circuit breaker per upstream deployment: 0 closed, 1 half-open, 2 open",
            ["deployment"],
            registry=r,
            multiprocess_mode="max",  # several processes of one port: the most open
        )
        self._batches = Counter("ptu_ingress_batches", "Batches created", registry=r)
        self.redis_data_lost = Counter(
            "ptu_redis_data_lost", "Times Redis was seen to have lost its data set", registry=r
        )
        self.requests_lost = Counter(
            "ptu_requests_lost",
            "Accepted requests Redis lost, answered 410 request_lost: found=poll (no record "
            "when polled) | reconciler (no queue entry)",
            ["found"],
            registry=r,
        )
        self.replication_shortfall = Counter(
            "ptu_redis_replication_shortfall",
            "Writes a replica did not confirm in PTU_REDIS_WAIT_TIMEOUT_MS (answered 503)",
            registry=r,
        )
        self._fail_open = Counter(
            "ptu_ingress_redis_fail_open",
            "Redis calls of the interactive path given up on (an error, the deadline or the"
            " cool-down after one): what=breaker_sync|breaker_probe|breaker_trip|breaker_close|"
            "limits|token_event",
            ["what"],
            registry=r,
        )
        self._deadline = Gauge(
            "ptu_batch_deadline",
            "Per batch with a deadline being planned (removed when it ends): what=seconds_left|"
            "ptu_tokens_forecast|ptu_tokens_sigma|remaining_tokens|overflow_lines",
            ["batch_id", "what"],
            registry=r,
        )
        self._high = self._requests.labels("high")
        self._low = self._requests.labels("low")

    def request(self, priority: str) -> None:
        """One chat completion received with `priority`."""
        (self._high if priority == "high" else self._low).inc()

    def redis_fail_open(self, what: str) -> None:
        """One Redis call of the interactive path went on without Redis (`core/fail_open`)."""
        self._fail_open.labels(what).inc()

    def error(self, code: str) -> None:
        """One error answer."""
        self._errors.labels(code).inc()

    def throttled(self, deployment: str) -> None:
        """The PTU deployment answered 429."""
        self._throttled.labels(deployment).inc()

    def spillover(self, deployment: str, to: str, reason: str, kind: str) -> None:
        """A call moved from `deployment` to `to` (429, 408, 5xx, auth, timeout, ...; `kind`
        `chain`), or Azure served it from `to` (`kind` `native`)."""
        self._spillover.labels(deployment, to, reason, kind).inc()

    def circuit(self, deployment: str, state: str) -> None:
        """A breaker changed state (0 closed, 1 half-open, 2 open)."""
        self._circuit.labels(deployment).set(GAUGE[state])

    def enqueued(self, deployment: str, count: int = 1) -> None:
        """Requests put on a deployment's queue."""
        self._enqueued.labels(deployment).inc(count)

    def enqueue_failed(self, deployment: str) -> None:
        """An enqueue the queue refused."""
        self._enqueue_failed.labels(deployment).inc()

    def batch_created(self) -> None:
        """One batch created."""
        self._batches.inc()

    def batch_plan(self, batch_id: str, values: dict[str, float] | None) -> None:
        """Show a batch's deadline plan (`values` by `what`), or forget it (None)."""
        for what in ("seconds_left", "ptu_tokens_forecast", "ptu_tokens_sigma",
                     "remaining_tokens", "overflow_lines"):  # fmt: skip
            if values is None:
                with contextlib.suppress(KeyError):
                    self._deadline.remove(batch_id, what)
            elif what in values:
                self._deadline.labels(batch_id, what).set(values[what])

    def high_latency(self, deployment: str, ttfb_s: float, total_s: float) -> None:
        """Observe one high-priority call's time to first byte and total time."""
        label = deployment if deployment in self._deployments else "other"
        self.latency.labels(label, "ttfb").observe(ttfb_s)
        self.latency.labels(label, "total").observe(total_s)

    def render(self) -> bytes:
        """The Prometheus text exposition (of every process of the port, when shared)."""
        if self.shared is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.shared)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def __repr__(self) -> str:
        return (
            f"<IngressMetrics high={self._high._value.get():.0f} low={self._low._value.get():.0f}>"
        )
