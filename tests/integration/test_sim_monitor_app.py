"""Metrics of real simulated traffic, read through the whole simulator app with MetricsClient."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.monitor.querymetrics.aio import MetricsClient
from starlette.applications import Starlette

from simulator.app import create_app
from simulator.config import DEFAULT_RESOURCE_ID, SimConfig
from simulator.monitor.recorder import MetricsRecorder
from simulator.tls import TLSFiles, write_self_signed
from tests.integration.monitor_support import T0, StaticCredential, serve_tls
from tests.support.clock import FakeClock

UTIL = "AzureOpenAIProvisionedManagedUtilizationV2"
DEPLOYMENT = "gpt-4o-mini-ptu"
LAG_S = 30.0


@dataclass
class Running:
    """The simulator served over TLS with an injected clock."""

    url: str
    tls: TLSFiles
    clock: FakeClock
    recorder: MetricsRecorder


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """create_app under uvicorn (lifespan on, so the 1 Hz sampler runs) with TLS."""
    tls = write_self_signed(tmp_path / "tls")
    clock = FakeClock(T0 + 5)
    config = SimConfig.from_specs([f"{DEPLOYMENT}=gpt-4o-mini:15"], monitor_lag_s=LAG_S)
    app: Starlette = create_app(config, clock=clock)
    with serve_tls(app, tls) as url:
        yield Running(url, tls, clock, app.state.simulator.recorder)


async def _chat(http: httpx.AsyncClient, url: str, completion_tokens: int) -> httpx.Response:
    return await http.post(
        f"{url}/openai/deployments/{DEPLOYMENT}/chat/completions",
        params={"api-version": "2024-10-21"},
        headers={"api-key": "k", "x-sim-completion-tokens": str(completion_tokens)},
        json={"messages": [{"role": "user", "content": "hello " * 50}], "max_tokens": 100},
    )


async def test_traffic_shows_up_in_monitor_metrics_after_the_lag(running: Running) -> None:
    verify = ssl.create_default_context(cafile=running.tls.ca_pem)
    async with httpx.AsyncClient(verify=verify, timeout=30) as http:
        replies = [await _chat(http, running.url, n) for n in (10, 20, 30)]
    assert [r.status_code for r in replies] == [200, 200, 200]
    prompt = sum(r.json()["usage"]["prompt_tokens"] for r in replies)
    deadline = time.monotonic() + 10
    # the 1 Hz sampler runs on real time but stamps samples with the injected clock
    while not running.recorder.query(T0 + 3600, UTIL, T0, T0 + 60)[0].points[0].maximum:
        assert time.monotonic() < deadline, "the sampler recorded no utilisation"
        await asyncio.sleep(0.1)

    async def query(now: float) -> Any:
        running.clock.now = now
        async with MetricsClient(
            running.url, StaticCredential(), connection_verify=str(running.tls.ca_pem)
        ) as client:
            [result] = await client.query_resources(
                resource_ids=[DEFAULT_RESOURCE_ID],
                metric_namespace="Microsoft.CognitiveServices/accounts",
                metric_names=[UTIL, "ProcessedPromptTokens", "GeneratedTokens"],
                timespan=(datetime.fromtimestamp(T0, UTC), timedelta(minutes=1)),
                granularity=timedelta(minutes=1),
                aggregations=["Average", "Maximum", "Total"],
                filter=f"ModelDeploymentName eq '{DEPLOYMENT}'",
            )
        return {m.name: m.timeseries[0].data[0] for m in result.metrics}

    early = await query(T0 + 60 + LAG_S - 1)
    assert early[UTIL].maximum is None and early["GeneratedTokens"].total is None
    late = await query(T0 + 60 + LAG_S)
    [recorded] = running.recorder.query(T0 + 3600, UTIL, T0, T0 + 60)[0].points
    assert late[UTIL].average == pytest.approx(recorded.average)
    assert late[UTIL].maximum == pytest.approx(recorded.maximum)
    assert late[UTIL].maximum > 0
    assert late["ProcessedPromptTokens"].total == prompt
    assert late["GeneratedTokens"].total == 60
