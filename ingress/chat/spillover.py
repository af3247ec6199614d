"""The walk along a deployment's spillover chain until one target answers usefully.

A pool's call walks its members, ranked per call by `chat.pool`, then the first member's
own chain. A target is skipped while its breaker (of the call's API surface) is open (reason
`circuit_open`) unless it is the last one left; a 429, 408, 5xx, 401/403, timeout or
connection error moves the call on to the next target; the last target's answer (or
error) is the client's. On a 429 with
`retry-after-ms` <= `PTU_SPILLOVER_WAIT_MS` the same target is first tried once more after
that wait. Every attempt is told to the target's shared breaker (`calls.outcome.
breaker_verdict`, the worker's verdicts) and every hop counted in
`ptu_ingress_spillover_total{deployment,to,reason,kind="chain"}`.

Native spillover: a PTU with a `native` entry is called with `x-ms-spillover-deployment`
naming it, so Azure itself serves a refused call (429, 500, 503) from that standard
deployment in the same round trip, streams included. Every spilled answer (the entry's,
or a deployment-level `spilloverDeploymentName`'s) is counted with `kind="native"`,
`reason="azure"`. Our walk stays for what Azure does not spill (408, timeouts, 401/403,
an open breaker): it then calls the native entry itself too, unless Azure already tried
it (`x-ms-spillover-error`: the standard deployment failed as well).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog

from ingress.chat.call import Answer, Call
from ingress.chat.pool import PoolRouter
from ingress.chat.recorder import CallRecorder
from ingress.chat.targets import Target
from ingress.chat.transport import NoResponse, Transport
from ingress.metrics import IngressMetrics
from orchestrator.breaker.shared import SharedBreaker, Surface, surface_of
from orchestrator.calls.outcome import breaker_verdict
from orchestrator.calls.signals import SPILLOVER_REQUEST_HEADER, read_signals

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SpilloverPolicy:
    """How the walk behaves: the short 429 wait, the breakers, the sleep (injected)."""

    wait_ms: int = 0
    """A 429 whose retry-after is at most this is retried on the same target once."""
    breakers: Mapping[tuple[str, Surface], SharedBreaker] = field(default_factory=dict)
    """Each deployment's breaker per API surface (`breaker.shared.surface_of`)."""
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    pools: PoolRouter | None = None
    """Ranks a pool's members for each call (`chat.pool`); None: no pools configured."""


def spill_reason(status: int) -> str | None:
    """Why a response is worth trying the next deployment for; None when it is the answer."""
    if status == 429:
        return "429"
    if status == 408:
        return "408"
    if status >= 500:
        return "5xx"
    if status in (401, 403):
        return "auth"
    return None


class Spillover:
    """Walks a call along its target's chain."""

    def __init__(
        self,
        transport: Transport,
        recorder: CallRecorder,
        metrics: IngressMetrics,
        policy: SpilloverPolicy,
    ) -> None:
        self._transport = transport
        self._recorder = recorder
        self._metrics = metrics
        self.policy = policy

    async def answer(self, call: Call, base: list[tuple[bytes, bytes]]) -> Answer:
        """The first useful answer along the chain (the last target's, whatever it is)."""
        chain = await self._chain(call)
        while chain:
            target, rest = chain[0], chain[1:]
            breaker = self.policy.breakers.get((target.name, surface_of(call.endpoint)))
            verdict = await breaker.allow() if breaker is not None else "call"
            if verdict == "reject" and rest:
                self._spilled(call, target, rest[0], "circuit_open")
                chain = rest
                continue
            tracked = breaker if verdict != "reject" else None  # a forced call is not counted
            answer = await self._try(call, target, base, tracked, verdict == "probe", rest)
            if isinstance(answer, Answer):
                if answer.spilled:
                    self._metrics.spillover(target.name, answer.served, "azure", "native")
                return answer
            reason, rest = answer
            self._spilled(call, target, rest[0], reason)
            chain = rest
        raise AssertionError("the last target always answers")  # pragma: no cover

    async def _chain(self, call: Call) -> list[Target]:
        """The targets to walk: a deployment and its chain, or a pool's members ranked."""
        target = call.target
        if not target.members:
            return [target, *target.spillover]
        pools = self.policy.pools
        if pools is None:
            return [*target.members]
        surface = surface_of(call.endpoint)
        return await pools.chain(target, surface, call.prompt_tokens, call.max_tokens)

    async def _try(
        self,
        call: Call,
        target: Target,
        base: list[tuple[bytes, bytes]],
        breaker: SharedBreaker | None,
        probe: bool,
        rest: list[Target],
    ) -> Answer | tuple[str, list[Target]]:
        """One target's answer, or the reason to move on and the targets left to try."""
        headers = await self._transport.headers(target, base)
        if target.native is not None:
            headers.append((SPILLOVER_REQUEST_HEADER.encode(), target.native.encode()))
        last = not rest
        waited = False
        while True:
            admitted = self._recorder.admit(call, target)
            try:
                answer = await self._transport.send(target, call, headers, admitted)
            except asyncio.CancelledError:  # the client hung up: refund the admitted budget
                self._recorder.finished(admitted, call, target, None)
                raise
            except NoResponse as failed:
                self._recorder.finished(admitted, call, target, None)
                if breaker is not None:
                    await breaker.record(breaker_verdict(None, failed.reason), probe=probe)
                if last:
                    raise failed.api_error() from failed
                return failed.reason, rest
            status = answer.resp.status_code
            reason = spill_reason(status)
            answer.signals = read_signals(answer.resp.headers)
            wait_s = answer.signals.retry_after_s if status == 429 else None
            if breaker is not None:
                await breaker.record(breaker_verdict(status), retry_after_s=wait_s, probe=probe)
            if status == 429:
                self._metrics.throttled(target.name)
            if answer.signals.spillover_error and target.native is not None:
                rest = [t for t in rest if t.name != target.native]  # Azure tried it: failed
            if reason is None or not rest:
                return answer
            self._recorder.finished(admitted, call, target, None, answer)
            await answer.resp.aclose()
            if (
                status == 429
                and not waited
                and wait_s is not None
                and wait_s * 1000.0 <= self.policy.wait_ms
            ):
                waited = True
                await self.policy.sleep(wait_s)
                continue
            return reason, rest

    def _spilled(self, call: Call, frm: Target, to: Target, reason: str) -> None:
        self._metrics.spillover(frm.name, to.name, reason, "chain")
        log.info("spillover", request_id=call.request_id, ptu=frm.name, to=to.name, reason=reason)

    def __repr__(self) -> str:
        return f"<Spillover wait_ms={self.policy.wait_ms} breakers={len(self.policy.breakers)}>"
