"""An in-memory Event Hub behind the SDK's consumer seams, for tests of our consumers.

No broker can stand in for Event Hubs (AZURE_FACTS §8), so the real
`EventHubConsumerClient.receive` / `receive_batch` -> `EventProcessor` path runs
with only its network seams (`_create_consumer`, `get_partition_ids`,
`get_partition_properties`) replaced, as the SDK's own processor tests do.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from azure.core.credentials import AzureNamedKeyCredential
from azure.eventhub import EventData
from azure.eventhub._constants import PROP_OFFSET, PROP_SEQ_NUMBER, PROP_TIMESTAMP
from azure.eventhub.aio import EventHubConsumerClient

NS, HUB, CG = "fake.servicebus.windows.net", "ptu-requests-d1", "$Default"


class FakeHub:
    """Partition logs: offset = 100 x sequence number, like a byte offset that is not the seq."""

    def __init__(self, partitions: int = 2) -> None:
        self.logs: dict[str, list[EventData]] = {str(p): [] for p in range(partitions)}

    def append(self, pid: str, body: str | bytes, *, enqueued_at: float | None = None) -> EventData:
        """Append an event to partition `pid`, enqueued at `enqueued_at` (default now)."""
        log = self.logs[pid]
        event = EventData(body)
        annotations = event._raw_amqp_message.annotations
        annotations[PROP_SEQ_NUMBER] = len(log)
        annotations[PROP_OFFSET] = str(len(log) * 100).encode()
        stamp = time.time() if enqueued_at is None else enqueued_at
        annotations[PROP_TIMESTAMP] = int(stamp * 1000)
        log.append(event)
        return event


class FakePartitionConsumer:
    """Replays one partition from a position, as the SDK's EventHubConsumer would.

    Like the SDK's transport, in batch mode it hands over up to `max_batch_size`
    events at once, and with `max_wait_time` it calls back with an empty batch
    (or None) after that long without events.
    """

    def __init__(self, hub: FakeHub, pid: str, position: Any, inclusive: bool, on_event: Any):
        self.log = hub.logs[pid]
        self.on_event = on_event
        self.last_callback = time.monotonic()
        if position in ("-1", -1, None):
            self.cursor = 0
        elif position == "@latest":  # the SDK's default without a checkpoint
            self.cursor = len(self.log)
        else:
            offsets = [int(e.offset) for e in self.log]
            after = [
                i
                for i, off in enumerate(offsets)
                if off > int(position) or (inclusive and off == int(position))
            ]
            self.cursor = after[0] if after else len(self.log)

    async def receive(
        self, batch: bool = False, max_batch_size: int = 300, max_wait_time: float | None = None
    ) -> None:
        if self.cursor < len(self.log):
            count = max_batch_size if batch else 1
            events = self.log[self.cursor : self.cursor + count]
            self.cursor += len(events)
            self.last_callback = time.monotonic()
            await self.on_event(events if batch else events[0])
            return
        if max_wait_time and time.monotonic() - self.last_callback > max_wait_time:
            self.last_callback = time.monotonic()
            await self.on_event([] if batch else None)
        await asyncio.sleep(0.02)

    async def close(self) -> None:
        return None


class FakeConsumerClient(EventHubConsumerClient):  # type: ignore[misc]
    """The real client (receive -> EventProcessor) with the network seams replaced."""

    def __init__(
        self, hub: FakeHub, store: Any, *, interval: float = 0.2, eventhub: str = HUB
    ) -> None:
        super().__init__(
            NS, eventhub, CG, AzureNamedKeyCredential("k", "v"),
            checkpoint_store=store, load_balancing_interval=interval,
        )  # fmt: skip
        self.hub = hub

    def _create_consumer(
        self, consumer_group, partition_id, event_position, on_event_received, **kw
    ):  # type: ignore[no-untyped-def]
        inclusive = kw.get("event_position_inclusive", False)
        return FakePartitionConsumer(
            self.hub, partition_id, event_position, inclusive, on_event_received
        )

    async def get_partition_ids(self) -> list[str]:
        return list(self.hub.logs)

    async def get_partition_properties(self, partition_id: str) -> dict[str, Any]:
        log = self.hub.logs[partition_id]
        return {
            "id": partition_id,
            "beginning_sequence_number": 0,
            "last_enqueued_sequence_number": len(log) - 1,
            "is_empty": not log,
        }
