"""The one way every process connects to Redis: single server or Redis Cluster, with retry.

`PTU_REDIS_CLUSTER=true` builds a `redis.asyncio.RedisCluster` from `PTU_REDIS_URL`
(any node: the client discovers the others and follows MOVED/ASK); otherwise a plain
client on a blocking pool. A cluster's URL may name several seed nodes, comma-separated
(`redis://:pw@h1:7000,h2:7001,h3:7002/0`): the client starts from whichever answers, so a
process started after one node died still finds the cluster. Both are typed as
`redis.asyncio.Redis`: the commands the project uses exist on both with the same
signatures, and every multi-key script or transaction stays in one slot (`orchestrator.core.keys`).

Retry: redis-py connections retry nothing unless told to, so the first command on
every pooled connection after a Redis restart or failover would fail although the
server is back. Every client here retries connection and timeout errors with
capped jittered backoff (about `RETRY_BUDGET_S` in all). A retried command may have
been applied once already; every write the project sends is idempotent or made so:
SET/HSET/ZADD of the same values, scripts guarded by a marker (results, estimate
charges, slot leases), and XADD whose duplicate entry is a redelivery the
exactly-once result write absorbs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.credentials import CredentialProvider
from redis.exceptions import (
    ConnectionError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
    RedisClusterException,
    TimeoutError,
)

from orchestrator.core.deployments import seed_urls

if TYPE_CHECKING:
    from orchestrator.core.views import RedisView

RETRIES = 8
RETRY_BASE_S = 0.05
RETRY_CAP_S = 2.0
RETRY_BUDGET_S = 7.0
"""Roughly the sum of the backoff caps: long enough for a local restart or an Azure
failover's reconnect, short enough that a caller learns of an outage in seconds."""


def retry_policy() -> Retry:
    """Capped jittered backoff on connection and timeout errors."""
    return Retry(
        ExponentialWithJitterBackoff(base=RETRY_BASE_S, cap=RETRY_CAP_S),
        RETRIES,
        supported_errors=(ConnectionError, TimeoutError, OSError),  # type: ignore[arg-type]
    )


class ClusterClient(RedisCluster):
    """`RedisCluster` whose unreachable cluster is a `ConnectionError` like a single server's.

    redis-py raises `RedisClusterException`, which is no `RedisError`, when no node
    answers or the slots are not covered: every store's boundary (`core/boundary`, which
    makes a 503, a paused throttle or a warning of it) would miss it and the caller would
    see a 500. Misuse (a cross-slot transaction, a bad pipeline) stays as it is.
    """

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except (CrossSlotTransactionError, InvalidPipelineStack):
            raise
        except RedisClusterException as exc:
            raise ConnectionError(f"Redis Cluster unavailable: {exc}") from exc


def connect(
    url: str,
    *,
    cluster: bool = False,
    max_connections: int | None = None,
    pool_timeout_s: float | None = None,
    socket_timeout_s: float | None = None,
    decode_responses: bool = False,
    credential_provider: CredentialProvider | None = None,
) -> aioredis.Redis:
    """A client for `url`; `cluster` selects Redis Cluster. Connects lazily (no I/O here).

    `credential_provider` authenticates each connection instead of the URL's password
    (`PTU_REDIS_AUTH=entra`, `core/redis_entra`).
    """
    options: dict[str, Any] = {
        "retry": retry_policy(),
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": 5.0,
        "decode_responses": decode_responses,
        "health_check_interval": 30,
        "credential_provider": credential_provider,
    }
    if cluster:
        first, *others = seed_urls(url)
        seeds = [ClusterNode(*_host_port(seed)) for seed in others]
        client = ClusterClient.from_url(
            first, max_connections=max_connections or 1024, startup_nodes=seeds, **options
        )
        # same command surface; see the module docstring
        return cast(aioredis.Redis, client)
    if max_connections is not None:
        # a blocking pool waits for a free connection instead of failing when all are in use
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout_s, **options
        )
        # not `from_pool`: the client must see the provider to re-authenticate the pool
        pooled = aioredis.Redis(connection_pool=pool, credential_provider=credential_provider)
        pooled.auto_close_connection_pool = True
        return pooled
    return aioredis.Redis.from_url(url, **options)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or 6379


def connect_view(
    view: RedisView, *, max_connections: int | None = None, pool_timeout_s: float | None = None
) -> aioredis.Redis:
    """A client for the configured Redis: `settings.redis` (URL, cluster or not, auth)."""
    provider: CredentialProvider | None = None
    if view.auth == "entra":
        from orchestrator.core.redis_entra import default_redis_credentials

        provider = default_redis_credentials()
    return connect(
        view.url,
        cluster=view.cluster,
        max_connections=max_connections,
        pool_timeout_s=pool_timeout_s,
        credential_provider=provider,
    )


def socket_timeout(client: aioredis.Redis) -> float | None:
    """The read timeout a client's connections use (None: no timeout)."""
    if isinstance(client, RedisCluster):
        value = client.get_connection_kwargs().get("socket_timeout")
    else:
        value = client.connection_pool.connection_kwargs.get("socket_timeout")
    return float(value) if value else None


def is_cluster(client: aioredis.Redis) -> bool:
    """True for a Redis Cluster client."""
    return isinstance(client, RedisCluster)
