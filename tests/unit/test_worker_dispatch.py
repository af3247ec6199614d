"""The dispatcher: one delivery to exactly one result, with retries, expiry and shutdown."""

from __future__ import annotations

import asyncio
import json

import pytest

from orchestrator.core import keys
from orchestrator.core.errors import (
    StoreUnavailable,
    UpstreamError,
    UpstreamThrottled,
    UpstreamTimeout,
)
from orchestrator.core.schemas import ResultDocument
from orchestrator.queues.base import Delivery
from orchestrator.queues.memory import _Entry
from orchestrator.throttle.slots import Slot
from tests.unit.worker_fakes import T0, FakeUpstream, Rig, make_rig, request


async def _take(rig: Rig) -> tuple[Delivery, Slot]:
    stop = asyncio.Event()
    slot = await rig.throttle.acquire(stop)
    assert slot is not None
    (delivery,) = await rig.queue.receive(1, 0)
    return delivery, slot


async def _run_one(rig: Rig, stop: asyncio.Event | None = None) -> str | None:
    delivery, slot = await _take(rig)
    return await rig.dispatcher.handle(delivery, slot, stop or asyncio.Event())


async def _result(rig: Rig, request_id: str) -> dict[str, object]:
    (raw,) = await rig.replies(request_id)
    doc: dict[str, object] = json.loads(raw)
    return doc


