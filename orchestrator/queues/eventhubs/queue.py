"""Event Hubs queue: one event hub per deployment, consumed with partition load balancing.

put sends the message JSON with the request id as partition key: ids are random,
so a deployment's traffic spreads over every partition and each worker replica
owns a share of it (the deployment name as key would pin it all to one partition,
hence one replica). Ordering across requests does not matter.

receive reads an internal bounded buffer fed by `EventHubConsumerClient.receive`
(starting at "-1" where no checkpoint exists, AZURE_FACTS §8); the bound pushes
back on the SDK when the worker is slower than the hub. Work completes out of
order, so each partition keeps a `LowWaterMark` and checkpoints only up to the
last event whose predecessors are all acknowledged. Event Hubs has no dead-letter
store: dead letters go to the deployment's Redis dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient, PartitionContext
from azure.eventhub.exceptions import EventHubError
from redis.exceptions import RedisError

from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import QueueUnavailable, StoreUnavailable
from orchestrator.core.schemas import QueuedRequest
from orchestrator.core.views import CheckpointView, EventHubsView
from orchestrator.queues import dead_letter
from orchestrator.queues.base import Delivery, read_delivery
from orchestrator.queues.eventhubs.auth import EventHubAuth
from orchestrator.queues.eventhubs.checkpoint_redis import RedisCheckpointStore
from orchestrator.queues.eventhubs.low_water_mark import LowWaterMark

log = structlog.get_logger(__name__)
DELIVERY_COUNT_TTL_S = 7 * 86_400


@dataclass(frozen=True, slots=True)
class _Received:
    delivery: Delivery
    partition_id: str
    generation: int


@contextlib.asynccontextmanager
async def _mapped(operation: str, eventhub: str) -> AsyncIterator[None]:
    """Translate SDK and Redis errors into QueueUnavailable at the backend boundary."""
    try:
        yield
    except (EventHubError, RedisError) as exc:
        log.warning(
            "queue_eventhubs_error", operation=operation, eventhub=eventhub, error=repr(exc)
        )
        raise QueueUnavailable(f"event hub {eventhub}: {operation} failed: {exc}") from exc


def hub_name(prefix: str, deployment: str, tenant: str = "default", work_class: str = "low") -> str:
    """The request hub of `deployment`: `{PTU_EVENTHUB_NAME}-{deployment}`; a tenant other
    than `default` has a hub of its own, `...-{deployment}-{tenant}`; Batch API lines (the
    `batch` class) go to the hub's `.batch` twin, `...-{deployment}[-{tenant}].batch`."""
    hub = f"{prefix}-{deployment}"
    hub = hub if tenant == "default" else f"{hub}-{tenant}"
    return hub if work_class == "low" else f"{hub}.{work_class}"


@dataclass(frozen=True, slots=True)
class HubClients:
    """The SDK clients of one hub and where its checkpoints live."""

    producer: EventHubProducerClient
    consumer: EventHubConsumerClient
    checkpoint_store: Any
    namespace: str
    """Fully qualified namespace host: the checkpoint store's key for this hub."""
    consumer_group: str = "$Default"


