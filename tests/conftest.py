"""Shared fixtures: a real Redis-compatible server (or 3-master cluster) for the whole session."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from devstack.embedded_cluster import EmbeddedCluster
from devstack.embedded_redis import EmbeddedRedis
from tests import redis_mode

PROCESSES = ("tests/e2e/", "tests/integration/test_bench_")
"""Tests that run whole stacks of processes: `make test` runs them one at a time."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group tests for `pytest -n N --dist loadgroup` (what `make test` runs): each file's
    tests stay together (its module fixtures are set up once), and the tests that run whole
    stacks of processes share one group, so two of them never compete for the cores."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        group = "processes" if path.startswith(PROCESSES) else path
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real server: PTU_TEST_REDIS_URL if set, else an embedded server or cluster."""
    given = os.environ.get("PTU_TEST_REDIS_URL")
    if given:
        yield given
        return
    if redis_mode.CLUSTER:
        with EmbeddedCluster() as cluster:
            yield cluster.url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An async client on a flushed database (every primary of a cluster)."""
    client = redis_mode.connect(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
def _clean_ptu_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the PTU_* (and OpenTelemetry) variables they set themselves."""
    for name in list(os.environ):
        if name.startswith("PTU_") and name not in ("PTU_TEST_REDIS_URL", "PTU_TEST_REDIS"):
            monkeypatch.delenv(name)
        elif name.startswith("OTEL_") or name == "APPLICATIONINSIGHTS_CONNECTION_STRING":
            monkeypatch.delenv(name)
