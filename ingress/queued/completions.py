"""One subscription per ingress process that wakes every call waiting for a result.

A waiting low-priority call (`Prefer: wait`) holds its HTTP connection until its result
is written. Holding a Redis connection or a blocking command per waiter would cap an
ingress at its pool size; instead each process runs one pattern subscription to every
result channel (`keys.RESULT_CHANNELS`: the exactly-once completion script publishes on
`keys.result_channel(id)` when it writes a result, `orchestrator.core.results`) and wakes
the asyncio futures of that request's waiters. A waiter costs a future and two reads:
it registers its future first, then reads the state, so a result written in between
still wakes it; on waking it reads the result.

Classic pub/sub reaches every node of a Redis Cluster (a `PUBLISH` is broadcast on the
cluster bus), so one pattern subscription on any node hears every result. A message sent
while the subscription is down is lost: every (re)subscription, ours after an error or
redis-py's own silent reconnect, therefore wakes all waiters, which read their state
again, so nothing is missed, only re-read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from orchestrator.core import keys
from orchestrator.core.redis_replies import text
from orchestrator.core.results import RequestState

log = structlog.get_logger(__name__)

LISTEN_S = 30.0
"""How long one read of the subscription blocks before it is issued again."""
RETRY_S = 1.0
"""Pause before subscribing again after the subscription failed."""

READS = 64
"""Waiters reading their state at once: thousands woken by one drain queue here, in the
process, instead of for the Redis pool (whose wait is bounded: a waiter that timed out
there would lose its answer)."""

Reader = Callable[[str], Awaitable[RequestState | None]]


class Completions:
    """Waiters per request id, woken by one shared subscription (`run`)."""

    __slots__ = ("_listening", "_reads", "_redis", "_sleep", "_waiting", "wakes")

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._redis = redis
        self._sleep = sleep
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._listening = False
        self._reads = asyncio.Semaphore(READS)
        self.wakes = 0
        """Waiters woken by a result's message (for tests and metrics)."""

    @property
    def waiting(self) -> int:
        """Calls waiting now."""
        return sum(len(f) for f in self._waiting.values())

    async def run(self) -> None:
        """Subscribe and wake waiters until cancelled; a lost subscription is made again."""
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            self._on_reconnect(pubsub)
            try:
                await self._redis.ping()  # a cluster client learns its slots before subscribing
                await pubsub.psubscribe(keys.RESULT_CHANNELS)
                self._listening = True
                self._wake_all()  # a result written while nobody listened: read again
                log.info("completions_subscribed", pattern=keys.RESULT_CHANNELS)
                while True:
                    message = await pubsub.get_message(timeout=LISTEN_S)
                    if message is not None and message.get("type") == "pmessage":
                        self.wake(keys.request_of_channel(text(message["channel"])))
            except (RedisError, OSError) as exc:
                log.warning("completions_subscription_lost", error=repr(exc))
            except Exception:  # the loop outlives any one failure: waiters depend on it
                log.exception("completions_subscription_failed")
            finally:
                self._listening = False
                await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
            self._wake_all()
            await self._sleep(RETRY_S)

    def _on_reconnect(self, pubsub: PubSub) -> None:
        """Wake every waiter when redis-py re-makes the subscription's connection by itself
        (its connection retry re-subscribes silently: what was published meanwhile is lost)."""
        hook = _Resubscribed(pubsub.on_connect, self._wake_all)
        # redis-py registers the instance's `on_connect` (a bound method) as the callback
        setattr(pubsub, "on_connect", hook.on_connect)  # noqa: B010

    def wake(self, request_id: str) -> None:
        """Wake every waiter of `request_id` (its result was written)."""
        for future in self._waiting.get(request_id, ()):
            if not future.done():
                future.set_result(None)
                self.wakes += 1

    def _wake_all(self) -> None:
        for futures in self._waiting.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)

    async def wait(self, request_id: str, timeout_s: float, read: Reader) -> RequestState | None:
        """The request's state once it has its result, or when `timeout_s` ran out
        (`read` gives the state: `ResultStore.get`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            future: asyncio.Future[None] = loop.create_future()
            waiters = self._waiting.setdefault(request_id, set())
            waiters.add(future)
            try:
                # registered before reading: a result written in between wakes `future`
                async with self._reads:
                    state = await read(request_id)
                if state is None or state.result is not None:
                    return state
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return state
                try:
                    async with asyncio.timeout(remaining):
                        await future
                except TimeoutError:
                    async with self._reads:
                        return await read(request_id)
            finally:
                waiters.discard(future)
                if not waiters:
                    self._waiting.pop(request_id, None)

    def __repr__(self) -> str:
        return (
            f"<Completions listening={self._listening} waiting={self.waiting} wakes={self.wakes}>"
        )


class _Resubscribed:
    """A subscription's connect callback: redis-py's own re-subscribe, then wake everyone."""

    __slots__ = ("__weakref__", "_resubscribe", "_wake_all")  # redis-py holds a WeakMethod

    def __init__(
        self, resubscribe: Callable[[Any], Awaitable[None]], wake_all: Callable[[], None]
    ) -> None:
        self._resubscribe = resubscribe
        self._wake_all = wake_all

    async def on_connect(self, connection: Any) -> None:
        await self._resubscribe(connection)
        log.info("completions_resubscribed")
        self._wake_all()
