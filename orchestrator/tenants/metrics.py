"""Per-tenant Prometheus counters, the same names at the ingress and the worker.

Label sets are bounded: `tenant` is one of the configured tenants (anything else
is counted as `other`), `deployment` one of the configured deployments (else
`other`), `priority` is `high` or `low`, and `status` one of `STATUSES`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter

from orchestrator.tenants.ledger import Usage

STATUSES = ("completed", "failed", "expired", "throttled", "rejected", "limited")
"""completed: answered 2xx; failed: 5xx, 408, timeout or given up; expired: deadline passed;
throttled: the deployment answered 429; rejected: another 4xx; limited: refused by the
tenant's own tokens-per-minute limit or quota. `calls.outcome.status_label` maps to them."""
OTHER = "other"
TOKEN_KINDS = ("prompt", "cached", "completion")
SERVICE_TIERS = ("auto", "default", "flex", "priority", "scale")
"""The `service_tier` values an answer may name (anything else is counted as `other`)."""


class TenantMetrics:
    """`ptu_tenant_tokens_total` and `ptu_tenant_requests_total` in a given registry."""

    def __init__(
        self, registry: CollectorRegistry, tenants: Iterable[str], deployments: Iterable[str]
    ) -> None:
        self._tenants = frozenset(tenants)
        self._deployments = frozenset(deployments)
        self.tokens = Counter(
            "ptu_tenant_tokens",
            "Tokens used, by tenant, deployment, priority and kind (prompt includes cached)",
            ["tenant", "deployment", "priority", "kind"],
            registry=registry,
        )
        self.requests = Counter(
            "ptu_tenant_requests",
            "Requests finished, by tenant, deployment, priority and status",
            ["tenant", "deployment", "priority", "status"],
            registry=registry,
        )
        self.tiers = Counter(
            "ptu_service_tier_requests",
            "Requests answered, by the service tier the deployment applied (when it says)",
            ["deployment", "priority", "service_tier"],
            registry=registry,
        )

    def label(self, tenant: str, deployment: str) -> tuple[str, str]:
        """The bounded (tenant, deployment) labels."""
        return (
            tenant if tenant in self._tenants else OTHER,
            deployment if deployment in self._deployments else OTHER,
        )

    def used(self, use: Usage) -> None:
        """Count the tokens of one call."""
        t, d = self.label(use.tenant, use.deployment)
        counts = (use.prompt_tokens, use.cached_tokens, use.completion_tokens)
        for kind, n in zip(TOKEN_KINDS, counts, strict=True):
            if n:
                self.tokens.labels(t, d, use.priority, kind).inc(n)

    def finished(self, tenant: str, deployment: str, priority: str, status: str) -> None:
        """Count one finished request."""
        t, d = self.label(tenant, deployment)
        self.requests.labels(t, d, priority, status if status in STATUSES else "failed").inc()

    def tiered(self, deployment: str, priority: str, tier: str | None) -> None:
        """Count one answer by the service tier applied (nothing when it names none)."""
        if tier is None:
            return
        _, d = self.label(OTHER, deployment)
        self.tiers.labels(d, priority, tier if tier in SERVICE_TIERS else OTHER).inc()
