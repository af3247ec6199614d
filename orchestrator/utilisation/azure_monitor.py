"""The `azure_monitor` utilisation source: Azure Monitor's per-minute PTU utilisation metric.

Polls `AzureOpenAIProvisionedManagedUtilizationV2` (PT1M, Average and Maximum,
split by `ModelDeploymentName`) through azure-monitor-querymetrics'
`MetricsClient.query_resources` at most every `poll_s`, for all tracked
deployments in one call. A reading's `observed_at` is the END of the newest
minute that has a value, so the metric's ingestion lag (30 s to 15 min,
AZURE_FACTS.md §4) shows up as the reading's age and `max_age_s` fails closed
when the metric stops arriving. The value is the minute's Maximum (the
conservative choice for a minutes-old signal), else its Average.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from azure.core.exceptions import AzureError
from azure.monitor.querymetrics.aio import MetricsClient

from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.base import Reading

log = structlog.get_logger(__name__)

SOURCE = "azure_monitor"
NAMESPACE = "Microsoft.CognitiveServices/accounts"
METRIC = "AzureOpenAIProvisionedManagedUtilizationV2"
DIMENSION = "ModelDeploymentName"
GRAIN = timedelta(minutes=1)
LOOKBACK = timedelta(minutes=20)
"""Query span: covers the documented worst-case ingestion latency of 15 minutes."""


def deployment_filter(names: Iterable[str]) -> str:
    """`$filter` selecting the given deployments' series."""
    return " or ".join(f"{DIMENSION} eq '{n}'" for n in names)


def _series_deployment(series: Any) -> str | None:
    for key, value in (series.metadata_values or {}).items():
        if str(key).lower() == DIMENSION.lower():
            return str(value)
    return None


def newest_readings(results: Sequence[Any], names: Sequence[str]) -> dict[str, Reading]:
    """The newest minute with a value per deployment, from `query_resources` results.

    A series without a deployment dimension is taken to be the only deployment
    asked for (when exactly one was).
    """
    newest: dict[str, tuple[datetime, float, timedelta]] = {}
    for result in results:
        grain = result.granularity or GRAIN
        for metric in result.metrics:
            if str(metric.name).lower() != METRIC.lower():
                continue
            for series in metric.timeseries:
                name = _series_deployment(series)
                if name is None and len(names) == 1:
                    name = names[0]
                if name is None or name not in names:
                    continue
                for point in series.data:
                    value = point.maximum if point.maximum is not None else point.average
                    if value is None:  # a minute not ingested yet
                        continue
                    if name not in newest or point.timestamp > newest[name][0]:
                        newest[name] = (point.timestamp, float(value), grain)
    return {
        name: Reading(value / 100.0, (ts + grain).timestamp(), SOURCE)
        for name, (ts, value, grain) in newest.items()
    }


class AzureMonitorSource:
    """A `UtilisationSource` reading Azure Monitor metrics (minutes of lag, no Redis)."""

    def __init__(
        self,
        *,
        endpoint: str,
        resource_id: str,
        credential: Any,
        deployments: Sequence[DeploymentConfig],
        poll_s: float,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
        connection_verify: str | bool | None = None,
    ) -> None:
        if poll_s <= 0 or max_age_s <= 0:
            raise ValueError("poll_s and max_age_s must be positive")
        self.max_age_s = max_age_s
        self._resource_id = resource_id
        self._credential = credential
        self._names = [d.name for d in deployments]
        self._poll_s = poll_s
        self._clock = clock
        extra: dict[str, Any] = {}
        if connection_verify is not None:
            extra["connection_verify"] = connection_verify
        self._client = MetricsClient(endpoint, credential, **extra)
        self._readings: dict[str, Reading] = {}
        self._polled_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._timeout_s = max(10.0, poll_s)

    @property
    def deployments(self) -> list[str]:
        """Names of the deployments this source tracks."""
        return list(self._names)

    async def refresh(self) -> None:
        """Query the metric for all tracked deployments now; on failure keep the old readings."""
        end = datetime.fromtimestamp(self._clock(), UTC)
        try:
            async with asyncio.timeout(self._timeout_s):
                results = await self._client.query_resources(
                    resource_ids=[self._resource_id],
                    metric_namespace=NAMESPACE,
                    metric_names=[METRIC],
                    timespan=(end - LOOKBACK, end),
                    granularity=GRAIN,
                    aggregations=["Average", "Maximum"],
                    filter=deployment_filter(self._names),
                    max_results=max(10, len(self._names)),
                )
        except (AzureError, TimeoutError) as exc:
            log.warning("azure_monitor_query_failed", error=repr(exc)[:500])
            return
        fresh = newest_readings(results, self._names)
        self._readings.update(fresh)
        log.debug("azure_monitor_polled", readings={n: round(r.value, 4) for n, r in fresh.items()})

    async def read(self, deployment: str) -> Reading:
        """The newest per-minute value; a poll older than `poll_s` starts a new one.

        Polls run in the background so a slow metrics API never blocks a reader;
        only the very first read waits for its poll. Raises UtilisationUnavailable
        for an untracked deployment or before any minute with a value was seen.
        """
        if deployment not in self._names:
            raise UtilisationUnavailable(f"azure_monitor: deployment {deployment!r} not tracked")
        now = self._clock()
        due = self._polled_at is None or now - self._polled_at >= self._poll_s
        if due and (self._task is None or self._task.done()):
            self._polled_at = now
            self._task = asyncio.create_task(self.refresh())
        if not self._readings and self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
        reading = self._readings.get(deployment)
        if reading is None:
            raise UtilisationUnavailable(f"azure_monitor: no utilisation minute for {deployment}")
        return reading

    async def close(self) -> None:
        """Stop polling; close the metrics client and the credential."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.close()
        close = getattr(self._credential, "close", None)
        if close is not None:
            await close()

    def __repr__(self) -> str:
        return f"<AzureMonitorSource deployments={','.join(self._names)} poll_s={self._poll_s:g}>"
