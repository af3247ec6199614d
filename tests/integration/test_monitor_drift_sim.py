"""The Azure Monitor minute corrects the estimate's drift, read from the simulator's monitor.

The simulator reports no utilisation header (`--utilisation-header absent`) and its
traffic comes from another application (straight to the simulator, never seen by our
estimate), so the model reads 0 %; the monitor's minute shows the deployment was used, and
the estimate, folding that minute in, leans toward less low-priority work.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from orchestrator.calls.signals import UTILISATION_HEADER
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.azure_monitor import AzureMonitorSource
from orchestrator.utilisation.estimate.calibration import DEFAULT_PARAMS
from orchestrator.utilisation.estimate.drift import MonitorDrift
from orchestrator.utilisation.estimate.store import EstimateStore
from simulator.app import create_app
from simulator.config import DEFAULT_RESOURCE_ID, SimConfig
from simulator.monitor.recorder import MetricsRecorder
from simulator.tls import TLSFiles, write_self_signed
from tests.integration.monitor_support import T0, StaticCredential, serve_tls
from tests.support.clock import FakeClock

UTIL = "AzureOpenAIProvisionedManagedUtilizationV2"
DEP = "gpt-4o-mini-ptu"
LAG_S = 30.0
WINDOW_S = 10.0


@dataclass
class Running:
    url: str
    tls: TLSFiles
    clock: FakeClock
    recorder: MetricsRecorder


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """The simulator (header absent) over TLS on an injected clock, its sampler running."""
    tls = write_self_signed(tmp_path / "tls")
    clock = FakeClock(T0 + 5)
    config = SimConfig.from_specs(
        [f"{DEP}=gpt-4o-mini:15"], monitor_lag_s=LAG_S, window_s=WINDOW_S,
        utilisation_header="absent", tbt_ms=0, ttft_ms=0,
    )  # fmt: skip
    app: Starlette = create_app(config, clock=clock)
    with serve_tls(app, tls) as url:
        yield Running(url, tls, clock, app.state.simulator.recorder)


async def _other_application(run: Running) -> None:
    """Calls straight to the deployment: the estimate never hears of them."""
    verify = ssl.create_default_context(cafile=run.tls.ca_pem)
    async with httpx.AsyncClient(verify=verify, timeout=30) as http:
        for _ in range(3):
            reply = await http.post(
                f"{run.url}/openai/deployments/{DEP}/chat/completions",
                params={"api-version": "2024-10-21"},
                headers={"api-key": "k", "x-sim-completion-tokens": "2000"},
                json={"messages": [{"role": "user", "content": "hi " * 2000}], "max_tokens": 2000},
            )
            assert reply.status_code == 200
            assert UTILISATION_HEADER not in reply.headers
    deadline = time.monotonic() + 10
    # the 1 Hz sampler runs on real time but stamps samples with the injected clock
    while not run.recorder.query(T0 + 3600, UTIL, T0, T0 + 60)[0].points[0].maximum:
        assert time.monotonic() < deadline, "the sampler recorded no utilisation"
        await asyncio.sleep(0.1)


async def test_a_monitor_minute_lifts_a_headerless_estimate(
    running: Running, redis: aioredis.Redis
) -> None:
    deployment = DeploymentConfig(name=DEP, model="gpt-4o-mini", ptus=15)
    clock = running.clock
    store = EstimateStore(
        redis, [deployment], window_s=WINDOW_S, max_age_s=5.0, clock=clock,
        time_source="clock", calibration=DEFAULT_PARAMS,
    )  # fmt: skip
    await store.heartbeat()
    await _other_application(running)
    assert (await store.read(DEP)).value == 0.0  # the model saw nothing

    source = AzureMonitorSource(
        endpoint=running.url, resource_id=DEFAULT_RESOURCE_ID, credential=StaticCredential(),
        deployments=[deployment], poll_s=5.0, max_age_s=300.0, clock=clock,
        connection_verify=str(running.tls.ca_pem),
    )  # fmt: skip
    drift = MonitorDrift(source, [DEP], poll_s=5.0, clock=clock)
    try:
        clock.now = T0 + 60 + LAG_S - 5  # the minute is not published yet
        assert await drift.poll(store.fold_monitor) == {}
        clock.now = T0 + 60 + LAG_S
        folded = await drift.poll(store.fold_monitor)
        assert await drift.poll(store.fold_monitor) == {}  # the same minute only once
    finally:
        await drift.close()
    [point] = running.recorder.query(T0 + 3600, UTIL, T0, T0 + 60)[0].points
    assert point.maximum is not None and point.maximum > 0
    # the minute was that much fuller than anything of ours: an unseen inflow, spread over it
    learnt = point.maximum / 100.0 * WINDOW_S / 60.0
    assert folded == {DEP: pytest.approx(learnt)}
    await store.heartbeat()
    reading = await store.read(DEP)
    assert reading.calibration is not None
    assert reading.calibration.unseen == pytest.approx(learnt)
    # a charge of ours now drains slower than the open-loop model lets it
    await store.record(
        TokenEvent(request_id="ours", deployment=DEP, phase="complete", timestamp=0.0,
                   prompt_tokens=20_000)
    )  # fmt: skip
    clock.now += 1.0
    await store.heartbeat()
    later = await store.read(DEP)
    assert later.calibration is not None
    assert later.value > later.calibration.model
