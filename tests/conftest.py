"""Shared fixtures: a real Redis-compatible server for the whole session."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from bench.harness.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real server: PTU_TEST_REDIS_URL if set, else an embedded one."""
    given = os.environ.get("PTU_TEST_REDIS_URL")
    if given:
        yield given
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An async client on a flushed database."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
def _clean_ptu_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the PTU_* variables they set themselves."""
    for name in list(os.environ):
        if name.startswith("PTU_") and name != "PTU_TEST_REDIS_URL":
            monkeypatch.delenv(name)
