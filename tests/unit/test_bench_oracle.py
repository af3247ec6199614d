"""The oracle arm's source: the simulator's own true level, polled lazily, failing closed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest

from bench.harness.oracle import OracleSource
from orchestrator.core.errors import UtilisationUnavailable
from simulator.app import create_app
from simulator.config import SimConfig
from tests.support.clock import FakeClock

DEPLOYMENT = "gpt-4o-mini-ptu"
SIM = "http://sim.test"


@pytest.fixture
async def sim() -> AsyncIterator[tuple[httpx2.AsyncClient, FakeClock]]:
    """The simulator app in process, on a fake clock shared with the oracle."""
    clock = FakeClock()
    config = SimConfig.from_specs(
        [f"{DEPLOYMENT}=gpt-4o-mini:15"], tbt_ms=0.0, ttft_ms=0.0, window_s=1.0
    )
    app = create_app(config, clock=clock)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=SIM) as c:
        yield c, clock


async def _charge(client: httpx2.AsyncClient) -> None:
    body = {"messages": [{"role": "user", "content": "x" * 8000}], "max_tokens": 500}
    url = f"/openai/deployments/{DEPLOYMENT}/chat/completions?api-version=2024-10-21"
    assert (await client.post(url, json=body, headers={"api-key": "k"})).status_code == 200


async def _truth(client: httpx2.AsyncClient) -> float:
    state = (await client.get("/sim/state")).json()
    return float(state["deployments"][DEPLOYMENT]["utilization"])


async def test_reads_the_true_level_and_repolls_only_after_poll_s(
    sim: tuple[httpx2.AsyncClient, FakeClock],
) -> None:
    client, clock = sim
    oracle = OracleSource(client, SIM, poll_s=0.2, max_age_s=2.0, clock=clock)
    first = await oracle.read(DEPLOYMENT)
    assert (first.value, first.observed_at, first.source) == (0.0, clock.now, "oracle")

    await _charge(client)
    truth = await _truth(client)
    assert truth > 0.05
    clock.advance(0.1)  # within poll_s: the last poll stands
    assert (await oracle.read(DEPLOYMENT)).value == 0.0
    clock.advance(0.1)
    fresh = await oracle.read(DEPLOYMENT)
    assert fresh.value == pytest.approx(await _truth(client))  # both at the same moment
    assert 0.05 < fresh.value < truth  # 0.2 s of draining later
    assert fresh.observed_at == clock.now and oracle.polls == 2
    assert fresh.calibration is None and fresh.steer == fresh.value

    clock.advance(3.0)  # the bucket drains with the simulator's clock; the oracle follows
    drained = await oracle.read(DEPLOYMENT)
    assert drained.value == pytest.approx(await _truth(client)) and drained.value < fresh.value
    assert "polls=3" in repr(oracle)


async def test_an_unknown_deployment_or_an_unreachable_simulator_fails_closed(
    sim: tuple[httpx2.AsyncClient, FakeClock],
) -> None:
    client, clock = sim
    oracle = OracleSource(client, SIM, poll_s=0.2, clock=clock)
    with pytest.raises(UtilisationUnavailable, match="other"):
        await oracle.read("other")
    good = await oracle.read(DEPLOYMENT)

    gone = OracleSource(client, "http://sim.test/nowhere", poll_s=0.2, clock=clock)
    with pytest.raises(UtilisationUnavailable):  # a 404 is no reading
        await gone.read(DEPLOYMENT)
    assert gone.failures == 1

    # a failed poll keeps the previous reading, which ages until the throttle calls it stale
    oracle._url = "http://sim.test/nowhere/sim/state"
    clock.advance(5.0)
    kept = await oracle.read(DEPLOYMENT)
    assert kept == good and kept.age(clock.now) == 5.0 > oracle.max_age_s
    assert oracle.failures == 1
