"""The one place the Redis estimate is built from settings (every process that records or
reads it: the worker, the ingress, the estimator, and `make_source`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from orchestrator.core.settings import Settings
from orchestrator.utilisation.estimate.calibration import params_for

if TYPE_CHECKING:
    from orchestrator.core.settings import DeploymentConfig
    from orchestrator.utilisation.estimate.store import EstimateStore


def estimate_store(
    settings: Settings,
    redis: aioredis.Redis,
    deployments: Sequence[DeploymentConfig] | None = None,
    *,
    low_priority: bool = False,
    clock: Callable[[], float] | None = None,
) -> EstimateStore:
    """The Redis estimate of `deployments` (default: all), as `PTU_ESTIMATE_*` and
    `PTU_CALIBRATION` configure it: the one place every process builds it from settings.

    `low_priority`: the recorder of the worker's own (low-priority) calls.
    """
    from orchestrator.utilisation.estimate.store import EstimateStore

    return EstimateStore(
        redis,
        settings.deployments if deployments is None else deployments,
        window_s=settings.estimate_window_s,
        max_age_s=settings.estimate_max_age_s,
        calibration=params_for(settings.calibration),
        low_priority=low_priority,
        clock=clock or time.time,
    )