async def test_success_writes_completed_result_then_acks_and_reports_tokens() -> None:
    rig = make_rig()
    await rig.put(request("r1"))
    status = await _run_one(rig)

    assert status == "completed"
    doc = await _result(rig, "r1")
    assert doc["status"] == "completed" and doc["status_code"] == 200
    assert doc["attempts"] == 1 and doc["custom_id"] == "c-r1"
    assert doc["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert doc["completed_at"] == T0 and doc["enqueued_at"] == T0 - 5
    assert await rig.queue.depth() == 0  # acked
    assert await rig.global_slots() == 0  # slot handed back
    admit, complete = rig.tokens.events
    assert (admit.phase, complete.phase) == ("admit", "complete")
    assert admit.request_id == complete.request_id == "r1:1:1"
    assert admit.max_tokens == 50 and admit.prompt_tokens == 3 + 3 + 15
    assert (complete.prompt_tokens, complete.completion_tokens) == (11, 7)
    assert rig.upstream.calls[0][2] == {"x-ms-client-request-id": "r1"}
    state = await rig.results.get("r1")
    assert state is not None and state.status == "completed"
    assert repr(rig.dispatcher).startswith("<Dispatcher deployment=dep completed=1")


async def test_429_pauses_the_deployment_and_retries_after_retry_after() -> None:
    throttled = UpstreamThrottled("t", status_code=429, retry_after_s=2.5)
    rig = make_rig(upstream=FakeUpstream(script={"r1": [throttled]}))
    await rig.put(request("r1"))

    assert await _run_one(rig) == "completed"
    assert rig.time.sleeps == [2.5]
    assert rig.paused == [2.5]
    assert rig.upstream.calls_for("r1") == 2
    assert (await _result(rig, "r1"))["attempts"] == 2
    # each attempt has its own token events; the throttled one is refunded
    assert [e.request_id for e in rig.tokens.events] == ["r1:1:1"] * 2 + ["r1:1:2"] * 2
    refund = rig.tokens.events[1]
    assert (refund.phase, refund.completion_tokens, refund.prompt_tokens) == ("complete", 0, 0)
    assert refund.retry_after_ms == 2500  # the estimate learns ">= 100 % for 2.5 s"
    assert rig.tokens.events[3].retry_after_ms is None


async def test_the_utilisation_header_travels_with_the_complete_event() -> None:
    rig = make_rig(upstream=FakeUpstream(utilisation=0.42))
    await rig.put(request("r1"))
    assert await _run_one(rig) == "completed"
    admit, complete = rig.tokens.events
    assert admit.utilisation is None
    assert (complete.utilisation, complete.utilisation_age_s) == (0.42, 0.0)


async def test_retryable_errors_back_off_then_fail_and_dead_letter() -> None:
    errors: list[UpstreamError | None] = [
        UpstreamError("boom", status_code=500, body={"error": {"code": "500", "message": "x"}}),
        UpstreamTimeout("slow", status_code=408),
        UpstreamError("boom", status_code=503, body={"error": {"code": "503", "message": "y"}}),
    ]
    rig = make_rig(max_attempts=3, upstream=FakeUpstream(script={"r1": list(errors)}))
    await rig.put(request("r1"))

    assert await _run_one(rig) == "failed"
    assert rig.time.sleeps == [0.75, 1.5]  # equal jitter with draw 0.5: 1 -> 0.75, 2 -> 1.5
    doc = await _result(rig, "r1")
    assert doc["status"] == "failed" and doc["status_code"] == 503 and doc["attempts"] == 3
    assert doc["error"] == {"code": "503", "message": "y"}
    ((message, reason),) = rig.queue.dead_letters
    assert message.id == "r1" and reason == "gave up after 3 attempts"
    assert await rig.queue.depth() == 0


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_other_4xx_fail_at_once_into_the_dead_letter_store(status: int) -> None:
    error = UpstreamError(
        "bad", status_code=status, body={"error": {"code": "bad", "message": "m"}}
    )
    rig = make_rig(upstream=FakeUpstream(script={"r1": [error]}))
    await rig.put(request("r1"))

    assert await _run_one(rig) == "failed"
    assert rig.upstream.calls_for("r1") == 1 and rig.time.sleeps == []
    doc = await _result(rig, "r1")
    assert doc["status_code"] == status and doc["error"] == {"code": "bad", "message": "m"}
    ((message, reason),) = rig.queue.dead_letters
    assert message.id == "r1" and reason == f"status {status} is not retryable"
    assert await rig.queue.depth() == 0


async def test_expired_request_gets_expired_result_without_a_call() -> None:
    rig = make_rig()
    await rig.put(request("r1", deadline=T0 - 1))

    assert await _run_one(rig) == "expired"
    assert rig.upstream.calls == [] and rig.tokens.events == []
    doc = await _result(rig, "r1")
    assert doc["status"] == "expired" and doc["attempts"] == 0
    assert doc["error"] == {"code": "expired", "message": "the deadline passed before the call"}
    assert await rig.queue.depth() == 0


async def test_retry_wait_stops_at_the_deadline_and_expires() -> None:
    throttled = UpstreamThrottled("t", status_code=429, retry_after_s=10)
    rig = make_rig(upstream=FakeUpstream(script={"r1": [throttled]}))
    await rig.put(request("r1", deadline=T0 + 4))

    assert await _run_one(rig) == "expired"
    assert rig.time.sleeps == [4.0]
    assert (await _result(rig, "r1"))["attempts"] == 1


async def test_redelivery_of_a_completed_request_is_only_acked() -> None:
    rig = make_rig()
    await rig.put(request("r1"))
    await rig.put(request("r1"))  # the same request delivered twice
    assert await _run_one(rig) == "completed"
    assert await _run_one(rig) is None

    assert rig.upstream.calls_for("r1") == 1
    assert len(await rig.replies("r1")) == 1
    assert await rig.queue.depth() == 0 and await rig.global_slots() == 0


async def test_concurrent_duplicates_write_one_result() -> None:
    gate = asyncio.Event()
    rig = make_rig(upstream=FakeUpstream(gate=gate))
    await rig.put(request("r1"))
    await rig.put(request("r1"))
    first, second = await _take(rig), await _take(rig)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(rig.dispatcher.handle(d, s, stop)) for d, s in (first, second)]
    await asyncio.sleep(0)
    gate.set()
    statuses = await asyncio.gather(*tasks)

    assert sorted(map(str, statuses)) == ["None", "completed"]
    assert rig.upstream.calls_for("r1") == 2
    assert len(await rig.replies("r1")) == 1
    assert await rig.queue.depth() == 0  # the loser acked too


async def test_stop_during_retry_wait_releases_the_message_for_redelivery() -> None:
    stop = asyncio.Event()
    throttled = UpstreamThrottled("t", status_code=429, retry_after_s=5)
    upstream = FakeUpstream(script={"r1": [throttled]}, on_call=lambda _: stop.set())
    rig = make_rig(upstream=upstream)
    await rig.put(request("r1"))

    assert await _run_one(rig, stop) is None
    assert await rig.replies("r1") == []
    assert await rig.queue.depth() == 1 and rig.queue.in_flight() == 0  # released, not acked
    assert await rig.global_slots() == 0
    [again] = await rig.queue.receive(1, 0)  # at once, not after the visibility timeout
    assert again.delivery_count == 2


