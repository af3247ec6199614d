"""The simulator's reality knobs over loopback: utilisation model, header modes, bypass load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest

from simulator.app import Simulator
from simulator.config import SimConfig
from simulator.server import SimulatorThread

CHAT = "/openai/deployments/ptu/chat/completions?api-version=2024-10-21"
BG_CHAT = CHAT.replace("/ptu/", "/bg/")
HEADER = "azure-openai-deployment-utilization"
UTIL = "AzureOpenAIProvisionedManagedUtilizationV2"
# gpt-4o-mini 1 PTU: 37,000 TPM -> 616.7/s; a 2 s window -> 100 % = 1,233.3
FULL = 37_000 / 60 * 2


def body(max_tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        ["ptu=gpt-4o-mini:1", "bg=gpt-4o-mini:1", "paygo=gpt-4o:100000:standard"],
        window_s=2.0,
        tbt_ms=0,
        ttft_ms=0,
        seed=3,
        utilisation_header="noisy",
        monitor_lag_s=0,
    )
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture
async def http(sim: SimulatorThread) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=sim.url, headers={"api-key": "k"}) as client:
        await client.patch(
            "/sim/deployments/ptu",
            json={
                "utilisation_model": "bucket",
                "utilisation_header": "exact",
                "header_lag_s": 3,
                "header_smoothing_s": 5,
            },
        )
        await client.patch("/sim/deployments/ptu", json={"background_share": 0})
        assert (await client.post("/sim/reset")).status_code == 200
        yield client


async def fill(http: httpx2.AsyncClient, chat: str = CHAT) -> httpx2.Response:
    """One call whose charge (prompt + 3 x 420 forced outputs) passes 100 %, then a refused one."""
    first = await http.post(chat, json=body(420), headers={"x-sim-completion-tokens": "420"})
    assert first.status_code == 200
    return await http.post(chat, json=body(5))


async def test_cli_mode_reaches_the_deployment(sim: SimulatorThread) -> None:
    async with httpx2.AsyncClient(base_url=sim.url) as client:
        state = (await client.get("/sim/state")).json()["deployments"]
    assert "utilisation_header" in state["ptu"] and "utilisation_header" not in state["paygo"]
    simulator: Simulator = sim.app.state.simulator  # type: ignore[attr-defined]
    assert simulator.config.utilisation_header == "noisy"


@pytest.mark.parametrize(("model", "low", "high"), [("bucket", 0.0, 0.2), ("sliding", 1.9, 2.0)])
async def test_retry_after_is_honest_for_each_model(
    http: httpx2.AsyncClient, model: str, low: float, high: float
) -> None:
    assert (
        await http.patch("/sim/deployments/ptu", json={"utilisation_model": model})
    ).status_code == 200
    refused = await fill(http)
    assert refused.status_code == 429
    wait_s = int(refused.headers["retry-after-ms"]) / 1000
    assert low <= wait_s <= high  # bucket: drains the overshoot; sliding: waits out the window
    assert int(refused.headers["retry-after"]) >= 1
    assert float(refused.headers[HEADER].rstrip("%")) >= 100.0
    await asyncio.sleep(wait_s + 0.05)
    assert (await http.post(CHAT, json=body(5))).status_code == 200


async def test_sliding_reads_sustained_load_where_the_bucket_reads_nearly_nothing(
    http: httpx2.AsyncClient,
) -> None:
    readings: dict[str, float] = {}
    for model in ("bucket", "sliding"):
        await http.patch("/sim/deployments/ptu", json={"utilisation_model": model})
        await http.post("/sim/reset")
        for _ in range(8):  # ~40 a call: sliding ~25 %, bucket ~3 %
            reply = await http.post(CHAT, json=body(10), headers={"x-sim-completion-tokens": "10"})
            assert reply.status_code == 200
            await asyncio.sleep(0.1)
        readings[model] = (await http.get("/sim/state")).json()["deployments"]["ptu"]["utilization"]
    assert readings["sliding"] > readings["bucket"] + 0.1


async def test_header_absent_and_noisy(http: httpx2.AsyncClient) -> None:
    await http.patch("/sim/deployments/ptu", json={"utilisation_header": "absent"})
    assert HEADER not in (await http.post(CHAT, json=body(5))).headers
    refused = await fill(http)
    assert refused.status_code == 429 and HEADER not in refused.headers
    assert "retry-after-ms" in refused.headers  # the 429 still says how long
    await http.post("/sim/reset")
    await http.patch("/sim/deployments/ptu", json={"utilisation_header": "noisy"})
    await asyncio.sleep(1.2)  # a second of empty history
    await http.post(CHAT, json=body(420), headers={"x-sim-completion-tokens": "420"})
    lagged = await http.post(CHAT, json=body(5))  # true level now ~100 %, 1 s ago ~0 %
    assert lagged.status_code == 429
    assert float(lagged.headers[HEADER].rstrip("%")) <= 5.0


def shown(response: httpx2.Response) -> float:
    return float(response.headers[HEADER].rstrip("%"))


async def test_header_lagged_reports_the_level_of_lag_seconds_earlier(
    http: httpx2.AsyncClient,
) -> None:
    patched = await http.patch(
        "/sim/deployments/ptu",
        json={"utilisation_model": "sliding", "utilisation_header": "lagged", "header_lag_s": 1},
    )
    assert (patched.json()["utilisation_header"], patched.json()["header_lag_s"]) == ("lagged", 1)
    await asyncio.sleep(0.3)  # some empty past
    refused = await fill(http)  # the truth is now >= 100 % for the 2 s window
    assert refused.status_code == 429 and shown(refused) <= 5.0  # 1 s ago: empty
    await asyncio.sleep(1.3)
    later = await http.post(CHAT, json=body(5))
    assert later.status_code == 429 and shown(later) >= 100.0  # now the header has caught up


async def test_header_smoothed_follows_the_truth_with_its_time_constant(
    http: httpx2.AsyncClient,
) -> None:
    await http.patch(
        "/sim/deployments/ptu",
        json={"utilisation_model": "sliding", "utilisation_header": "smoothed"},
    )
    patched = await http.patch("/sim/deployments/ptu", json={"header_smoothing_s": 1.0})
    assert patched.json()["header_smoothing_s"] == 1.0
    await asyncio.sleep(0.3)
    refused = await fill(http)
    assert refused.status_code == 429 and shown(refused) <= 20.0  # the average has barely moved
    await asyncio.sleep(1.0)  # only the simulator's ticks advance the average meanwhile
    later = await http.post(CHAT, json=body(5))
    # after ~one time constant: 1 - e^-1 (63 %) of the ~103 % step, give or take the timing
    assert later.status_code == 429 and 45.0 <= shown(later) <= 90.0


async def test_background_share_is_charged_refused_and_counted_apart(
    http: httpx2.AsyncClient, sim: SimulatorThread
) -> None:
    # a deployment of its own, so this minute's Azure Monitor samples are only this test's
    await http.patch("/sim/deployments/bg", json={"utilisation_model": "sliding"})
    reply = await http.patch("/sim/deployments/bg", json={"background_share": 0.5})
    assert reply.json()["background"]["share"] == 0.5
    started = time.time()
    await asyncio.sleep(2.6)
    bg = (await http.get("/sim/state")).json()["deployments"]["bg"]
    assert bg["utilization"] == pytest.approx(0.5, abs=0.08)  # sliding: the share itself
    assert bg["background"]["requests"] >= 20 and bg["background"]["throttled"] == 0
    assert bg["requests"] == 0 and bg["throttled"] == 0 and bg["by_priority"] == {}
    simulator: Simulator = sim.app.state.simulator  # type: ignore[attr-defined]
    now = time.time()
    only_bg = {"ModelDeploymentName": ["bg"]}
    series = simulator.recorder.query(now + 3600, UTIL, started - 60, now + 1, only_bg)
    peak = max(p.maximum or 0.0 for p in series[0].points)
    assert 35.0 <= peak <= 60.0  # Azure Monitor reports the same truth
    requests = simulator.recorder.query(
        now + 3600, "AzureOpenAIRequests", started - 60, now + 1, only_bg, split=()
    )
    assert sum(p.total or 0.0 for p in requests[0].points) >= 20  # and sees the other app
    refused = await fill(http, BG_CHAT)  # push it to 100 %: the other app gets 429s too
    assert refused.status_code == 429
    await asyncio.sleep(0.5)
    bg = (await http.get("/sim/state")).json()["deployments"]["bg"]
    assert bg["background"]["throttled"] > 0
    assert bg["throttled"] == 1  # only ours
    await http.patch("/sim/deployments/bg", json={"background_share": 0})


async def test_background_profile_square_wave(http: httpx2.AsyncClient) -> None:
    reply = await http.patch("/sim/deployments/ptu", json={"background_profile": "square:0,0.5,1"})
    assert reply.status_code == 200
    assert reply.json()["background"] | {"requests": 0} == {
        "share": 0.0, "profile": "square:0,0.5,1", "requests": 0, "throttled": 0,
        "prompt_tokens": 0, "completion_tokens": 0,
    }  # fmt: skip
    await asyncio.sleep(2.2)  # LOW for 1 s, HIGH for 1 s, LOW again
    bg = (await http.get("/sim/state")).json()["deployments"]["ptu"]["background"]
    assert 6 <= bg["requests"] <= 14  # ~10 calls a second, in the HIGH second only
    bad = await http.patch("/sim/deployments/ptu", json={"background_profile": "square:0,0.5"})
    assert bad.status_code == 400 and "HALF_PERIOD_S" in bad.json()["error"]["message"]


async def test_patch_errors(http: httpx2.AsyncClient) -> None:
    bad = await http.patch("/sim/deployments/ptu", json={"utilisation_model": "rate"})
    assert bad.status_code == 400 and "bucket, sliding" in bad.json()["error"]["message"]
    bad = await http.patch(
        "/sim/deployments/ptu", json={"utilisation_header": "lagged", "header_lag_s": 900}
    )
    assert bad.status_code == 400 and "header_lag_s" in bad.json()["error"]["message"]
    state = (await http.get("/sim/state")).json()["deployments"]["ptu"]
    assert state["utilisation_header"] == "exact"  # a refused PATCH changes nothing
    standard = await http.patch("/sim/deployments/paygo", json={"background_share": 0.1})
    assert standard.status_code == 400
    assert "provisioned deployments only" in standard.json()["error"]["message"]


async def test_reset_forgets_monitor_history_only_when_asked(
    http: httpx2.AsyncClient, sim: SimulatorThread
) -> None:
    simulator: Simulator = sim.app.state.simulator  # type: ignore[attr-defined]
    await http.post(CHAT, json=body(5))
    await asyncio.sleep(1.2)  # at least one 1 Hz utilisation sample
    assert simulator.recorder.deployments()
    assert (await http.post("/sim/reset")).status_code == 200
    assert simulator.recorder.deployments()  # like Azure Monitor: the past stays
    assert (await http.post("/sim/reset", params={"metrics": 1})).status_code == 200
    assert simulator.recorder.deployments() in ([], ["bg", "ptu"])  # a tick may land after
    assert all(
        not p.count
        for p in simulator.recorder.query(
            time.time() + 3600, "AzureOpenAIRequests", time.time() - 60, time.time() + 1, split=()
        )[0].points
    )
