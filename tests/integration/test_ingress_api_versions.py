"""An older api-version streams through the ingress as it does against Azure: the usage
option is asked for only where the version takes it, and the stream's usage is counted
from what was relayed otherwise (the simulator refuses the option as Azure does)."""

from __future__ import annotations

import re
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

MESSAGES: Any = [{"role": "user", "content": "Tell me about spillover."}]
OLD = "2024-06-01"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(["ptu=gpt-4o-mini:15"], tbt_ms=0.0, ttft_ms=0.0)
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    settings = load_settings(
        redis_url=redis_url,
        redis_cluster=redis_mode.CLUSTER,
        azure_openai_endpoint=sim.url,
        azure_openai_api_key="k",
        deployments=[{"name": "ptu", "model": "gpt-4o-mini", "ptus": 15}],
    )
    with IngressThread(settings) as server:
        yield server


def test_the_simulator_refuses_stream_options_before_2024_10_21(sim: SimulatorThread) -> None:
    old = openai.AzureOpenAI(azure_endpoint=sim.url, api_key="k", api_version=OLD, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        old.chat.completions.create(
            model="ptu", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    assert list(old.chat.completions.create(model="ptu", messages=MESSAGES, stream=True))


@pytest.mark.parametrize("version", [OLD, "2024-10-21"])
def test_a_stream_works_through_the_ingress_whatever_the_version(
    ingress: IngressThread, version: str
) -> None:
    client = openai.AzureOpenAI(
        azure_endpoint=ingress.url, api_key="k", api_version=version, max_retries=0
    )
    chunks = list(client.chat.completions.create(model="ptu", messages=MESSAGES, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content and all(c.usage is None for c in chunks)  # the client asked for none
    metrics = httpx2.get(ingress.url + "/metrics").text
    completion = re.search(
        r'ptu_tenant_tokens_total\{deployment="ptu",kind="completion",priority="high",'
        r'tenant="default"\} (\d+)',
        metrics,
    )
    assert completion is not None and int(completion.group(1)) > 0  # usage was counted
