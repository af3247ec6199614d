"""Admin API, priority labels, fault injection and retry-after over loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest

from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests.support.clock import FakeClock

CHAT = "/openai/deployments/{}/chat/completions?api-version=2024-10-21"
BODY = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        ["ptu=gpt-4o-mini:15", "paygo=gpt-4o:100000:standard"], tbt_ms=0, ttft_ms=0, seed=5
    )
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture
async def http(sim: SimulatorThread) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=sim.url, headers={"api-key": "k"}) as client:
        assert (await client.post("/sim/reset")).status_code == 200
        yield client
        await client.patch(
            "/sim/deployments/ptu",
            json={"error_rate": 0, "timeout_rate": 0, "spike_rate": 0, "ttft_ms": 0, "tbt_ms": 0},
        )


async def test_state_shape_and_priority_counters(http: httpx2.AsyncClient) -> None:
    for priority in ("low", "low", "high"):
        response = await http.post(
            CHAT.format("ptu"), json=BODY, headers={"x-ptu-priority": priority}
        )
        assert response.status_code == 200
    await http.post(CHAT.format("ptu"), json=BODY)
    state = (await http.get("/sim/state")).json()
    assert isinstance(state["time"], float)
    ptu = state["deployments"]["ptu"]
    assert ptu["kind"] == "provisioned" and ptu["model"] == "gpt-4o-mini"
    assert ptu["capacity_tpm"] == 15 * 37_000 and ptu["window_s"] == 60.0
    assert 0.0 <= ptu["utilization"] < 0.01  # four tiny calls drain within milliseconds
    assert ptu["requests"] == 4 and ptu["throttled"] == 0 and ptu["errors"] == 0
    assert ptu["in_flight"] == 0
    assert ptu["prompt_tokens"] > 0 and ptu["completion_tokens"] > 0
    assert ptu["by_priority"]["low"]["requests"] == 2
    assert ptu["by_priority"]["high"]["requests"] == 1
    assert ptu["by_priority"]["unlabelled"]["requests"] == 1
    assert (
        sum(p["completion_tokens"] for p in ptu["by_priority"].values()) == ptu["completion_tokens"]
    )
    assert state["deployments"]["paygo"]["kind"] == "standard"


async def test_in_flight_and_peaks(http: httpx2.AsyncClient) -> None:
    assert (await http.patch("/sim/deployments/ptu", json={"ttft_ms": 400})).status_code == 200
    calls = [
        asyncio.create_task(
            http.post(CHAT.format("ptu"), json=BODY, headers={"x-ptu-priority": "low"})
        )
        for _ in range(3)
    ]
    await asyncio.sleep(0.2)
    during = (await http.get("/sim/state")).json()["deployments"]["ptu"]
    assert during["in_flight_by_priority"] == {"low": 3} and during["in_flight"] == 3
    assert all(r.status_code == 200 for r in await asyncio.gather(*calls))
    after = (await http.get("/sim/state", params={"reset_peaks": 1})).json()["deployments"]["ptu"]
    assert after["in_flight_by_priority"] == {"low": 0}
    assert after["peak_in_flight_by_priority"] == {"low": 3}
    again = (await http.get("/sim/state")).json()["deployments"]["ptu"]
    assert again["peak_in_flight_by_priority"] == {"low": 0}


async def test_fault_injection(http: httpx2.AsyncClient) -> None:
    await http.patch("/sim/deployments/ptu", json={"error_rate": 1.0})
    failed = await http.post(CHAT.format("ptu"), json=BODY)
    assert failed.status_code == 500 and "message" in failed.json()["error"]
    assert "azure-openai-deployment-utilization" in failed.headers
    await http.patch("/sim/deployments/ptu", json={"error_rate": 0.0, "timeout_rate": 1.0})
    timed_out = await http.post(CHAT.format("ptu"), json=BODY)
    assert timed_out.status_code == 408
    assert timed_out.json() == {
        "error": {"code": "Timeout", "message": "The operation was timeout."}
    }
    await http.patch(
        "/sim/deployments/ptu", json={"timeout_rate": 0.0, "spike_rate": 1.0, "spike_ms": 300}
    )
    started = time.monotonic()
    assert (await http.post(CHAT.format("ptu"), json=BODY)).status_code == 200
    assert time.monotonic() - started >= 0.3
    state = (await http.get("/sim/state")).json()["deployments"]["ptu"]
    assert state["errors"] == 2 and state["requests"] == 3 and state["utilization"] < 0.01


async def test_patch_and_reset(http: httpx2.AsyncClient) -> None:
    patched = await http.patch("/sim/deployments/ptu", json={"ptus": 30, "tbt_ms": 1})
    assert patched.status_code == 200
    assert patched.json()["capacity_tpm"] == 30 * 37_000 and patched.json()["tbt_ms"] == 1.0
    assert (await http.patch("/sim/deployments/paygo", json={"tpm": 5_000})).json()[
        "capacity_tpm"
    ] == 5_000
    assert (await http.patch("/sim/deployments/ptu", json={"error_rate": 2})).status_code == 400
    assert (await http.patch("/sim/deployments/ptu", json={"tpm": 10})).status_code == 400
    assert (await http.patch("/sim/deployments/ptu", content=b"[")).status_code == 400
    assert (await http.patch("/sim/deployments/nope", json={})).status_code == 404
    await http.post(CHAT.format("ptu"), json=BODY)
    reset = (await http.post("/sim/reset")).json()["deployments"]["ptu"]
    assert reset["requests"] == 0 and reset["utilization"] == 0.0 and reset["by_priority"] == {}
    await http.patch("/sim/deployments/ptu", json={"ptus": 15})
    await http.patch("/sim/deployments/paygo", json={"tpm": 100_000})


async def test_retry_after_ms_is_exact_with_a_controlled_clock() -> None:
    clock = FakeClock(1_000.0)
    config = SimConfig.from_specs(["tiny=gpt-4o:15"], window_s=10, tbt_ms=0, ttft_ms=0)
    with SimulatorThread(config, clock=clock) as server:
        async with httpx2.AsyncClient(base_url=server.url, headers={"api-key": "k"}) as http:
            fill = {"messages": BODY["messages"], "max_tokens": 3_000}
            first = await http.post(
                CHAT.format("tiny"), json=fill, headers={"x-sim-completion-tokens": "3000"}
            )
            assert first.status_code == 200
            refused = await http.post(CHAT.format("tiny"), json=BODY)
            assert refused.status_code == 429
            wait_ms = int(refused.headers["retry-after-ms"])
            clock.advance(wait_ms / 1000.0 - 0.01)
            assert (await http.post(CHAT.format("tiny"), json=BODY)).status_code == 429
            clock.advance(0.01)
            admitted = await http.post(CHAT.format("tiny"), json=BODY)
            assert admitted.status_code == 200
            assert float(admitted.headers["azure-openai-deployment-utilization"][:-1]) < 110
