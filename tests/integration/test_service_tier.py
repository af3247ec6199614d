"""Service tiers: a spillover entry's `service_tier` is sent on the spilled call, and the
tier the deployment applied is counted (and logged), through the ingress, the simulator
over loopback and the unchanged `openai` SDK."""

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
        ["ptu=gpt-4o-mini:15", "prio=gpt-4o-mini:10000000:standard"], tbt_ms=0.0, ttft_ms=0.0
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
            {
                "name": "ptu", "model": "gpt-4o-mini", "ptus": 15,
                "spillover": {"name": "prio", "service_tier": "priority"},
            },
            {"name": "prio", "model": "gpt-4o-mini", "kind": "standard", "tpm": 10_000_000},
        ],
    )  # fmt: skip
    with IngressThread(settings) as server:
        yield server


def test_the_simulator_names_the_tier_it_applied(sim: SimulatorThread) -> None:
    client = openai.AzureOpenAI(
        azure_endpoint=sim.url, api_key="k", api_version="2024-10-21", max_retries=0
    )
    asked = {"messages": MESSAGES, "max_tokens": 5}
    standard = client.chat.completions.create(model="prio", service_tier="priority", **asked)
    assert standard.service_tier == "priority"
    provisioned = client.chat.completions.create(model="ptu", service_tier="priority", **asked)
    assert provisioned.service_tier == "default"
    assert client.chat.completions.create(model="prio", **asked).service_tier is None
    stream = client.chat.completions.create(model="prio", service_tier="flex", stream=True, **asked)
    assert {c.service_tier for c in stream if c.choices} == {"flex"}


def test_a_spilled_call_asks_for_the_entrys_tier_and_the_applied_tier_is_counted(
    sim: SimulatorThread, ingress: IngressThread
) -> None:
    httpx2.patch(f"{sim.url}/sim/deployments/ptu", json={"ptus": 0.001}).raise_for_status()
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="k", max_retries=0)
    served: list[tuple[str, set[str | None]]] = []
    for i in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model="ptu", messages=MESSAGES, max_tokens=10, stream=i % 2 == 1
        )
        if i % 2 == 1:
            tiers = {c.service_tier for c in raw.parse() if c.choices}
        else:
            tiers = {raw.parse().service_tier}
        served.append((raw.headers["x-ptu-deployment"], tiers))
    spilled = _spilled(sim)
    assert spilled >= 2 and [d for d, _ in served].count("prio") == spilled
    # every spilled call asked for the entry's tier, and got it; the PTU's calls asked none
    assert all(t == ({"priority"} if d == "prio" else {None}) for d, t in served)
    metrics = httpx2.get(ingress.url + "/metrics").text
    counted = (
        'ptu_service_tier_requests_total{deployment="prio",priority="high",service_tier="priority"}'
    )
    assert f"{counted} {float(spilled)}" in metrics


def _spilled(sim: SimulatorThread) -> int:
    state = httpx2.get(f"{sim.url}/sim/state").json()["deployments"]
    return int(state["prio"]["requests"])
