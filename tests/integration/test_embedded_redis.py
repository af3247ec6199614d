from __future__ import annotations

import redis.asyncio as aioredis

from devstack.embedded_redis import EmbeddedRedis


async def test_fixture_server_is_real(redis: aioredis.Redis) -> None:
    await redis.xadd("s", {"k": "v"})
    await redis.xgroup_create("s", "g", id="0")
    got = await redis.xreadgroup("g", "c", {"s": ">"}, count=1, block=100)
    assert got and got[0][1][0][1] == {b"k": b"v"}


def test_embedded_server_starts_and_stops() -> None:
    server = EmbeddedRedis().start()
    try:
        assert "running=True" in repr(server)
    finally:
        server.stop()
    assert "running=False" in repr(server)
