"""One API surface failing never pauses the other, and a permanent answer is the result."""

from __future__ import annotations

import asyncio
import json

from orchestrator.breaker.machine import BreakerConfig
from orchestrator.core import keys
from orchestrator.core.errors import UpstreamUnreachable
from tests.unit.worker_fakes import T0, FakeUpstream, Rig, make_rig, request

TRIP_AT_ONCE = BreakerConfig(
    failure_rate=0.5, min_calls=1, window_s=10.0, open_s=30.0, max_open_s=60.0,
    throttle_grace_s=0.5, probe_timeout_s=3.0,
)  # fmt: skip


def _not_found() -> UpstreamUnreachable:
    body = {"error": {"code": "404", "message": "Resource not found"}}
    return UpstreamUnreachable(
        "upstream answered 404", status_code=404, body=body, cause="HTTP 404 404"
    )


async def _run_one(rig: Rig) -> str | None:
    stop = asyncio.Event()
    slot = await rig.throttle.acquire(stop)
    assert slot is not None
    (delivery,) = await rig.queue.receive(1, 0)
    return await rig.dispatcher.handle(delivery, slot, stop)


async def _doc(rig: Rig, request_id: str) -> dict[str, object]:
    (raw,) = await rig.replies(request_id)
    doc: dict[str, object] = json.loads(raw)
    return doc


async def test_a_failing_responses_surface_leaves_chat_calls_running() -> None:
    upstream = FakeUpstream(script={"r1": [_not_found()]})
    rig = make_rig(upstream=upstream, breakers=TRIP_AT_ONCE)
    await rig.put(request("r1", deadline=T0 + 60).model_copy(update={"endpoint": "responses"}))
    await rig.put(request("r2"))

    assert await _run_one(rig) == "failed"  # r1: its breaker opened on the 404
    responses_state = await rig.redis.hget(keys.breaker("dep", "responses"), "state")
    assert responses_state == b"open"
    assert await rig.redis.hget(keys.breaker("dep"), "state") is None  # chat never tripped
    assert await _run_one(rig) == "completed"  # r2, a chat call, went straight through
    assert [h["x-ms-client-request-id"] for _, _, h in upstream.calls] == ["r1", "r2"]


async def test_a_permanent_answer_ends_failed_with_that_answer_not_expired() -> None:
    upstream = FakeUpstream(script={"r1": [_not_found(), _not_found()]})
    rig = make_rig(upstream=upstream, breakers=TRIP_AT_ONCE)
    await rig.put(request("r1", deadline=T0 + 60))

    assert await _run_one(rig) == "failed"
    doc = await _doc(rig, "r1")
    assert doc["status"] == "failed" and doc["status_code"] == 404
    assert doc["error"] == {"code": "404", "message": "Resource not found"}
    assert doc["attempts"] == 1  # the call was made (an outage spends no attempt)
    assert rig.time.now >= T0 + 60  # it waited for the breaker until its deadline
    ((message, reason),) = rig.queue.dead_letters
    assert message.id == "r1" and reason == "status 404 is permanent"


async def test_expiry_without_any_answer_is_still_expired() -> None:
    rig = make_rig(breakers=TRIP_AT_ONCE)
    await rig.put(request("r1", deadline=T0 - 1))
    assert await _run_one(rig) == "expired"
    doc = await _doc(rig, "r1")
    assert doc["error"] == {"code": "expired", "message": "the deadline passed before the call"}


def _refused() -> UpstreamUnreachable:
    return UpstreamUnreachable("connection refused", status_code=None, cause="ConnectError")


async def test_a_pool_member_hands_a_request_back_when_its_breaker_opens() -> None:
    """A pool's other members share its queue, not its breaker: the request goes back at
    once for them (one delivery counted, no attempt spent, no result written here)."""
    upstream = FakeUpstream(script={"r1": [_refused()]})
    rig = make_rig(upstream=upstream, breakers=TRIP_AT_ONCE, hand_over=True)
    await rig.put(request("r1"))

    assert await _run_one(rig) is None  # the outage opened the breaker: handed back
    assert await rig.redis.hget(keys.breaker("dep"), "state") == b"open"
    assert await rig.replies("r1") == [] and rig.queue.dead_letters == []
    assert rig.time.now == T0  # no waiting for the breaker
    (again,) = await rig.queue.receive(1, 0)  # redelivered at once, to any consumer
    assert again.message.id == "r1" and again.delivery_count == 2
    assert len(upstream.calls) == 1


async def test_without_a_pool_the_request_waits_for_the_breaker() -> None:
    upstream = FakeUpstream(script={"r1": [_refused()]})
    rig = make_rig(upstream=upstream, breakers=TRIP_AT_ONCE)
    await rig.put(request("r1", deadline=T0 + 60))

    assert await _run_one(rig) == "expired"  # kept, waiting, until its deadline
    assert rig.time.now >= T0 + 60
