"""The deadline planner of every batch: measure, forecast, plan, move lines, call them.

Each ingress runs one (`run`, every `round_s`). For each in-progress, queued (low
priority) batch on one provisioned deployment it takes the batch's `plan` lease
(`BatchStore.lease`: one planner per batch across replicas), then:

1. **measures** the rate at which the PTU finished the batch's lines since the last round
   (lines done less those done by overflow, times the tokens of a line) and adds it to
   the deployment's history (`keys.deadline_history`) while PTU lines were waiting;
2. **forecasts** the PTU's tokens before the deadline (`deadline/forecast`), less a guard
   at the end (`GUARD_FRACTION` of the window, at least `GUARD_MIN_S`) in which overflow
   calls must still finish, and writes the forecast on the batch (`forecast`);
3. **plans** (`deadline/planner`) once the forecast rests on measurements; and
4. **moves** the planned number of lines from the tail of the PTU queue (the lines the
   worker reaches last; only lines already queued) with `deadline/claims`, then calls each
   through the high-priority proxy at the chosen target, Flex with the pricier standard
   entries as its spillover chain (a Flex 429 moves on), the worker's retries
   (`BatchWork.call`). The result is written by `ResultStore.complete`, exactly once.

Lines whose claimant died are taken over after `claim_lease_s`. The Batch-deployment kind
is validated in the configuration but not planned for here (see the README's gaps).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence

import redis.asyncio as aioredis
import structlog

from ingress.batch.deadline.claims import Claims
from ingress.batch.deadline.forecast import Sample, forecast
from ingress.batch.deadline.planner import MARGIN_K, Option, plan, price_per_line
from ingress.batch.files import Files
from ingress.batch.lines import line_request, requests_from
from ingress.batch.runner import BatchWork
from ingress.batch.store import BatchStore, line_request_id
from ingress.chat.governance import Governance
from ingress.chat.targets import Target
from ingress.metrics import IngressMetrics
from orchestrator.core import keys
from orchestrator.core.deployments import DeploymentConfig, OverflowEntry
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.redis_replies import text
from orchestrator.core.schemas import QueuedRequest
from orchestrator.core.settings import Settings
from orchestrator.tenants.config import Tenancy

log = structlog.get_logger(__name__)

ROUND_S = 2.0
PLAN_LEASE_S = 30.0
GUARD_FRACTION = 0.1
GUARD_MIN_S = 5.0
MIN_SAMPLES = 3
"""Rounds measured before the first line moves (a plan from the prior alone would move all)."""
HISTORY_S = 8 * 86_400
SCAN = 200
_FIELDS = (
    "status", "priority", "deployment", "total", "completed", "failed", "cursor", "expires_at",
    "created_at", "line_tokens_in", "line_tokens_out", "overflow_sent", "overflow_done",
    "plan_t", "plan_ptu_done", "plan_samples", "tenant", "reply_key", "input_file_id",
    "final_status", "forecast_first",
)  # fmt: skip


class DeadlineOverflow:
    """The planner loop of one ingress process."""

    def __init__(
        self,
        redis: aioredis.Redis,
        store: BatchStore,
        files: Files,
        work: BatchWork,
        targets: Mapping[str, Target],
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        round_s: float = ROUND_S,
        concurrency: int = 32,
        owner: str = "",
        metrics: IngressMetrics | None = None,
    ) -> None:
        self._redis = redis
        self._store = store
        self._claims = Claims(redis)
        self._files = files
        self._work = work
        self._targets = targets
        self._settings = settings
        self._clock = clock
        self._round_s = round_s
        self._gate = asyncio.Semaphore(concurrency)
        self._owner = owner or f"overflow-{id(self):x}"
        self._claim_lease_s = 2 * settings.request_timeout_s + 60.0
        self._governance = Governance.of(settings.deployments, settings.default_max_tokens)
        self._tenancy = Tenancy(settings.tenants, settings.api_keys)
        self._running: set[asyncio.Task[None]] = set()
        self._metrics = metrics
        self._shown: set[str] = set()

    async def run(self) -> None:
        """Plan every `round_s` until cancelled."""
        while True:
            try:
                await self.round()
            except StoreUnavailable as exc:
                log.warning("deadline_round_failed", error=repr(exc))
            await asyncio.sleep(self._round_s)

    async def round(self) -> None:
        """One round over the active batches."""
        ids = await self._store.active()
        rows = await self._store.some_fields(ids, _FIELDS) if ids else []
        for gone in self._shown - set(ids):
            self._show(gone, None)
        for batch_id, f in zip(ids, rows, strict=True):
            d = self._settings.deployment(f.get("deployment", ""))
            if (
                f.get("status") != "in_progress" or f.get("final_status")
                or f.get("priority") == "high" or d is None
            ):  # fmt: skip
                continue
            if await self._store.lease(batch_id, self._owner, PLAN_LEASE_S, role="plan"):
                await self._plan(batch_id, {**f, "id": batch_id}, d)

    async def _plan(self, batch_id: str, f: dict[str, str], d: DeploymentConfig) -> None:
        now = self._clock()
        deadline = float(f["expires_at"])
        total = int(f.get("total") or 0)
        done = int(f.get("completed") or 0) + int(f.get("failed") or 0)
        sent, sent_done = int(f.get("overflow_sent") or 0), int(f.get("overflow_done") or 0)
        tok_in, tok_out = float(f.get("line_tokens_in") or 1), float(f.get("line_tokens_out") or 0)
        line_tokens = tok_in + tok_out * d.weight
        ptu_done = done - sent_done
        on_ptu = total - done - (sent - sent_done)
        samples = json.loads(f.get("plan_samples") or "[]")
        if f.get("plan_t") and on_ptu > 0 and now > float(f["plan_t"]):
            rate = (ptu_done - int(f.get("plan_ptu_done") or 0)) * line_tokens
            rate /= now - float(f["plan_t"])
            samples = [*samples[-59:], [now, rate]]
            await self._record(d.name, batch_id, now, rate)
        history = await self._history(d.name, now)
        window = deadline - float(f.get("created_at") or now)
        guard = max(GUARD_MIN_S, GUARD_FRACTION * window)
        prior = d.capacity_tpm / 60.0 * (self._settings.upper_threshold - 0.5)
        fc = forecast(history, now, deadline - guard, prior_rate=max(0.0, prior))
        options = self._options(d, tok_in, tok_out)
        measured = len(samples) >= MIN_SAMPLES
        low_lines = fc.low(MARGIN_K) / line_tokens if line_tokens else 0.0
        p = plan(total - done, low_lines, deadline - guard - now, options, moved=sent - sent_done)
        moving = p.send if measured or now >= deadline - guard else {}
        moved = 0
        for name, count in moving.items():
            moved += await self._move(f, d, name, count, options, now)
        shown = {
            "at": int(now), "basis": fc.basis, "ptu_tokens": round(fc.tokens),
            "sigma": round(fc.sigma), "rate": round(fc.rate, 1),
            "remaining_tokens": round((total - done) * line_tokens), "ptu_lines": p.ptu_lines,
            "plan": p.reason if measured or not p.send else "measuring",
            "overflow_lines": sent + moved, "ptu_lines_done": ptu_done,
        }  # fmt: skip
        first = (
            {} if f.get("forecast_first") or not measured else {"forecast_first": json.dumps(shown)}
        )
        await self._store.update(
            batch_id, forecast=json.dumps(shown), plan_t=repr(now), plan_ptu_done=str(ptu_done),
            plan_samples=json.dumps(samples), **first,
        )  # fmt: skip

    def _show(self, batch_id: str, values: dict[str, float] | None) -> None:
        if self._metrics is None:
            return
        self._metrics.batch_plan(batch_id, values)
        if values is None:
            self._shown.discard(batch_id)
        else:
            self._shown.add(batch_id)

    def _options(self, d: DeploymentConfig, tok_in: float, tok_out: float) -> list[Option]:
        return [
            Option(e.name, e.kind, price_per_line(e.price_in, e.price_out, tok_in, tok_out),
                   e.turnaround_s)
            for e in d.overflow
            if e.kind != "batch" and e.name in self._targets
        ]  # fmt: skip

    async def _record(self, deployment: str, batch_id: str, now: float, rate: float) -> None:
        key = keys.deadline_history(deployment)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {f"{now!r}:{rate!r}:{batch_id}": now})
            pipe.zremrangebyscore(key, 0, now - HISTORY_S)
            pipe.expire(key, HISTORY_S)
            await pipe.execute()

    async def _history(self, deployment: str, now: float) -> list[Sample]:
        raw = await self._redis.zrangebyscore(
            keys.deadline_history(deployment), now - HISTORY_S, now
        )
        out = []
        for member in raw:
            at, rate, _ = text(member).split(":", 2)
            out.append(Sample(float(at), float(rate)))
        return out

    async def _move(
        self, f: dict[str, str], d: DeploymentConfig, name: str, count: int,
        options: Sequence[Option], now: float,
    ) -> int:  # fmt: skip
        """Claim up to `count` lines from the tail and start their calls; lines claimed."""
        batch_id = f["id"]
        cursor = int(f.get("cursor") or 0)
        fresh: list[str] = []
        taken: list[str] = []
        index = cursor
        while len(fresh) < count and index > 0:
            ids = [
                line_request_id(batch_id, i)
                for i in range(index - 1, max(-1, index - 1 - SCAN), -1)
            ]
            index -= len(ids)
            statuses = await self._claims.statuses(ids)
            wanted = [r for r, s in zip(ids, statuses, strict=True) if s in ("queued", "overflow")]
            got, took = await self._claims.claim(
                wanted[: count - len(fresh)], self._owner, now, self._claim_lease_s
            )
            fresh += got
            taken += took
        if not fresh and not taken:
            return 0
        await self._store.incr(batch_id, "overflow_sent", len(fresh))
        target = self._chain(d, name, options)
        reqs = await self._requests(f, {*fresh, *taken})
        for req in reqs:
            task = asyncio.create_task(self._call(f, req, target))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        log.info("batch_lines_overflowed", batch_id=batch_id, target=name, lines=len(fresh),
                 taken_over=len(taken))  # fmt: skip
        return len(fresh)

    def _chain(self, d: DeploymentConfig, name: str, options: Sequence[Option]) -> Target:
        """The chosen target, with the pricier synchronous ones as its spillover chain."""
        entries: dict[str, OverflowEntry] = {e.name + e.kind: e for e in d.overflow}
        chosen = next(o for o in options if o.name == name)
        later = sorted((o for o in options if o.price_per_line > chosen.price_per_line),
                       key=lambda o: o.price_per_line)  # fmt: skip

        def target(o: Option) -> Target:
            tier = "flex" if entries[o.name + o.kind].kind == "flex" else None
            return dataclasses.replace(self._targets[o.name], service_tier=tier, spillover=())

        return dataclasses.replace(target(chosen), spillover=tuple(target(o) for o in later))

    async def _requests(self, f: dict[str, str], ids: set[str]) -> list[QueuedRequest]:
        """The claimed lines as requests, read from the input file."""
        out: list[QueuedRequest] = []
        chunks = await self._files.chunks(f["tenant"], f["input_file_id"])
        async for index, obj, _ in requests_from(chunks):
            if line_request_id(f["id"], index) in ids:
                out.append(line_request(
                    obj, index, batch_id=f["id"], tenant=f["tenant"], reply_key=f["reply_key"],
                    deadline=float(f["expires_at"]), now=self._clock(),
                    ceiling=self._ceiling(f["tenant"]), governance=self._governance,
                ))  # fmt: skip
        return out

    def _ceiling(self, tenant: str) -> int:
        own = self._tenancy.config(tenant).max_tokens_ceiling
        return own if own is not None else self._settings.max_tokens_ceiling

    async def _call(self, f: dict[str, str], req: QueuedRequest, target: Target) -> None:
        async with self._gate:
            try:
                doc = await self._work.call(
                    req.model_copy(update={"deployment": target.name}), target
                )
                if await self._work.results.complete(doc, req.reply_key):
                    await self._store.incr(f["id"], "overflow_done")
            except StoreUnavailable as exc:
                # the claim stays; after its lease the next round takes the line over
                log.error("overflow_line_failed", request_id=req.id, error=repr(exc))

    async def stop(self) -> None:
        """Cancel the calls in flight (their claims are taken over after the lease)."""
        for task in list(self._running):
            task.cancel()
        for task in list(self._running):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def __repr__(self) -> str:
        return f"<DeadlineOverflow owner={self._owner} calls={len(self._running)}>"
