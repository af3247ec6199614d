"""Typed views of `Settings`, one per concern: what a component is built from.

The flat `PTU_*` names are a contract (DESIGN.md §5) and stay the fields of `Settings`;
a component takes the view of its concern (`settings.redis`, `settings.queue`,
`settings.throttle`, `settings.eventhubs`, `settings.checkpoints`) instead of the whole
settings or a dozen loose arguments. A view is a frozen value: tests build one directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

from orchestrator.core.deployments import DeploymentConfig


@dataclass(frozen=True, slots=True)
class RedisView:
    """Where the state lives: `PTU_REDIS_URL`, `PTU_REDIS_CLUSTER`, `PTU_REDIS_AUTH`."""

    url: str = "redis://localhost:6379/0"
    cluster: bool = False
    auth: Literal["key", "entra"] = "key"


@dataclass(frozen=True, slots=True)
class QueueView:
    """The queue backend: `PTU_QUEUE_BACKEND`, `PTU_QUEUE_CLAIM_IDLE_S`, `PTU_QUEUE_LIVENESS_S`."""

    backend: Literal["redis", "eventhubs"] = "redis"
    claim_idle_s: float = 60.0
    liveness_s: float = 5.0

    @property
    def sweep_s(self) -> float:
        """How often the fair-share layer looks for tenants that lost their flag."""
        return max(0.5, min(5.0, self.claim_idle_s / 2))


@dataclass(frozen=True, slots=True)
class ThrottleView:
    """The global throttle: the curve's defaults (`PTU_LOWER_THRESHOLD`, `PTU_UPPER_THRESHOLD`,
    `PTU_MAX_CONCURRENCY`) and `PTU_SLOT_LEASE_S`."""

    lower: float = 0.20
    upper: float = 0.90
    max_concurrency: int = 10
    slot_lease_s: float = 2.0

    def curve(self, d: DeploymentConfig) -> tuple[float, float, int]:
        """(lower, upper, max_concurrency) of `d`: its own overrides, else these defaults.

        Unchecked: `Settings.thresholds` and the throttle itself reject lower >= upper.
        """
        return overridden(d, self.lower, self.upper, self.max_concurrency)


def overridden(
    d: DeploymentConfig, lower: float, upper: float, maximum: int
) -> tuple[float, float, int]:
    """A deployment's throttle curve: its own thresholds and maximum where it sets them."""
    return (
        lower if d.lower_threshold is None else d.lower_threshold,
        upper if d.upper_threshold is None else d.upper_threshold,
        maximum if d.max_concurrency is None else d.max_concurrency,
    )


@dataclass(frozen=True, slots=True)
class EventHubsView:
    """How to reach the Event Hubs namespace: `PTU_EVENTHUB_NAMESPACE` or
    `PTU_EVENTHUB_CONNECTION_STRING`, and `PTU_EVENTHUB_CONSUMER_GROUP`."""

    namespace: str | None = None
    connection_string: SecretStr | None = None
    consumer_group: str = "$Default"


@dataclass(frozen=True, slots=True)
class CheckpointView:
    """Where the request hubs' checkpoints live: `PTU_EVENTHUB_CHECKPOINT_*`."""

    store: Literal["redis", "blob"] = "redis"
    blob_url: str | None = None
    container: str = "ptu-checkpoints"
    connection_string: SecretStr | None = None
