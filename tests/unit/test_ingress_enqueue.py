"""The enqueue path: a burst of low-priority requests is put a bounded number at a time."""

from __future__ import annotations

import asyncio
import time

from ingress.metrics import IngressMetrics
from ingress.queued.enqueue import PUTS, Enqueuer
from orchestrator.core.schemas import QueuedRequest
from tests.unit.worker_fakes import DEPLOYMENT, make_rig


class CountingQueue:
    """Wraps the rig's queue and counts the puts in progress at once."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.now = self.peak = 0

    async def put(self, message: QueuedRequest) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.001)  # the round trip
        await self.inner.put(message)  # type: ignore[attr-defined]
        self.now -= 1


async def test_a_burst_of_enqueues_runs_a_bounded_number_at_once() -> None:
    rig = make_rig()
    queue = CountingQueue(rig.queue)
    enqueuer = Enqueuer(
        rig.results,
        {DEPLOYMENT.name: queue},  # type: ignore[dict-item]
        IngressMetrics(),
        clock=time.time,
    )
    reqs = [
        enqueuer.build(DEPLOYMENT.name, {"messages": []}, tenant="t", ttl_s=600)
        for _ in range(PUTS * 3)
    ]
    await asyncio.gather(*(enqueuer.put(r) for r in reqs))
    assert queue.peak == PUTS  # the burst waited in the process, not for the Redis pool
    for req in reqs:  # every one registered and queued
        state = await rig.results.get(req.id)
        assert state is not None and state.status == "queued"
    assert await rig.queue.depth() == len(reqs)
