"""Which Redis the suite runs against: one server, or a 3-master cluster (`PTU_TEST_REDIS=cluster`).

`make test` runs the whole suite on one server, then the Redis-facing integration
subset again on the cluster (see the Makefile); `PTU_TEST_REDIS=cluster pytest
tests/integration` runs all of it on the cluster.
"""

from __future__ import annotations

import os
from typing import Any

import redis as sync_redis
import redis.asyncio as aioredis
from redis.cluster import RedisCluster as SyncRedisCluster

from orchestrator.core import redis_client

CLUSTER = os.environ.get("PTU_TEST_REDIS") == "cluster"


def connect(url: str, **options: Any) -> aioredis.Redis:
    """An async client of the suite's Redis, single or cluster."""
    return redis_client.connect(
        url,
        cluster=CLUSTER,
        socket_timeout_s=options.pop("socket_timeout", None),
        decode_responses=options.pop("decode_responses", False),
    )


def connect_sync(url: str) -> sync_redis.Redis:
    """A blocking client of the suite's Redis, for process-level tests."""
    if CLUSTER:
        return SyncRedisCluster.from_url(url)  # type: ignore[return-value]
    return sync_redis.Redis.from_url(url)


def env(url: str) -> dict[str, str]:
    """The `PTU_REDIS_*` variables of a process that should use the suite's Redis."""
    return {"PTU_REDIS_URL": url, "PTU_REDIS_CLUSTER": "true" if CLUSTER else "false"}
