"""Spillover: a saturated PTU deployment sends high priority to the standard one, no 429s."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from ingress.server import IngressThread
from orchestrator.core.settings import load_settings
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

MESSAGES: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        ["ptu=gpt-4o-mini:15", "paygo=gpt-4o-mini:10000000:standard", "solo=gpt-4o-mini:15"],
        tbt_ms=0.0,
        ttft_ms=0.0,
    )
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    settings = load_settings(
        redis_url=redis_url,
        redis_cluster=redis_mode.CLUSTER,
        azure_openai_endpoint=sim.url,
        azure_openai_api_key="k",
        deployments=[
            {"name": "ptu", "model": "gpt-4o-mini", "ptus": 15, "spillover": "paygo"},
            {"name": "paygo", "model": "gpt-4o-mini", "kind": "standard", "tpm": 10_000_000},
            {"name": "solo", "model": "gpt-4o-mini", "ptus": 15},
        ],
    )
    with IngressThread(settings) as server:
        yield server


def _saturate(sim: SimulatorThread, name: str) -> None:
    # 0.001 PTU drains 37 tokens/min: one admitted call keeps it above 100 % for minutes
    httpx2.patch(f"{sim.url}/sim/deployments/{name}", json={"ptus": 0.001}).raise_for_status()


def _state(sim: SimulatorThread) -> dict[str, Any]:
    state: dict[str, Any] = httpx2.get(f"{sim.url}/sim/state").json()["deployments"]
    return state


def test_saturated_ptu_spills_and_clients_see_no_429(
    sim: SimulatorThread, ingress: IngressThread
) -> None:
    _saturate(sim, "ptu")
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="k", max_retries=0)
    spilled = 0
    for i in range(12):
        raw = client.chat.completions.with_raw_response.create(
            model="ptu", messages=MESSAGES, max_tokens=20, stream=i % 3 == 0
        )
        assert raw.http_response.status_code == 200
        spilled += raw.headers.get("x-ptu-spillover") == "paygo"
        if i % 3 == 0:
            assert any(c.choices for c in raw.parse())
        else:
            assert raw.parse().choices[0].message.content
        assert raw.headers.get("x-ptu-deployment") in ("ptu", "paygo")
    state = _state(sim)
    assert spilled >= 11
    # the first 429's retry-after (minutes) opens the breaker: the rest skip the PTU
    assert 1 <= state["ptu"]["throttled"] <= 2
    assert state["paygo"]["requests"] == spilled
    metrics = httpx2.get(ingress.url + "/metrics").text
    hop = 'ptu_ingress_spillover_total{deployment="ptu",kind="chain",reason="429",to="paygo"}'
    assert hop + " 1.0" in metrics
    assert 'reason="circuit_open",to="paygo"}' in metrics
    assert 'ptu_ingress_circuit_state{deployment="ptu"} 2.0' in metrics


def test_without_spillover_the_429_and_its_headers_reach_the_client(
    sim: SimulatorThread, ingress: IngressThread
) -> None:
    _saturate(sim, "solo")
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="k", max_retries=0)
    client.chat.completions.create(model="solo", messages=MESSAGES, max_tokens=20)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="solo", messages=MESSAGES, max_tokens=20)
    headers = info.value.response.headers
    assert float(headers["retry-after-ms"]) > 0
    assert int(headers["retry-after"]) >= 1
    assert "x-ptu-spillover" not in headers