async def test_cancelled_call_releases_slot_refunds_tokens_and_does_not_ack() -> None:
    rig = make_rig(upstream=FakeUpstream(hang=True))
    await rig.put(request("r1"))
    delivery, slot = await _take(rig)
    task = asyncio.create_task(rig.dispatcher.handle(delivery, slot, asyncio.Event()))
    for _ in range(1000):
        if rig.upstream.active:
            break
        await asyncio.sleep(0)
    assert await rig.global_slots() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.gather(*rig.dispatcher.bookkeeping)

    assert await rig.global_slots() == 0
    assert [e.phase for e in rig.tokens.events] == ["admit", "complete"]
    assert await rig.replies("r1") == [] and rig.queue.in_flight() == 0  # released
    assert await rig.queue.depth() == 1


async def test_call_timeout_is_retried_as_408() -> None:
    rig = make_rig(max_attempts=2, request_timeout_s=0.01, upstream=FakeUpstream(hang=True))
    await rig.put(request("r1"))

    assert await _run_one(rig) == "failed"
    doc = await _result(rig, "r1")
    assert doc["status_code"] == 408 and doc["attempts"] == 2
    assert rig.queue.dead_letters[0][1] == "gave up after 2 attempts"


async def test_message_delivered_too_often_is_dead_lettered() -> None:
    rig = make_rig(max_deliveries=2)
    await rig.put(request("r1"))
    rig.queue.visibility_s = 0  # every receive redelivers
    for _ in range(2):
        await rig.queue.receive(1, 0)

    assert await _run_one(rig) == "failed"
    assert rig.upstream.calls == []
    assert (await _result(rig, "r1"))["error"] == {
        "code": "too_many_deliveries",
        "message": "the request kept interrupting workers",
    }
    assert rig.queue.dead_letters[0][1] == "too many deliveries"


async def test_failed_result_write_releases_and_the_redelivery_completes_once() -> None:
    rig = make_rig()
    await rig.put(request("r1"))
    real = rig.results.complete
    failures = [ConnectionError("redis restarted")]

    async def flaky(doc, reply_key):  # type: ignore[no-untyped-def]
        if failures:  # what the store's boundary makes of a Redis error
            raise StoreUnavailable(f"result store complete: {failures.pop()}")
        return await real(doc, reply_key)

    rig.results.complete = flaky  # type: ignore[method-assign]
    assert await _run_one(rig) is None
    assert rig.queue.in_flight() == 0 and await rig.queue.depth() == 1  # released
    assert await _run_one(rig) == "completed"
    assert len(await rig.replies("r1")) == 1 and await rig.queue.depth() == 0


async def test_redelivery_of_a_written_result_settles_then_acks_without_a_call() -> None:
    rig = make_rig()
    await rig.put(request("r1"))
    delivery, slot = await _take(rig)
    first = ResultDocument.for_request(
        delivery.message, "completed", completed_at=T0, attempts=1, status_code=200
    )
    # step 1 of completion only, as if the worker died before the reply push
    await rig.results._decide(
        keys=[keys.result("r1"), keys.request("r1")],
        args=[first.model_dump_json(), 3600, "completed", delivery.message.reply_key, "ch"],
    )
    await rig.queue.release(delivery)
    await rig.throttle.release(slot)
    assert await _run_one(rig) is None  # nothing new written
    assert rig.upstream.calls == []
    assert [json.loads(r)["id"] for r in await rig.replies("r1")] == ["r1"]
    assert await rig.queue.depth() == 0


async def test_unreadable_message_gets_a_failed_result_with_its_cause() -> None:
    rig = make_rig()
    good = request("r1")
    await rig.results.register(good)
    deep = "[" * 300 + "]" * 300  # deeper than the worker's parser reads
    payload = good.model_dump_json().replace('"body":{', f'"body":{{"x":{deep},', 1)
    rig.queue._entries["1"] = _Entry(payload=payload)  # as a producer that skipped the check
    assert await _run_one(rig) == "failed"
    doc = await _result(rig, "r1")
    assert doc["error"]["code"] == "unreadable_message"  # type: ignore[index]
    assert "recursion" in doc["error"]["message"].lower()  # type: ignore[index]
    assert rig.upstream.calls == [] and await rig.queue.depth() == 0
    [(message, reason)] = rig.queue.dead_letters
    assert message is not None and message.id == "r1" and reason.startswith("unreadable")
