"""Waiting calls, pure parts: the `Prefer` header, the answer of a result, waking waiters."""

from __future__ import annotations

import asyncio
import json

import pytest

from ingress.queued.completions import READS, Completions
from ingress.queued.waiting import Waiting, answer, prefer_wait
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.results import RequestState
from orchestrator.core.schemas import QueuedRequest, ResultDocument
from orchestrator.tenants.config import Tenancy


@pytest.mark.parametrize(
    ("values", "wait"),
    [
        ([], None),
        (["wait=10"], 10.0),
        (["respond-async, wait=120"], 120.0),
        (["return=minimal", "Wait = 5"], 5.0),
        (['wait="7"'], 7.0),
        (["wait=1.5"], None),  # delta-seconds are whole seconds: ignored as unreadable
        (["wait=-1"], None),
        (["handling=lenient; x=1"], None),
        (["wait=0"], 0.0),
    ],
)
def test_prefer_wait(values: list[str], wait: float | None) -> None:
    assert prefer_wait(values) == wait


def _doc(**fields: object) -> ResultDocument:
    base: dict[str, object] = {
        "id": "req_1", "status": "completed", "deployment": "ptu", "enqueued_at": 1.0,
        "completed_at": 2.0,
    }  # fmt: skip
    return ResultDocument.model_validate({**base, **fields})


def test_a_completed_result_is_answered_as_the_deployment_answered() -> None:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}
    resp = answer(_doc(status_code=200, response=body), 30)
    assert resp.status_code == 200 and json.loads(bytes(resp.body)) == body
    assert resp.headers["preference-applied"] == "wait=30"
    assert resp.headers["x-ptu-deployment"] == "ptu"
    assert resp.headers["x-ptu-request-id"] == "req_1"


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"status_code": 400, "error": {"code": "bad", "message": "no"}}, 400, "bad"),
        ({"status_code": 429, "error": {"code": "429", "message": "busy"}}, 429, "429"),
        (
            {"status_code": None, "error": {"code": "too_many_deliveries"}},
            502,
            "too_many_deliveries",
        ),
        ({"status": "expired", "error": {"code": "expired", "message": "late"}}, 504, "expired"),
    ],
)
def test_a_failed_result_is_answered_in_the_envelope(
    fields: dict[str, object], status: int, code: str
) -> None:
    resp = answer(_doc(**{"status": "failed", **fields}), 5)
    assert resp.status_code == status
    error = json.loads(bytes(resp.body))["error"]
    assert error["code"] == code and error["message"]


class Reads:
    """A reader whose result appears once `done` is set."""

    def __init__(self) -> None:
        self.done = False
        self.count = 0

    async def __call__(self, request_id: str) -> RequestState | None:
        self.count += 1
        doc = _doc(id=request_id) if self.done else None
        return RequestState(status="queued", tenant="t", reply_key="k", result=doc)


async def test_a_waiter_is_woken_by_its_request_only_and_reads_once_more() -> None:
    completions = Completions(redis=None)  # type: ignore[arg-type]
    reads = Reads()
    waiter = asyncio.create_task(completions.wait("req_1", 60, reads))
    other = asyncio.create_task(completions.wait("req_2", 60, Reads()))
    for _ in range(100):  # both registered
        await asyncio.sleep(0)
        if completions.waiting == 2:
            break
    completions.wake("req_9")  # someone else's result
    await asyncio.sleep(0)
    assert not waiter.done() and completions.wakes == 0
    reads.done = True
    completions.wake("req_1")
    state = await waiter
    assert state is not None and state.result is not None and reads.count == 2
    assert completions.waiting == 1 and completions.wakes == 1
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)
    assert completions.waiting == 0  # a cancelled waiter (a client gone) leaves nothing


async def test_a_result_already_there_is_answered_without_waiting() -> None:
    completions = Completions(redis=None)  # type: ignore[arg-type]
    reads = Reads()
    reads.done = True
    state = await completions.wait("req_1", 60, reads)
    assert state is not None and state.result is not None and reads.count == 1
    assert completions.waiting == 0


class SlowReads(Reads):
    """A reader that counts how many reads run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.peak = 0

    async def __call__(self, request_id: str) -> RequestState | None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.001)
        self.now -= 1
        return await super().__call__(request_id)


async def test_waiters_woken_together_read_a_bounded_number_at_a_time() -> None:
    completions = Completions(redis=None)  # type: ignore[arg-type]
    reads = SlowReads()
    n = READS * 3
    waiters = [asyncio.create_task(completions.wait(f"req_{i}", 60, reads)) for i in range(n)]
    for _ in range(10_000):
        await asyncio.sleep(0)
        if reads.count == n:  # every first read done: all wait for their result
            break
    reads.done = True
    for i in range(n):  # one drain writes every result at once
        completions.wake(f"req_{i}")
    states = await asyncio.gather(*waiters)
    assert all(s is not None and s.result is not None for s in states)
    assert reads.count == 2 * n and reads.peak == READS  # never more at once than the bound


class Unreachable:
    """A result store whose reads fail as a Redis pool with no free connection does."""

    async def get(self, request_id: str) -> RequestState | None:
        raise StoreUnavailable("result store get: No connection available.")


async def test_a_read_that_fails_after_the_enqueue_answers_the_202_not_an_error() -> None:
    completions = Completions(redis=None)  # type: ignore[arg-type]
    waiting = Waiting(completions, Unreachable(), Tenancy([], {}), [])  # type: ignore[arg-type]
    now = 1_000.0
    req = QueuedRequest(
        id="req_1", deployment="d", body={}, reply_key="k", enqueued_at=now, deadline=now + 60
    )
    assert await waiting.hold(req, 5.0) is None  # the caller answers 202 with its Location
