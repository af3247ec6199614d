"""The ingress's upstream client keeps its connections in several small pools: concurrent
calls are spread over all of them, each pool holding its share, and every call answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx2
import pytest

from ingress.chat.shards import ShardedTransport
from simulator.config import SimConfig
from simulator.server import SimulatorThread

DEP = "ptu"
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs([f"{DEP}=gpt-4o-mini:50"], window_s=10.0, tbt_ms=0, ttft_ms=50)
    with SimulatorThread(config) as server:
        yield server


async def test_concurrent_calls_are_spread_over_every_pool(sim: SimulatorThread) -> None:
    limits = httpx2.Limits(max_connections=64, max_keepalive_connections=32)
    transport = ShardedTransport(limits, shards=4)
    url = f"{sim.url}/openai/deployments/{DEP}/chat/completions?api-version=2024-10-21"
    async with httpx2.AsyncClient(transport=transport, timeout=30) as client:
        answers = await asyncio.gather(
            *(client.post(url, json=BODY, headers={"api-key": "k"}) for _ in range(32))
        )
        assert [a.status_code for a in answers] == [200] * 32
        held = [len(pool._pool.connections) for pool in transport.pools]
    assert held == [8, 8, 8, 8]  # 32 calls at once, dealt in turn: 8 connections per pool


def test_each_pool_gets_its_share_of_the_limits() -> None:
    limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=200)
    transport = ShardedTransport(limits, shards=8)
    assert len(transport.pools) == 8
    assert transport.pools[0]._pool._max_connections == 125
    assert transport.pools[0]._pool._max_keepalive_connections == 25
    with pytest.raises(ValueError, match="shards"):
        ShardedTransport(limits, shards=0)
