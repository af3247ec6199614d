"""The in-memory twin's redelivery model, driven by an injected clock (no sleeps)."""

from __future__ import annotations

import time

import pytest

from orchestrator.core import keys
from orchestrator.core.schemas import QueuedRequest
from orchestrator.queues.memory import InMemoryQueue
from tests.support.clock import FakeClock


def message(i: int) -> QueuedRequest:
    return QueuedRequest(
        id=f"r{i}", deployment="d", body={}, reply_key=keys.reply(f"r{i}"),
        enqueued_at=time.time(), deadline=time.time() + 60,
    )  # fmt: skip


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_unacked_comes_back_after_visibility(clock: FakeClock) -> None:
    q = InMemoryQueue("d", visibility_s=30.0, clock=clock)
    await q.put(message(1))
    [d1] = await q.receive(5, timeout_s=0)
    assert d1.delivery_count == 1
    clock.now += 29.9
    assert await q.receive(5, timeout_s=0) == []
    clock.now += 0.2
    [d2] = await q.receive(5, timeout_s=0)
    assert (d2.message, d2.token, d2.delivery_count) == (d1.message, d1.token, 2)
    await q.ack(d2)
    clock.now += 100
    assert await q.receive(5, timeout_s=0) == []
    assert await q.depth() == 0


@pytest.mark.parametrize(
    ("advance", "expected_ids"),
    [(0.0, ["r3"]), (9.9, ["r3"]), (10.0, ["r1", "r2", "r3"])],
)
async def test_only_expired_deliveries_return(
    clock: FakeClock, advance: float, expected_ids: list[str]
) -> None:
    q = InMemoryQueue("d", visibility_s=10.0, clock=clock)
    await q.put(message(1))
    await q.put(message(2))
    await q.receive(2, timeout_s=0)
    await q.put(message(3))
    clock.now += advance
    got = await q.receive(10, timeout_s=0)
    assert [d.message.id for d in got] == expected_ids


async def test_dead_letter_records_reason_and_acks(clock: FakeClock) -> None:
    q = InMemoryQueue("d", visibility_s=1.0, clock=clock)
    await q.put(message(1))
    [d] = await q.receive(1, timeout_s=0)
    await q.dead_letter(d, "boom")
    await q.dead_letter(d, "again")  # already gone: not recorded twice
    assert [(m.id, reason) for m, reason in q.dead_letters] == [("r1", "boom")]
    clock.now += 5
    assert await q.receive(1, timeout_s=0) == []


async def test_repr_is_live(clock: FakeClock) -> None:
    q = InMemoryQueue("gpt", visibility_s=10.0, clock=clock)
    await q.put(message(1))
    await q.put(message(2))
    await q.receive(1, timeout_s=0)
    assert repr(q) == "<InMemoryQueue deployment=gpt depth=2 in_flight=1 dead_letters=0>"
    clock.now += 11
    assert "in_flight=0" in repr(q)
