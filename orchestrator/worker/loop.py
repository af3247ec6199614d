"""The long-lived low-priority consumer: one lane per deployment, concurrency set by the throttle.

Each lane loops: lease a throttle slot, THEN receive (so a full or paused
deployment never takes work off the queue), and hand each message with its slot to a
task of the dispatcher. Once a message came, when the limit leaves room for more, the
lane leases up to `receive_batch - 1` more slots in one script and takes as many
messages as are waiting in one read, giving back the slots the queue had none for (an
idle lane holds one slot, as before). Task references live in a set with a
discard callback. A task of its own renews the slot leases (every `renew_s`, with
nothing else in its way: a
crashed worker's slots are free once its leases run out, so leases are short and
a late renewal must not let a live one lapse); a housekeeping task refreshes the
metrics and writes the heartbeat `ptu status` reads. On stop: stop pulling, give in-flight calls
`drain_timeout_s` to finish, cancel the rest (their messages stay unacknowledged
and are delivered again), then wait for any shielded result writes.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator.core.errors import QueueUnavailable, StoreUnavailable
from orchestrator.core.incarnation import Incarnation
from orchestrator.core.retry import outage_delay_s
from orchestrator.core.runtime import every, pause
from orchestrator.core.schemas import WorkClass
from orchestrator.queues.base import Queue
from orchestrator.queues.classes import depth_by_class
from orchestrator.queues.dead_letter import DeadLetterStore
from orchestrator.worker import receive
from orchestrator.worker.dispatch import Dispatcher
from orchestrator.worker.heartbeats import Heartbeats
from orchestrator.worker.protocols import SlotLimiter

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from orchestrator.worker.metrics import WorkerMetrics

log = structlog.get_logger(__name__)

THROUGHPUT_WINDOW_S = 10.0


@dataclass(slots=True)
class Lane:
    """Everything one deployment's consumer loop needs."""

    deployment: str
    queue: Queue
    throttle: SlotLimiter
    dispatcher: Dispatcher
    pool: str | None = None
    """The pool whose queue this member's lane drains (`core.pools`), if any."""

    @property
    def queue_name(self) -> str:
        """The name the lane's queue (and its dead letters) are kept under."""
        return self.pool if self.pool is not None else self.deployment


@dataclass(frozen=True, slots=True)
class WorkerTiming:
    """Intervals of the worker loop (seconds)."""

    drain_timeout_s: float = 30.0
    receive_timeout_s: float = 1.0
    heartbeat_s: float = 1.0
    renew_s: float = 0.5
    """How often slot leases are renewed (a fraction of `PTU_SLOT_LEASE_S`)."""
    heartbeat_ttl_s: float = 15.0
    """`ptu status` ignores heartbeats older than this."""
    receive_batch: int = 16
    """Most messages one receive takes (each with its own slot, leased together)."""


