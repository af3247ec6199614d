"""The unchanged azure-monitor-querymetrics client against the simulator's metrics API over TLS."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.monitor.querymetrics.aio import MetricsClient
from starlette.applications import Starlette

from simulator.monitor.recorder import MetricsRecorder
from simulator.monitor.routes import monitor_routes
from simulator.tls import TLSFiles, write_self_signed
from tests.integration.monitor_support import T0, StaticCredential, serve_tls
from tests.support.clock import FakeClock

SUB = "00000000-0000-0000-0000-000000000000"
RESOURCE_ID = (
    f"/subscriptions/{SUB}/resourceGroups/sim/providers/Microsoft.CognitiveServices/accounts/sim"
)
NAMESPACE = "Microsoft.CognitiveServices/accounts"
UTIL = "AzureOpenAIProvisionedManagedUtilizationV2"
LAG_S = 90.0


@dataclass
class Served:
    """A running metrics endpoint."""

    endpoint: str
    tls: TLSFiles
    recorder: MetricsRecorder
    clock: FakeClock


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """Monitor routes + a recorder under uvicorn with TLS on a free loopback port."""
    tls = write_self_signed(tmp_path / "tls")
    recorder = MetricsRecorder(lag_s=LAG_S)
    clock = FakeClock(T0)
    with serve_tls(Starlette(routes=monitor_routes(recorder, RESOURCE_ID, clock)), tls) as url:
        yield Served(url, tls, recorder, clock)


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


async def _query(served: Served, credential: StaticCredential, **kwargs: Any) -> Any:
    kwargs.setdefault("metric_names", [UTIL])
    kwargs.setdefault("aggregations", ["Average", "Maximum"])
    async with MetricsClient(
        served.endpoint, credential, connection_verify=str(served.tls.ca_pem)
    ) as client:
        return await client.query_resources(
            resource_ids=[RESOURCE_ID], metric_namespace=NAMESPACE, **kwargs
        )


def _feed(recorder: MetricsRecorder) -> None:
    """Two minutes of 1 Hz samples for two deployments, plus tokens and requests."""
    for second in range(120):
        recorder.sample(T0 + second, "ptu-a", 40.0 if second < 60 else 70.0 + second % 2)
        recorder.sample(T0 + second, "ptu-b", 5.0)
    recorder.add_tokens(T0 + 10, "ptu-a", 1000, 200)
    recorder.add_tokens(T0 + 70, "ptu-a", 500, 100)
    for code in (200, 200, 429):
        recorder.add_request(T0 + 20, "ptu-a", code)


async def test_values_agree_with_what_was_recorded(served: Served) -> None:
    _feed(served.recorder)
    served.clock.now = T0 + 120 + LAG_S
    credential = StaticCredential()
    [result] = await _query(
        served,
        credential,
        timespan=(_dt(T0), _dt(T0 + 180)),
        granularity=timedelta(minutes=1),
        filter="ModelDeploymentName eq 'ptu-a'",
    )
    assert credential.scopes == [("https://metrics.monitor.azure.com/.default",)]
    metric = result.metrics[UTIL]
    assert metric.unit == "Percent"
    [series] = metric.timeseries
    assert {k.lower(): v for k, v in series.metadata_values.items()} == {
        "modeldeploymentname": "ptu-a"
    }
    points = [(p.timestamp, p.average, p.maximum) for p in series.data]
    assert points == [
        (_dt(T0), 40.0, 40.0),
        (_dt(T0 + 60), 70.5, 71.0),
        (_dt(T0 + 120), None, None),
    ]
    assert result.granularity is not None and result.granularity.total_seconds() == 60


async def test_minute_appears_only_after_the_lag(served: Served) -> None:
    _feed(served.recorder)
    span = (_dt(T0), _dt(T0 + 120))
    seen = []
    for now in (T0 + 60 + LAG_S - 1, T0 + 60 + LAG_S, T0 + 120 + LAG_S - 1, T0 + 120 + LAG_S):
        served.clock.now = now
        [result] = await _query(
            served, StaticCredential(), timespan=span, filter="ModelDeploymentName eq 'ptu-a'"
        )
        seen.append([p.average for p in result.metrics[UTIL].timeseries[0].data])
    assert seen == [[None, None], [40.0, None], [40.0, None], [40.0, 70.5]]


async def test_star_filter_splits_and_counts_are_totals(served: Served) -> None:
    _feed(served.recorder)
    served.clock.now = T0 + 3600
    [result] = await _query(
        served,
        StaticCredential(),
        metric_names=[UTIL, "ProcessedPromptTokens", "GeneratedTokens", "AzureOpenAIRequests"],
        aggregations=["Average", "Maximum", "Total"],
        timespan=(_dt(T0), _dt(T0 + 120)),
        filter="ModelDeploymentName eq '*'",
    )
    util = {
        s.metadata_values["modeldeploymentname"]: [p.maximum for p in s.data]
        for s in result.metrics[UTIL].timeseries
    }
    assert util == {"ptu-a": [40.0, 71.0], "ptu-b": [5.0, 5.0]}
    prompt = {
        s.metadata_values["modeldeploymentname"]: [p.total for p in s.data]
        for s in result.metrics["ProcessedPromptTokens"].timeseries
    }
    assert prompt == {"ptu-a": [1000.0, 500.0]}
    [generated] = result.metrics["GeneratedTokens"].timeseries
    assert [p.total for p in generated.data] == [200.0, 100.0]
    [requests] = result.metrics["AzureOpenAIRequests"].timeseries
    assert [p.total for p in requests.data] == [3.0, 0.0]
    assert result.metrics["AzureOpenAIRequests"].unit == "Count"


async def test_unknown_metric_and_resource_are_refused(served: Served) -> None:
    span = (_dt(T0), _dt(T0 + 60))
    with pytest.raises(HttpResponseError) as bad_metric:
        await _query(served, StaticCredential(), metric_names=["NoSuchMetric"], timespan=span)
    assert bad_metric.value.status_code == 400
    assert "NoSuchMetric" in str(bad_metric.value)
    with pytest.raises(ResourceNotFoundError):
        async with MetricsClient(
            served.endpoint, StaticCredential(), connection_verify=str(served.tls.ca_pem)
        ) as client:
            await client.query_resources(
                resource_ids=[RESOURCE_ID.replace("/sim", "/other")],
                metric_namespace=NAMESPACE,
                metric_names=[UTIL],
                timespan=span,
            )


async def test_bearer_token_is_required(served: Served) -> None:
    url = f"{served.endpoint}/subscriptions/{SUB}/metrics:getBatch"
    params = {"api-version": "2024-02-01", "metricnamespace": NAMESPACE, "metricnames": UTIL}
    body = {"resourceids": [RESOURCE_ID]}
    async with httpx.AsyncClient(
        verify=ssl.create_default_context(cafile=served.tls.ca_pem)
    ) as http:
        missing = await http.post(url, params=params, json=body)
        empty = await http.post(url, params=params, json=body, headers={"Authorization": "Bearer"})
        basic = await http.post(
            url, params=params, json=body, headers={"Authorization": "Basic dTpw"}
        )
        ok = await http.post(url, params=params, json=body, headers={"Authorization": "Bearer t"})
    assert missing.status_code == empty.status_code == basic.status_code == 401
    assert missing.json()["error"]["code"] == "AuthenticationFailed"
    assert ok.status_code == 200
    assert len(ok.json()["values"][0]["value"][0]["timeseries"][0]["data"]) == 60


async def latest_utilisation(
    endpoint: str, credential: Any, resource_id: str, deployment: str, ca_pem: str
) -> tuple[float, float] | None:
    """Reference usage for a utilisation source: (fraction, observed_at) of the newest minute."""
    async with MetricsClient(endpoint, credential, connection_verify=ca_pem) as client:
        [result] = await client.query_resources(
            resource_ids=[resource_id],
            metric_namespace="Microsoft.CognitiveServices/accounts",
            metric_names=["AzureOpenAIProvisionedManagedUtilizationV2"],
            timespan=timedelta(minutes=10),
            granularity=timedelta(minutes=1),
            aggregations=["Average", "Maximum"],
            filter=f"ModelDeploymentName eq '{deployment}'",
        )
    metric = next(
        m for m in result.metrics if m.name == "AzureOpenAIProvisionedManagedUtilizationV2"
    )
    newest: tuple[datetime, float] | None = None
    for series in metric.timeseries:  # one per deployment matched by the filter
        for point in series.data:  # minutes not yet ingested have no values
            if point.maximum is not None and (newest is None or point.timestamp > newest[0]):
                newest = (point.timestamp, point.maximum)
    if newest is None:
        return None
    # the point covers [timestamp, timestamp + 1 min); percent -> fraction
    return newest[1] / 100.0, newest[0].timestamp() + 60.0


async def test_reference_usage_with_a_relative_timespan(served: Served) -> None:
    now = time.time()
    minute = now - now % 60
    served.clock.now = now
    for back, value in ((4, 10.0), (3, 20.0), (2, 30.0), (1, 40.0)):
        served.recorder.sample(minute - back * 60 + 1, "ptu-a", value)
        served.recorder.sample(minute - back * 60 + 2, "ptu-a", value + 2)
    got = await latest_utilisation(
        served.endpoint, StaticCredential(), RESOURCE_ID, "ptu-a", str(served.tls.ca_pem)
    )
    # a minute is visible once its end + LAG_S (90 s) has passed: the minute that ended at
    # `minute` never is, the one before only in the second half of the current minute
    if now - minute >= 150 - 2 * 60:
        expected = (0.32, minute - 60)
    else:
        expected = (0.22, minute - 120)
    assert got is not None
    assert got[0] == pytest.approx(expected[0])
    assert got[1] == expected[1]
