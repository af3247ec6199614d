"""Pick the utilisation source named by `PTU_UTILIZATION_SOURCE`; Azure SDKs load lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis.asyncio as aioredis
import structlog

from orchestrator.core.errors import ConfigError, MissingDependencyError
from orchestrator.core.settings import Settings
from orchestrator.utilisation.base import UtilisationSource
from orchestrator.utilisation.store_factory import estimate_store

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from orchestrator.utilisation.azure_monitor import AzureMonitorSource


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
