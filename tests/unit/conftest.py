"""Fixtures of the unit tests: no I/O beyond an in-process fake Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest


@pytest.fixture
async def fake_redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    """An in-process Redis (Lua included) for logic that a real server adds nothing to."""
    client = fakeredis.FakeAsyncRedis()
    try:
        yield client
    finally:
        await client.aclose()
