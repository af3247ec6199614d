"""Waiting for replicas: a write that is on a replica survives the master's failover.

Redis replicates asynchronously. A master that dies while its replica is a few seconds
behind takes those seconds of writes with it, and the promoted replica never had them:
a request answered `202` in that window would have no record (a poller's 404) or no queue
entry (`queued` forever). WAIT closes the window: it blocks until the given number of
replicas acknowledged every write *this connection* made, or its timeout passes, and
answers how many did.

"This connection" is the catch. The clients here pool connections, so the write and a
later WAIT rarely share one; and redis-py's cluster client sends a bare WAIT to every
master. So `confirm(key)` does not WAIT after the caller's write: it writes a barrier key
in `key`'s slot (`keys.replication_barrier`) and WAITs on the same connection, in one
non-transactional pipeline (on a cluster, the WAIT is pinned to the barrier's node with
`target_nodes`). A master's replication stream is one ordered log: a replica that holds
the barrier holds every write the master applied before it, the caller's included, since
the caller's write had returned before the barrier was sent.

How many replicas: `PTU_REDIS_WAIT_REPLICAS` (default 1), but never more than the node
has: on a cluster the replicas its slot map lists (a replica that fell behind or lost its
link still counts) or `ROLE` shows connected, whichever is more; on one server those
`ROLE` shows connected. So a server without
replicas (local, Azure Basic) pays nothing. Where `ROLE` is refused (managed services
hide their replica) the configured count is used. `PTU_REDIS_WAIT_TIMEOUT_MS` bounds
the wait; a shortfall is `False` (the caller decides: the ingress refuses the request
with 503, the worker logs and carries on, the reconciler catching what was lost).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import PipelineCommand
from redis.exceptions import RedisError, ResponseError

from orchestrator.core import keys, redis_client
from orchestrator.core.boundary import redis_boundary

log = structlog.get_logger(__name__)

ROLE_REFRESH_S = 10.0
"""How long a node's count of connected replicas is trusted."""
BARRIER_TTL_MS = 60_000
WAIT_SLACK_S = 2.0
"""Beyond WAIT's own timeout, how long a node may take to answer it."""


class Replication:
    """`confirm(key)`: the writes made to `key`'s node so far are on its replicas."""

    __slots__ = ("_clock", "_known", "_redis", "on_shortfall", "replicas", "timeout_ms")

    def __init__(
        self,
        redis: aioredis.Redis,
        replicas: int,
        timeout_ms: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_shortfall: Callable[[], None] | None = None,
    ) -> None:
        self._redis = redis
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._clock = clock
        self._known: dict[str, tuple[int, float]] = {}
        """node name ("" for one server) -> (connected replicas, when read)"""
        self.on_shortfall = on_shortfall

    @redis_boundary("replication")
    async def confirm(self, key: str) -> bool:
        """True when `key`'s node has passed every earlier write to the replicas asked for
        (or has none to pass it to); False when the timeout passed first."""
        if self.replicas <= 0:
            return True
        wanted = min(self.replicas, await self._known_replicas(key))
        if wanted <= 0:
            return True
        acked = await self._barrier_then_wait(key, wanted)
        if int(acked) >= wanted:
            return True
        log.warning(
            "redis_replication_shortfall",
            key=key,
            acked=int(acked),
            wanted=wanted,
            timeout_ms=self.timeout_ms,
        )
        if self.on_shortfall is not None:
            self.on_shortfall()
        return False

    async def _barrier_then_wait(self, key: str, wanted: int) -> int:
        """The barrier write and WAIT on one connection; how many replicas acknowledged.

        On a cluster both go to the node the slot map names, through that node's own
        pipeline: redis-py's cluster pipeline, retrying after a connection error, would
        send the WAIT to another node, whose fresh connection has written nothing and so
        would report every replica at once. Here an error or a redirection (the slot moved:
        a failover) counts as no acknowledgement.
        """
        barrier = keys.replication_barrier(key)
        if not redis_client.is_cluster(self._redis):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(barrier, "1", px=BARRIER_TTL_MS)
                pipe.execute_command("WAIT", wanted, self.timeout_ms)
                _, acked = await pipe.execute()
            return int(acked)
        cluster: Any = self._redis
        node = cluster.get_node_from_key(key)
        commands = [
            PipelineCommand(0, "SET", barrier, "1", "PX", BARRIER_TTL_MS),
            PipelineCommand(1, "WAIT", wanted, self.timeout_ms),
        ]
        try:
            async with asyncio.timeout(self.timeout_ms / 1000 + WAIT_SLACK_S):
                failed = await node.execute_pipeline(commands)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis_replication_wait_failed", key=key, error=repr(exc))
            return 0
        if failed:
            errors = [repr(c.result) for c in commands if isinstance(c.result, Exception)]
            log.warning("redis_replication_wait_failed", key=key, error=errors[0])
            return 0
        reply: Any = commands[1].result
        return int(reply)

    async def _known_replicas(self, key: str) -> int:
        """The replicas `key`'s node has: on a cluster the more of those its slot map lists
        (a replica cut off from its master still counts: that is the lag WAIT is for) and
        those `ROLE` shows connected (a replica that joined after the map was read, as the
        old master does after a failover); on one server those `ROLE` shows."""
        if not redis_client.is_cluster(self._redis):
            return await self._connected(None)
        cluster: Any = self._redis
        listed = max(0, len(cluster.nodes_manager.slots_cache.get(cluster.keyslot(key), ())) - 1)
        return max(listed, await self._connected(cluster.get_node_from_key(key)))

    async def _connected(self, node: Any) -> int:
        """Connected replicas by `ROLE` on `node` (None: the one server), re-read every
        `ROLE_REFRESH_S`; the configured count where `ROLE` is refused, 0 when it fails."""
        name = "" if node is None else str(node.name)
        now = self._clock()
        known = self._known.get(name)
        if known is not None and now - known[1] < ROLE_REFRESH_S:
            return known[0]
        target: dict[str, Any] = {} if node is None else {"target_nodes": node}
        try:
            role = await self._redis.execute_command("ROLE", **target)  # type: ignore[no-untyped-call]
        except ResponseError:  # a managed service that refuses ROLE: trust the setting
            count = self.replicas
        except (RedisError, OSError) as exc:
            log.warning("redis_role_failed", node=name, error=repr(exc))
            count = 0
        else:
            count = _replicas_in(role)
        if count == 0 and name not in self._known:  # said once per node
            log.info("redis_role_shows_no_replicas", node=name or "server", wanted=self.replicas)
        self._known[name] = (count, now)
        return count

    def __repr__(self) -> str:
        return f"<Replication replicas={self.replicas} timeout_ms={self.timeout_ms}>"


def _replicas_in(role: Any) -> int:
    """Connected replicas in a `ROLE` reply (`[b"master", offset, [[ip, port, offset]...]]`);
    0 for a replica or anything else."""
    if isinstance(role, dict) and len(role) == 1:  # a cluster client's reply by node
        role = next(iter(role.values()))
    if not isinstance(role, list | tuple) or len(role) < 3:
        return 0
    kind = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
    return len(role[2]) if kind == "master" and isinstance(role[2], list | tuple) else 0
