"""AzureMonitorSource (real MetricsClient) against the simulator's metrics API over TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import fakeredis
import pytest
from starlette.applications import Starlette

from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.core.runtime import Pacing
from orchestrator.core.settings import DeploymentConfig
from orchestrator.core.views import ThrottleView
from orchestrator.throttle.limiter import Throttle
from orchestrator.utilisation.azure_monitor import AzureMonitorSource
from simulator.monitor.recorder import MetricsRecorder
from simulator.monitor.routes import monitor_routes
from simulator.tls import TLSFiles, write_self_signed
from tests.integration.monitor_support import T0, StaticCredential, serve_tls
from tests.support.clock import FakeClock

RESOURCE_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sim"
    "/providers/Microsoft.CognitiveServices/accounts/sim"
)
LAG_S = 90.0
DEPLOYMENTS = [
    DeploymentConfig(name="ptu-a", model="gpt-4o", ptus=50),
    DeploymentConfig(name="ptu-b", model="gpt-4o", ptus=50),
]


@dataclass
class Served:
    endpoint: str
    tls: TLSFiles
    recorder: MetricsRecorder
    clock: FakeClock


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    tls = write_self_signed(tmp_path / "tls")
    recorder, clock = MetricsRecorder(lag_s=LAG_S), FakeClock(T0)
    with serve_tls(Starlette(routes=monitor_routes(recorder, RESOURCE_ID, clock)), tls) as url:
        yield Served(url, tls, recorder, clock)


@pytest.fixture
async def source(served: Served) -> AsyncIterator[AzureMonitorSource]:
    s = AzureMonitorSource(
        endpoint=served.endpoint,
        resource_id=RESOURCE_ID,
        credential=StaticCredential(),
        deployments=DEPLOYMENTS,
        poll_s=30.0,
        max_age_s=300.0,
        clock=served.clock,
        connection_verify=str(served.tls.ca_pem),
    )
    try:
        yield s
    finally:
        await s.close()


def feed(recorder: MetricsRecorder) -> None:
    """Three minutes before T0: ptu-a at 10/20/30 % (+5 % peaks), ptu-b at 50 %."""
    for back, value in ((3, 10.0), (2, 20.0), (1, 30.0)):
        start = T0 - back * 60
        recorder.sample(start + 1, "ptu-a", value)
        recorder.sample(start + 2, "ptu-a", value + 5)
        recorder.sample(start + 1, "ptu-b", 50.0)


async def test_newest_ingested_minute_is_read_with_its_age(
    served: Served, source: AzureMonitorSource
) -> None:
    feed(served.recorder)
    # minute [T0-60, T0) becomes visible at T0 + LAG_S; [T0-120, T0-60) at T0 + 30
    served.clock.now = T0 + 60
    a = await source.read("ptu-a")
    assert (a.value, a.observed_at) == (pytest.approx(0.25), T0 - 60)
    assert a.age(served.clock.now) == 120
    assert (await source.read("ptu-b")).value == pytest.approx(0.5)


async def test_polls_at_most_every_poll_s_in_the_background(
    served: Served, source: AzureMonitorSource
) -> None:
    feed(served.recorder)
    served.clock.now = T0 + 60
    assert (await source.read("ptu-a")).value == pytest.approx(0.25)
    served.clock.now = T0 + 80  # the newer minute is visible, but the poll is 20 s old
    assert (await source.read("ptu-a")).observed_at == T0 - 60
    served.clock.now = T0 + 95
    stale = await source.read("ptu-a")  # starts a background poll, answers at once
    assert stale.observed_at == T0 - 60
    for _ in range(200):
        if (await source.read("ptu-a")).observed_at == T0:
            break
        await asyncio.sleep(0.02)
    assert (await source.read("ptu-a")).value == pytest.approx(0.35)


async def test_nothing_ingested_yet_is_unavailable(
    served: Served, source: AzureMonitorSource
) -> None:
    feed(served.recorder)
    served.clock.now = T0 - 60  # the oldest minute shows at T0 - 30
    with pytest.raises(UtilisationUnavailable):
        await source.read("ptu-a")
    with pytest.raises(UtilisationUnavailable):
        await source.read("not-tracked")


async def test_refused_query_keeps_the_old_reading(
    served: Served, source: AzureMonitorSource
) -> None:
    feed(served.recorder)
    served.clock.now = T0 + 60
    before = await source.read("ptu-a")
    source._resource_id = RESOURCE_ID.replace("/sim", "/gone")  # the next poll gets 404
    served.clock.now = T0 + 120
    await source.read("ptu-a")
    assert source._task is not None
    await source._task
    assert await source.read("ptu-a") == before  # ages until the throttle fails closed


async def test_refused_first_query_is_unavailable(served: Served) -> None:
    feed(served.recorder)
    served.clock.now = T0 + 60
    credential = StaticCredential()
    s = AzureMonitorSource(
        endpoint=served.endpoint,
        resource_id=RESOURCE_ID.replace("/sim", "/gone"),
        credential=credential,
        deployments=DEPLOYMENTS,
        poll_s=1.0,
        max_age_s=300.0,
        clock=served.clock,
        connection_verify=str(served.tls.ca_pem),
    )
    try:
        with pytest.raises(UtilisationUnavailable):  # 404: logged, no reading
            await s.read("ptu-a")
    finally:
        await s.close()
    assert credential.closed


async def test_throttle_fails_closed_when_the_metric_stops(
    served: Served, source: AzureMonitorSource
) -> None:
    feed(served.recorder)
    served.clock.now = T0 + 60
    throttle = Throttle(
        fakeredis.FakeAsyncRedis(),
        DEPLOYMENTS[0],
        source,
        ThrottleView(lower=0.2, upper=0.9, max_concurrency=8, slot_lease_s=30.0),
        worker_id="w",
        pacing=Pacing(clock=served.clock),
    )
    assert await throttle.refresh() == 7  # 25 %: 8 - 7 * (0.05 / 0.7) = 7.5
    served.clock.now = T0 + 400  # no minute newer than [T0-60, T0): 400 s old
    assert await throttle.refresh() == 0
