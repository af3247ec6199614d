"""A queued call Azure spilled to a standard deployment: charged there, counted, paused on,
kept or discarded as the deployment says (`low_priority_spill`)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from prometheus_client import generate_latest

from orchestrator.calls.signals import Signals
from orchestrator.core import keys
from orchestrator.tenants.ledger import Usage
from orchestrator.worker.metrics import WorkerMetrics
from tests.unit.worker_fakes import FakeUpstream, Rig, make_rig, request

SPILLED = Signals(spilled_from="dep", served_by="paygo")


@dataclass
class UsageLog:
    uses: list[Usage] = field(default_factory=list)

    async def served(self, use: Usage) -> None:
        self.uses.append(use)


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


def _rig(signals: Signals | None, spill: str = "keep") -> tuple[Rig, UsageLog, WorkerMetrics]:
    usage, metrics = UsageLog(), WorkerMetrics(deployments=["dep", "paygo"])
    rig = make_rig(
        upstream=FakeUpstream(signals=signals),
        low_priority_spill=spill,  # type: ignore[arg-type]
        usage=usage,
        metrics=metrics,
    )
    return rig, usage, metrics


async def test_a_kept_spilled_answer_is_charged_to_the_standard_deployment_and_pauses() -> None:
    rig, usage, metrics = _rig(SPILLED)
    await rig.put(request("r1"))

    assert await _run_one(rig) == "completed"
    doc = await _doc(rig, "r1")
    assert doc["deployment"] == "dep" and doc["spillover"] == "paygo"
    # the PTU's estimate learns its saturation, and is charged nothing for the call
    admit, complete = rig.tokens.events
    assert admit.deployment == complete.deployment == "dep"
    assert complete.spilled and (complete.prompt_tokens, complete.completion_tokens) == (0, 0)
    assert usage.uses == [Usage("default", "paygo", "low", 11, 0, 7)]
    assert rig.paused == [1.0]  # as a 429 that named no wait
    assert await rig.redis.hget(keys.result_counts("dep"), "spilled") == b"1"
    text = generate_latest(metrics.registry).decode()
    assert 'ptu_worker_spilled_total{deployment="dep",tenant="default",to="paygo"} 1.0' in text
    assert 'ptu_worker_tokens_total{deployment="paygo",kind="completion"} 7.0' in text


async def test_a_spill_with_fail_ends_failed_once_and_its_paid_tokens_still_count() -> None:
    rig, usage, _ = _rig(SPILLED, spill="fail")
    await rig.put(request("r1"))

    assert await _run_one(rig) == "failed"
    doc = await _doc(rig, "r1")
    assert doc["status_code"] == 409 and doc["attempts"] == 1
    error = doc["error"]
    assert isinstance(error, dict) and error["code"] == "spillover_discarded"
    assert "pay-as-you-go deployment 'paygo'" in error["message"]
    assert "response" not in doc or doc["response"] is None
    assert len(rig.upstream.calls) == 1  # not retried: another spill would be paid again
    assert usage.uses == [Usage("default", "paygo", "low", 11, 0, 7)]  # it was billed
    assert rig.paused == [1.0]


async def test_a_retry_after_on_the_spilled_answer_sets_the_pause() -> None:
    rig, _, _ = _rig(Signals(spilled_from="dep", served_by="paygo", retry_after_s=3.5))
    await rig.put(request("r1"))
    assert await _run_one(rig) == "completed"
    assert rig.paused == [3.5]


async def test_an_answer_that_names_its_own_deployment_or_a_failed_spill_is_the_ptus() -> None:
    for signals in (
        Signals(served_by="dep"),
        Signals(spilled_from="dep", served_by="paygo", spillover_error=True),
    ):
        rig, usage, _ = _rig(signals, spill="fail")
        await rig.put(request("r1"))
        assert await _run_one(rig) == "completed"
        doc = await _doc(rig, "r1")
        assert doc.get("spillover") is None
        _, complete = rig.tokens.events
        assert (complete.prompt_tokens, complete.completion_tokens) == (11, 7)
        assert not complete.spilled and usage.uses == [] and rig.paused == []