class Worker:
    """Runs the lanes of one worker process until stopped."""

    def __init__(
        self,
        worker_id: str,
        lanes: Sequence[Lane],
        *,
        timing: WorkerTiming | None = None,
        redis: aioredis.Redis | None = None,
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.worker_id = worker_id
        self.lanes = list(lanes)
        self.timing = timing or WorkerTiming()
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._tasks: dict[str, set[asyncio.Task[Any]]] = {lane.deployment: set() for lane in lanes}
        self._waiting: dict[str, bool] = {lane.deployment: False for lane in lanes}
        """Lanes holding a slot while they wait for a message: capacity ready, not work."""
        self._heartbeats = Heartbeats(redis) if redis is not None else None
        self._dead_letters = (
            {lane.deployment: DeadLetterStore(redis, lane.queue_name) for lane in lanes}
            if redis is not None
            else {}
        )
        self.incarnation = (
            Incarnation(redis, on_loss=self._count_loss, clock=clock) if redis is not None else None
        )
        """Watches the Redis data set's identity: a wipe is logged and counted."""

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then drain and return."""
        log.info("worker_started", worker_id=self.worker_id, deployments=self._names())
        for lane in self.lanes:
            await lane.throttle.open()
        lanes_done = asyncio.Event()
        house = asyncio.create_task(self._housekeeping(lanes_done), name="worker-housekeeping")
        renewer = asyncio.create_task(self._renew_leases(lanes_done), name="worker-leases")
        try:
            async with asyncio.TaskGroup() as group:
                for lane in self.lanes:
                    group.create_task(self._run_lane(lane, stop), name=f"lane-{lane.deployment}")
        finally:
            # ended between two beats rather than cancelled in the middle of a write
            lanes_done.set()
            await asyncio.gather(house, renewer, return_exceptions=True)
            for lane in self.lanes:
                await lane.throttle.close()
            await self._forget_heartbeat()
        log.info("worker_stopped", worker_id=self.worker_id)

    def in_flight(self, deployment: str) -> int:
        """Dispatch tasks of a deployment still running."""
        return len(self._tasks.get(deployment, ()))

    async def _run_lane(self, lane: Lane, stop: asyncio.Event) -> None:
        tasks = self._tasks[lane.deployment]
        failures = 0
        while not stop.is_set():
            if not await self._fresh_allowed(lane, stop):
                continue
            slot = await lane.throttle.acquire(stop)
            if slot is None:
                break
            slots = [slot]
            self._waiting[lane.deployment] = True
            try:
                deliveries = await receive.first(lane.queue, stop, self.timing.receive_timeout_s)
                if deliveries:  # work is there: as much more as the limit allows at once
                    breaker = lane.dispatcher.breaker
                    closed = breaker is None or breaker.state == "closed"
                    slots += await receive.more_slots(
                        lane.throttle, self.timing.receive_batch, closed
                    )
                    deliveries += await receive.waiting(lane.queue, len(slots) - 1, lane.deployment)
            except QueueUnavailable as exc:
                await receive.release(lane.throttle, slots)
                failures += 1
                delay = outage_delay_s(failures, self._rand())
                log.warning("queue_receive_failed", deployment=lane.deployment, error=str(exc))
                await pause(delay, stop, sleep=self._sleep)
                continue
            except BaseException:
                await asyncio.shield(receive.release(lane.throttle, slots))
                raise
            finally:
                self._waiting[lane.deployment] = False
            failures = 0
            await receive.release(lane.throttle, slots[len(deliveries) :])
            for delivery, held in zip(deliveries, slots, strict=False):
                if self._metrics is not None and delivery.delivery_count == 1:
                    waited = self._clock() - delivery.message.enqueued_at
                    self._metrics.lag(lane.deployment, waited, delivery.message.work_class)
                task = asyncio.create_task(
                    lane.dispatcher.handle(delivery, held, stop), name=f"req-{delivery.message.id}"
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await self._drain(lane, tasks)

    async def _fresh_allowed(self, lane: Lane, stop: asyncio.Event) -> bool:
        """May the lane take a fresh message now? If not, wait a little and say no.

        Not while retries of this worker wait for a slot (they go first, so the oldest
        requests are not the ones that run out of time), and not while the deployment's
        breaker is open; half-open, one message is taken to be the probe unless one of
        ours already waits to be it.
        """
        dispatcher = lane.dispatcher
        breaker = dispatcher.breaker
        wait = 0.0
        if dispatcher.ready_retries > 0:
            wait = 0.05
        elif breaker is not None:
            await breaker.sync()
            if breaker.state == "open":
                wait = min(max(breaker.open_left(), 0.05), 1.0)
            elif breaker.state == "half_open" and dispatcher.gated > 0:
                wait = 0.25
        if wait <= 0:
            return True
        await pause(wait, stop, sleep=self._sleep)
        return False

    async def _drain(self, lane: Lane, tasks: set[asyncio.Task[Any]]) -> None:
        if tasks:
            log.info("worker_draining", deployment=lane.deployment, in_flight=len(tasks))
            everything = asyncio.ensure_future(asyncio.wait(set(tasks)))
            timer = asyncio.ensure_future(self._sleep(self.timing.drain_timeout_s))
            await asyncio.wait({everything, timer}, return_when=asyncio.FIRST_COMPLETED)
            for fut in (everything, timer):
                fut.cancel()
            await asyncio.gather(everything, timer, return_exceptions=True)
            left = [t for t in tasks if not t.done()]
            if left:
                log.warning("worker_drain_timeout", deployment=lane.deployment, cancelled=len(left))
                for task in left:
                    task.cancel()
                await asyncio.gather(*left, return_exceptions=True)
        pending = list(lane.dispatcher.bookkeeping)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _renew_leases(self, done: asyncio.Event) -> None:
        """Keep this worker's slot leases alive (each throttle logs its own failures)."""

        async def renew() -> None:
            for lane in self.lanes:
                await lane.throttle.renew()

        await every(
            self.timing.renew_s, renew, done, event="lease_renewal_failed", sleep=self._sleep
        )

    async def _housekeeping(self, done: asyncio.Event) -> None:
        """Check Redis's incarnation and publish the heartbeat, now and every `heartbeat_s`."""

        async def tick() -> None:
            if self.incarnation is not None:
                await self.incarnation.check()
            await self._heartbeat()

        await every(
            self.timing.heartbeat_s, tick, done, event="heartbeat_failed",
            errors=(StoreUnavailable, QueueUnavailable), first="now", sleep=self._sleep,
        )  # fmt: skip

    async def snapshot(self) -> dict[str, Any]:
        """The heartbeat document: per deployment limit, in-flight, reading, counts, rate."""
        now = self._clock()
        lanes: dict[str, Any] = {}
        for lane in self.lanes:
            throttle, dispatcher = lane.throttle, lane.dispatcher
            recent = [t for t in dispatcher.completions if now - t <= THROUGHPUT_WINDOW_S]
            dispatcher.completions[:] = recent
            reading = throttle.reading
            try:
                by_class: dict[WorkClass, int] | None = await depth_by_class(lane.queue)
            except QueueUnavailable:
                by_class = None
            depth = None if by_class is None else sum(by_class.values())
            try:
                global_in_flight: int | None = await throttle.global_in_flight()
            except StoreUnavailable:
                global_in_flight = None
            lanes[lane.deployment] = {
                "pool": lane.pool,
                "limit": throttle.limit,
                "in_flight": throttle.in_flight,
                # of those slots, the one a lane holds while it waits for a message; and the
                # messages taken off the queue and not finished (calling, or waiting to retry)
                "waiting": int(self._waiting[lane.deployment]),
                "requests_in_flight": self.in_flight(lane.deployment),
                "global_in_flight": global_in_flight,
                "queue_depth": depth,
                "queue_depth_by_class": by_class,
                "utilisation": None if reading is None else reading.value,
                "reading_age_s": None if reading is None else reading.age(now),
                "source": None if reading is None else reading.source,
                "throughput_per_s": len(recent) / THROUGHPUT_WINDOW_S,
                "circuit": None if dispatcher.breaker is None else dispatcher.breaker.state,
                **dispatcher.counts,
            }
            if self._metrics is not None:
                self._metrics.observe_throttle(
                    lane.deployment, throttle.limit, throttle.in_flight, reading, now
                )
                if by_class is not None:
                    self._metrics.queue_depth.labels(lane.queue_name).set(sum(by_class.values()))
                    for work_class, n in by_class.items():
                        self._metrics.class_depth.labels(lane.queue_name, work_class).set(n)
                letters = self._dead_letters.get(lane.deployment)
                if letters is not None:
                    try:
                        depth_dl = await letters.depth()
                        self._metrics.dead_letters.labels(lane.queue_name).set(depth_dl)
                    except StoreUnavailable as exc:
                        log.debug("dead_letter_depth_failed", error=repr(exc))
                if global_in_flight is not None:
                    self._metrics.global_in_flight.labels(lane.deployment).set(global_in_flight)
        return {
            "worker_id": self.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "at": now,
            "ttl_s": self.timing.heartbeat_ttl_s,
            "deployments": lanes,
        }

    async def _heartbeat(self) -> None:
        doc = await self.snapshot()
        if self._heartbeats is not None:
            await self._heartbeats.publish(self.worker_id, doc)

    async def _forget_heartbeat(self) -> None:
        if self._heartbeats is None:
            return
        try:
            await asyncio.shield(self._heartbeats.forget(self.worker_id))
        except StoreUnavailable as exc:
            log.warning("heartbeat_remove_failed", error=repr(exc))

    def _count_loss(self) -> None:
        if self._metrics is not None:
            self._metrics.redis_data_lost.inc()

    def _names(self) -> list[str]:
        return [lane.deployment for lane in self.lanes]

    def __repr__(self) -> str:
        lanes = " ".join(
            f"{lane.deployment}:limit={lane.throttle.limit},in_flight={self.in_flight(lane.deployment)}"
            for lane in self.lanes
        )
        return f"<Worker id={self.worker_id} {lanes}>"
