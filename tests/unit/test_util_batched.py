"""A process's token events in batches: one batch per deployment in flight, and with a guard
each batch's write fails open on its own deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.core.fail_open import FailOpen
from orchestrator.core.schemas import TokenEvent
from orchestrator.utilisation.batched import BatchedRecorder
from tests.support.token_events import event


class Inner:
    """Records the batches it is given; can fail or be held."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.fail = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def record_many(self, events: Sequence[TokenEvent]) -> None:
        await self.gate.wait()
        if self.fail:
            raise UtilisationUnavailable("estimate d: redis down")
        self.batches.append([f"{e.deployment}/{e.request_id}" for e in events])


async def test_events_of_a_deployment_wait_for_the_batch_in_flight_then_go_together() -> None:
    inner = Inner()
    recorder = BatchedRecorder(inner)
    inner.gate.clear()
    first = asyncio.create_task(recorder.record(event("a", "admit", 1)))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(recorder.record(event(r, "admit", 1))) for r in "bcd"]
    other = asyncio.create_task(recorder.record(event("x", "admit", 1, deployment="e")))
    await asyncio.sleep(0)
    inner.gate.set()
    await asyncio.gather(first, *rest, other)
    assert sorted(inner.batches) == [["d/a"], ["d/b", "d/c", "d/d"], ["e/x"]]


async def test_a_guarded_batch_fails_open_on_its_deadline_and_is_counted() -> None:
    inner = Inner()
    failed: list[str] = []
    now = [0.0]
    guard = FailOpen(on_fail_open=failed.append, clock=lambda: now[0])
    recorder = BatchedRecorder(inner, guard=guard, budget_s=0.01)
    inner.gate.clear()  # Redis hangs
    await recorder.record(event("a", "admit", 1))  # dropped on the deadline, not raised
    assert failed == ["token_event"]
    inner.gate.set()
    await recorder.record(event("b", "admit", 1))  # within the cool-down: not tried
    assert failed == ["token_event", "token_event"] and inner.batches == []
    now[0] = 5.0
    await recorder.record(event("c", "admit", 1))
    assert inner.batches == [["d/c"]]


async def test_an_unreachable_estimate_reaches_each_event_of_the_batch() -> None:
    inner = Inner()
    inner.fail = True
    recorder = BatchedRecorder(inner, guard=FailOpen())
    results = await asyncio.gather(
        *(recorder.record(event(r, "admit", 1)) for r in "ab"), return_exceptions=True
    )
    assert all(isinstance(r, UtilisationUnavailable) for r in results)
