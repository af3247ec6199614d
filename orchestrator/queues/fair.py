"""Fair share over per-tenant queues: a `Queue` that serves tenants by weight, in tokens.

Each tenant has its own queue per deployment (Redis: its own stream, see
`keys.tenant_queue`; Event Hubs: its own event hub). A put goes to the tenant's
queue and then sets the tenant's backlog flag in the deployment's fair-share hash
(`keys.fair_share`). A receive reads that hash, lets `orchestrator.tenants.fair.plan`
order the backlogged tenants (least tokens-per-weight first, idle tenants lifted
to the floor) and takes the first message it finds in that order. Because the
state is in Redis, N workers share one schedule.

A flag is a hint, never the truth: a tenant whose queue turns out empty has its
flag cleared and its queue looked at once more, so a put racing the clear is never
missed (the put writes the message before the flag). Every `sweep_s` the receive
also looks at every known tenant, which finds messages whose flag was never set
(a producer that died between its two writes) and entries left by dead consumers.
A flagged tenant whose queue gives nothing keeps its flag while its queue still holds
entries (in flight, or released by a consumer and not yet taken over), so a
`release` reaches any consumer at once rather than at the next sweep.

Charging (tokens / weight added to the tenant's virtual service) is done by
`FairShareState.charge`, called from the worker's token accounting: the estimate
when a call starts, the difference to the actual usage when it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import redis.asyncio as aioredis
import structlog

from orchestrator.core import keys
from orchestrator.core.batching import Batcher
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import QueueUnavailable, StoreUnavailable
from orchestrator.core.schemas import WORK_CLASSES, QueuedRequest, WorkClass
from orchestrator.queues.base import BulkPut, Delivery, Queue
from orchestrator.queues.classes import depth_by_class
from orchestrator.tenants import fair

log = structlog.get_logger(__name__)

SEP = "|"
"""Between the tenant and the inner queue's token in a delivery token (tenant names have none)."""
_RAISE_TO = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if cur < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""


class FairShareState:
    """The deployment's fair-share hash: backlog flags, virtual service, floor."""

    def __init__(self, redis: aioredis.Redis, deployment: str) -> None:
        self.redis = redis
        self.key = keys.fair_share(deployment)
        self._raise_to = redis.register_script(_RAISE_TO)
        self._charges: Batcher[str, tuple[str, float, float]] = Batcher(self._write_charges)

    @redis_boundary("fair-share state")
    async def read(
        self,
    ) -> tuple[set[str], set[str], dict[str, float], float, dict[str, float]]:
        """(backlogged, known, virtual service, floor, pending part of the virtual service)."""
        fields = await self.redis.hgetall(self.key)
        active: set[str] = set()
        known: set[str] = set()
        virtual: dict[str, float] = {}
        pending: dict[str, float] = {}
        floor = 0.0
        for raw, value in fields.items():
            name = raw.decode() if isinstance(raw, bytes) else raw
            kind, _, tenant = name.partition(":")
            if kind == "a":
                active.add(tenant)
            elif kind == "v":
                virtual[tenant] = float(value)
            elif kind == "p":
                pending[tenant] = float(value)
            elif name == "floor":
                floor = float(value)
            if tenant:
                known.add(tenant)
        return active, known, virtual, floor, pending

    @redis_boundary("fair-share state")
    async def flag(self, tenant: str) -> None:
        """Mark `tenant` backlogged."""
        await self.redis.hset(self.key, f"a:{tenant}", "1")

    @redis_boundary("fair-share state")
    async def unflag(self, tenant: str) -> None:
        """Mark `tenant` idle."""
        await self.redis.hdel(self.key, f"a:{tenant}")

    @redis_boundary("fair-share state")
    async def apply(self, decision: fair.Plan) -> None:
        """Write a plan's lifts and floor (each only ever raised, so racing workers agree)."""
        for tenant, value in decision.lifts.items():
            await self._raise_to(keys=[self.key], args=[f"v:{tenant}", repr(value)])
        await self._raise_to(keys=[self.key], args=["floor", repr(decision.floor)])

    async def charge(
        self, tenant: str, tokens: float, weight: float, *, pending: float = 0.0
    ) -> None:
        """Add `tokens` (negative: a refund) worth of service to `tenant`, of which
        `pending` tokens (negative: settled now) are an estimate for a call in flight.

        Charges that arrive while one write is in flight are summed per tenant and written
        together in the next (`core/batching`); returns once its charge is written.
        """
        amount, estimate = fair.charge(tokens, weight), fair.charge(pending, weight)
        if amount or estimate:
            await self._charges.submit(self.key, (tenant, amount, estimate))

    @redis_boundary("fair-share state")
    async def _write_charges(self, key: str, charges: Sequence[tuple[str, float, float]]) -> None:
        totals: dict[str, tuple[float, float]] = {}
        for tenant, amount, estimate in charges:
            was = totals.get(tenant, (0.0, 0.0))
            totals[tenant] = (was[0] + amount, was[1] + estimate)
        async with self.redis.pipeline(transaction=True) as pipe:
            for tenant, (amount, estimate) in totals.items():
                pipe.hincrbyfloat(key, f"v:{tenant}", amount)
                pipe.hincrbyfloat(key, f"p:{tenant}", estimate)
            await pipe.execute()


