"""The upstream client's connections in several small pools, so a call's cost does not
grow with the number of connections open.

httpcore's pool walks every connection it holds when a request starts and when it ends
(expiry, surplus keep-alives, which idle connection to hand out): with one pool that is
O(open connections) per call, so one ingress process served fewer calls per second the
more clients it had (445 at 1 concurrent client, 168 at 128, measured with one pool). A
`ShardedTransport` deals the calls round-robin over `shards` pools of
`max_connections / shards` each; every pool holds about `concurrency / shards`
connections, and the walk is that long. Keep-alive works as before within each pool.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import httpx2

SHARDS = 8
"""Pools of the ingress's upstream client (1,000 connections: 125 each)."""


class ShardedTransport(httpx2.AsyncBaseTransport):
    """`shards` HTTP transports; each request goes to the next one in turn."""

    def __init__(self, limits: httpx2.Limits, *, shards: int = SHARDS, **transport: Any) -> None:
        if shards < 1:
            raise ValueError("shards must be positive")

        def part(n: int | None) -> int | None:
            return None if n is None else max(1, math.ceil(n / shards))

        each = httpx2.Limits(
            max_connections=part(limits.max_connections),
            max_keepalive_connections=part(limits.max_keepalive_connections),
            keepalive_expiry=limits.keepalive_expiry,
        )
        self.pools = [httpx2.AsyncHTTPTransport(limits=each, **transport) for _ in range(shards)]
        self._next = itertools.cycle(self.pools)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send `request` on the next pool's connections."""
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        """Close every pool."""
        for pool in self.pools:
            await pool.aclose()

    def __repr__(self) -> str:
        return f"<ShardedTransport shards={len(self.pools)}>"
