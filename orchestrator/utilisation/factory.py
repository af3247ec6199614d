"""Pick the utilisation source named by `PTU_UTILIZATION_SOURCE`; Azure SDKs load lazily."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
import structlog

from orchestrator.core.errors import ConfigError, MissingDependencyError
from orchestrator.core.settings import Settings
from orchestrator.utilisation.base import UtilisationSource
from orchestrator.utilisation.estimate.calibration import params_for

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from orchestrator.core.settings import DeploymentConfig
    from orchestrator.utilisation.azure_monitor import AzureMonitorSource
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


def make_source(settings: Settings, redis: aioredis.Redis) -> UtilisationSource:
    """The configured `UtilisationSource` for all of `settings.deployments`."""
    if settings.utilization_source == "azure_monitor":
        return _azure_monitor(settings)
    store = estimate_store(settings, redis)
    monitored = settings.azure_monitor_endpoint and settings.azure_resource_id
    if store.calibration is not None and monitored:
        # the Azure Monitor minute corrects slow drift while the header is missing
        from orchestrator.utilisation.estimate.drift import MonitorDrift

        try:
            monitor = _azure_monitor(settings)
        except MissingDependencyError as exc:
            log.warning("monitor_drift_unavailable", error=str(exc))
            return store
        store.attach_monitor(
            MonitorDrift(monitor, monitor.deployments, poll_s=settings.azure_monitor_poll_s)
        )
    return store


def _azure_monitor(settings: Settings) -> AzureMonitorSource:
    for name in ("azure_monitor_endpoint", "azure_resource_id"):
        if not getattr(settings, name):
            raise ConfigError(
                f"PTU_{name.upper()}: required when PTU_UTILIZATION_SOURCE=azure_monitor"
            )
    try:
        from azure.identity.aio import DefaultAzureCredential

        from orchestrator.utilisation.azure_monitor import AzureMonitorSource
    except ImportError as exc:
        raise MissingDependencyError(
            "azure-monitor-querymetrics and azure-identity", "azure"
        ) from exc
    assert settings.azure_monitor_endpoint is not None and settings.azure_resource_id is not None
    return AzureMonitorSource(
        endpoint=settings.azure_monitor_endpoint,
        resource_id=settings.azure_resource_id,
        credential=DefaultAzureCredential(),
        deployments=[d for d in settings.deployments if d.kind == "provisioned"],
        poll_s=settings.azure_monitor_poll_s,
        max_age_s=settings.monitor_max_age_s,
        connection_verify=settings.azure_monitor_ca_file,
    )