class FairShareQueue:
    """A `Queue` over one inner queue per tenant, served in weighted fair share."""

    def __init__(
        self,
        redis: aioredis.Redis,
        deployment: str,
        inner: Callable[[str], Queue],
        *,
        tenants: Mapping[str, float] | None = None,
        sweep_s: float = 5.0,
        poll_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deployment = deployment
        self.state = FairShareState(redis, deployment)
        self._make_inner = inner
        self._inner: dict[str, Queue] = {}
        self._configured = set(tenants or {"default": 1.0})
        self._sweep_s = sweep_s
        self._poll_s = poll_s
        self._clock = clock
        self._next_sweep = 0.0

    def inner(self, tenant: str) -> Queue:
        """The tenant's own queue (made on first use)."""
        queue = self._inner.get(tenant)
        if queue is None:
            queue = self._inner[tenant] = self._make_inner(tenant)
        return queue

    async def put(self, message: QueuedRequest) -> None:
        """Put on the tenant's queue, then flag the tenant backlogged; durable when it returns."""
        await self.inner(message.tenant).put(message)
        try:
            await self.state.flag(message.tenant)
        except StoreUnavailable as exc:
            # the message is stored; the next sweep finds it even without its flag
            log.warning("fair_flag_failed", tenant=message.tenant, error=repr(exc))

    async def put_many(self, messages: Sequence[QueuedRequest]) -> None:
        """`put` them, per tenant in one go when its queue can, then flag each tenant once."""
        by_tenant: dict[str, list[QueuedRequest]] = {}
        for message in messages:
            by_tenant.setdefault(message.tenant, []).append(message)
        for tenant, group in by_tenant.items():
            inner = self.inner(tenant)
            if isinstance(inner, BulkPut):
                await inner.put_many(group)
            else:
                for message in group:
                    await inner.put(message)
            try:
                await self.state.flag(tenant)
            except StoreUnavailable as exc:
                log.warning("fair_flag_failed", tenant=tenant, error=repr(exc))

    async def receive(self, max_count: int, timeout_s: float) -> list[Delivery]:
        """The next messages in fair-share order, waiting up to `timeout_s` for the first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        while True:
            try:
                active, known, virtual, floor, pending = await self.state.read()
            except StoreUnavailable as exc:
                raise QueueUnavailable(f"fair-share state {self.state.key}: {exc}") from exc
            known |= self._configured
            now = self._clock()
            sweep = now >= self._next_sweep
            if sweep:
                self._next_sweep = now + self._sweep_s
            decision = fair.plan(active, virtual, floor, pending)
            if decision.lifts or decision.floor != floor:
                await self._apply(decision)
            order = list(decision.order)
            if sweep:
                order += sorted(known - active)
            for tenant in order:
                got = await self._take(tenant, max_count, flagged=tenant in active)
                if got:
                    return got
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            if len(known) == 1 and not active:
                # one tenant: block on its queue as a plain queue would
                (only,) = known
                return self._wrap(only, await self.inner(only).receive(max_count, remaining))
            await asyncio.sleep(min(self._poll_s, remaining))

    async def ack(self, delivery: Delivery) -> None:
        """Ack on the tenant's queue. Idempotent."""
        tenant, inner = self._unwrap(delivery)
        await self.inner(tenant).ack(inner)

    async def release(self, delivery: Delivery) -> None:
        """Release on the tenant's queue, then flag the tenant so any consumer looks there."""
        tenant, inner = self._unwrap(delivery)
        await self.inner(tenant).release(inner)
        await self._flag(tenant)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter through the tenant's queue (the deployment's dead-letter store)."""
        tenant, inner = self._unwrap(delivery)
        await self.inner(tenant).dead_letter(inner, reason)

    async def depth(self) -> int:
        """Messages waiting or in flight, summed over the known tenants."""
        return sum((await self.depth_by_class()).values())

    async def depth_by_class(self) -> dict[WorkClass, int]:
        """Messages waiting or in flight per queued class, summed over the known tenants."""
        try:
            _, known, _, _, _ = await self.state.read()
        except StoreUnavailable as exc:
            raise QueueUnavailable(f"fair-share state {self.state.key}: {exc}") from exc
        total = dict.fromkeys(WORK_CLASSES, 0)
        for tenant in sorted(known | self._configured):
            for work_class, n in (await depth_by_class(self.inner(tenant))).items():
                total[work_class] += n
        return total

    async def close(self) -> None:
        """Close every tenant's queue."""
        for queue in self._inner.values():
            await queue.close()

    async def _take(self, tenant: str, max_count: int, *, flagged: bool) -> list[Delivery]:
        queue = self.inner(tenant)
        got = await queue.receive(max_count, 0.0)
        if got or not flagged:
            if got and not flagged:
                await self._flag(tenant)
            return self._wrap(tenant, got)
        if await queue.depth() > 0:
            return []  # entries in flight or released: keep the flag, look again next time
        # empty: clear the flag, then look once more (a put between the two reads re-flags)
        try:
            await self.state.unflag(tenant)
        except StoreUnavailable as exc:
            raise QueueUnavailable(f"fair-share state {self.state.key}: {exc}") from exc
        got = await queue.receive(max_count, 0.0)
        if got:
            await self._flag(tenant)
        return self._wrap(tenant, got)

    async def _flag(self, tenant: str) -> None:
        try:
            await self.state.flag(tenant)
        except StoreUnavailable as exc:
            log.warning("fair_flag_failed", tenant=tenant, error=repr(exc))

    async def _apply(self, decision: fair.Plan) -> None:
        try:
            await self.state.apply(decision)
        except StoreUnavailable as exc:
            raise QueueUnavailable(f"fair-share state {self.state.key}: {exc}") from exc

    @staticmethod
    def _wrap(tenant: str, deliveries: list[Delivery]) -> list[Delivery]:
        return [replace(d, token=f"{tenant}{SEP}{d.token}") for d in deliveries]

    @staticmethod
    def _unwrap(delivery: Delivery) -> tuple[str, Delivery]:
        tenant, _, token = delivery.token.partition(SEP)
        return tenant, replace(delivery, token=token)

    def __repr__(self) -> str:
        return (
            f"<FairShareQueue deployment={self.deployment} tenants={sorted(self._inner)} "
            f"sweep_s={self._sweep_s}>"
        )