class EventHubsQueue:
    """A `Queue` on an Azure Event Hub (the Azure production backend)."""

    def __init__(
        self,
        hub: HubClients,
        redis: aioredis.Redis,
        deployment: str,
        consumer: str,
        *,
        buffer_size: int = 64,
    ) -> None:
        self.producer = hub.producer
        self.consumer_client = hub.consumer
        self.redis = redis
        self.deployment = deployment
        self.consumer = consumer
        self.consumer_group = hub.consumer_group
        self._released: deque[_Received] = deque()
        self.namespace = hub.namespace
        self.checkpoint_store = hub.checkpoint_store
        self.eventhub = hub.consumer.eventhub_name
        self._buffer: asyncio.Queue[_Received] = asyncio.Queue(maxsize=buffer_size)
        self._marks: dict[str, LowWaterMark[tuple[PartitionContext, EventData]]] = {}
        self._generation: dict[str, int] = {}
        self._receiver: asyncio.Task[None] | None = None
        self._closers: list[Any] = []

    @classmethod
    def from_view(
        cls,
        hub: str,
        views: tuple[EventHubsView, CheckpointView],
        redis: aioredis.Redis,
        deployment: str,
        consumer: str,
    ) -> EventHubsQueue:
        """Clients for `hub` (see `hub_name`), checkpoints in Redis (or in Blob storage with
        `PTU_EVENTHUB_CHECKPOINT_STORE=blob`, which KEDA reads)."""
        namespace, checkpoints = views
        store: Any = RedisCheckpointStore(redis)
        closers: list[Any] = []
        if checkpoints.store == "blob":
            from orchestrator.queues.eventhubs.checkpoint_blob import blob_checkpoint_store

            store, closers = blob_checkpoint_store(checkpoints)
        group = namespace.consumer_group
        auth = EventHubAuth(namespace)
        clients = HubClients(
            auth.producer(hub), auth.consumer(hub, group, store), store, auth.namespace, group
        )
        queue = cls(clients, redis, deployment, consumer)
        queue._closers = [*closers, *auth.closers]
        return queue

    async def put(self, message: QueuedRequest) -> None:
        """Send the message JSON, partition key = request id; durable when acknowledged."""
        async with _mapped("put", self.eventhub):
            await self.producer.send_event(
                EventData(message.model_dump_json()), partition_key=message.id
            )

    async def receive(self, max_count: int, timeout_s: float) -> list[Delivery]:
        """Take up to `max_count` buffered events, waiting up to `timeout_s` for the first."""
        self._ensure_receiving()
        out: list[Delivery] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        while self._released and len(out) < max_count:
            again = self._released.popleft()
            if self._generation.get(again.partition_id) == again.generation:
                out.append(again.delivery)
        while not out:
            remaining = deadline - loop.time()
            try:
                first = (
                    self._buffer.get_nowait()
                    if remaining <= 0 or not self._buffer.empty()
                    else await asyncio.wait_for(self._buffer.get(), timeout=remaining)
                )
            except (TimeoutError, asyncio.QueueEmpty):
                self._raise_if_receiver_failed()
                return []
            batch = [first]
            while len(batch) < max_count and not self._buffer.empty():
                batch.append(self._buffer.get_nowait())
            # events of a partition lost since they were buffered belong to its new owner
            out = [
                r.delivery for r in batch if self._generation.get(r.partition_id) == r.generation
            ]
        return out

    async def ack(self, delivery: Delivery) -> None:
        """Mark done; checkpoint the partition up to its low-water mark. Idempotent."""
        partition_id, offset = delivery.token.split(":", 1)
        mark = self._marks.get(partition_id)
        advanced = mark.ack(offset) if mark is not None else None
        if advanced is None:
            return
        context, event = advanced
        async with _mapped("checkpoint", self.eventhub):
            await context.update_checkpoint(event)

    async def release(self, delivery: Delivery) -> None:
        """Hand the event to this consumer's next `receive` (Event Hubs cannot redeliver one
        event); the checkpoint stays behind it. Dropped when the partition moved away."""
        partition_id, offset = delivery.token.split(":", 1)
        mark = self._marks.get(partition_id)
        if mark is None or not mark.holds(offset):
            return
        count = await self._count_delivery(partition_id, offset)
        again = Delivery(message=delivery.message, token=delivery.token, delivery_count=count)
        self._released.append(_Received(again, partition_id, self._generation.get(partition_id, 0)))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """XADD the message and reason to the Redis dead-letter stream, then ack."""
        payload = delivery.payload or delivery.message.model_dump_json()
        await self._dead_letter_raw(delivery.token, payload, reason, delivery.delivery_count)
        dead_letter.logged(self.deployment, delivery, reason)
        await self.ack(delivery)

    async def depth(self) -> int:
        """Events enqueued after each partition's checkpoint (waiting or in flight)."""
        async with _mapped("depth", self.eventhub):
            stored = await self.checkpoint_store.list_checkpoints(
                self.namespace, self.eventhub, self.consumer_group
            )
            checkpoints = {c["partition_id"]: c for c in stored}
            total = 0
            for pid in await self.consumer_client.get_partition_ids():
                props = await self.consumer_client.get_partition_properties(pid)
                if props.get("is_empty"):
                    continue
                checkpoint = checkpoints.get(pid)
                done = (
                    int(checkpoint["sequence_number"])
                    if checkpoint and checkpoint.get("sequence_number") is not None
                    else int(props["beginning_sequence_number"]) - 1
                )
                total += max(0, int(props["last_enqueued_sequence_number"]) - done)
            return total

    async def close(self) -> None:
        """Stop receiving (ownership is released); unacked events return from the checkpoint."""
        with contextlib.suppress(EventHubError):
            await self.consumer_client.close()
        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receiver
            self._receiver = None
        with contextlib.suppress(EventHubError):
            await self.producer.close()
        for closer in self._closers:
            await closer.close()

    # -- internals ---------------------------------------------------------------------

    def _ensure_receiving(self) -> None:
        if self._receiver is None:
            self._receiver = asyncio.create_task(self._receive_forever())

    def _raise_if_receiver_failed(self) -> None:
        task = self._receiver
        if task is not None and task.done() and not task.cancelled():
            exc = task.exception()
            self._receiver = None  # the next receive() starts over
            raise QueueUnavailable(f"event hub {self.eventhub}: receiver stopped: {exc!r}")

    async def _receive_forever(self) -> None:
        await self.consumer_client.receive(
            on_event=self._on_event,
            starting_position="-1",
            prefetch=max(self._buffer.maxsize, 1),
            on_partition_close=self._on_partition_close,
            on_error=self._on_error,
        )

    async def _on_event(self, context: PartitionContext, event: EventData | None) -> None:
        if event is None:
            return
        pid, offset = context.partition_id, str(event.offset)
        mark = self._marks.setdefault(pid, LowWaterMark())
        generation = self._generation.setdefault(pid, 0)
        mark.track(offset, (context, event))
        token = f"{pid}:{offset}"
        count = await self._count_delivery(pid, offset)
        payload = event.body_as_str()
        delivery = read_delivery(payload, token, count, self.deployment)
        if delivery is None:
            reason = "unreadable message without a request id"
            await self._dead_letter_raw(token, payload, reason, count)
            log.error("poison_message_dead_lettered", eventhub=self.eventhub, token=token)
            advanced = mark.ack(offset)
            if advanced is not None:
                await context.update_checkpoint(advanced[1])
            return
        await self._buffer.put(_Received(delivery, pid, generation))

    async def _on_partition_close(self, context: PartitionContext, reason: Any) -> None:
        pid = context.partition_id
        self._generation[pid] = self._generation.get(pid, 0) + 1
        self._marks.pop(pid, None)
        log.info(
            "eventhub_partition_closed", eventhub=self.eventhub, partition=pid, reason=str(reason)
        )

    async def _on_error(self, context: PartitionContext | None, error: Exception) -> None:
        pid = context.partition_id if context is not None else None
        log.warning(
            "eventhub_receive_error", eventhub=self.eventhub, partition=pid, error=repr(error)
        )

    async def _count_delivery(self, pid: str, offset: str) -> int:
        try:
            return await self._incr_delivery(keys.eventhub_deliveries(self.eventhub, pid, offset))
        except StoreUnavailable as exc:
            log.warning("delivery_count_unavailable", eventhub=self.eventhub, error=repr(exc))
            return 1

    @redis_boundary("event hub delivery counts")
    async def _incr_delivery(self, key: str) -> int:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, DELIVERY_COUNT_TTL_S)
            count, _ = await pipe.execute()
        return int(count)

    async def _dead_letter_raw(self, token: str, payload: str, reason: str, count: int) -> None:
        async with _mapped("dead_letter", self.eventhub):
            async with self.redis.pipeline(transaction=False) as pipe:
                dead_letter.add(pipe, self, payload, reason, token, count)
                await pipe.execute()

    def __repr__(self) -> str:
        tracked = sum(len(m) for m in self._marks.values())
        return (
            f"<EventHubsQueue eventhub={self.eventhub} consumer={self.consumer} "
            f"partitions={len(self._marks)} unacked={tracked} buffered={self._buffer.qsize()}>"
        )
