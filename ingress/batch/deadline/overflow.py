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
   worker reaches last; only lines already queued) with `deadline/claims` and hands them
   to `deadline/send` (synchronous calls, or one remote batch on a Batch deployment, which
   `deadline/remote` polls at each round and merges back). Each result is written by
   `ResultStore.complete`, exactly once.

Lines whose claimant died are taken over after `claim_lease_s`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence

import openai
import redis.asyncio as aioredis
import structlog

from ingress.batch.deadline.claims import Claims
from ingress.batch.deadline.forecast import Sample, forecast
from ingress.batch.deadline.planner import MARGIN_K, Option, plan, price_per_line
from ingress.batch.deadline.remote import RemoteBatches
from ingress.batch.deadline.send import Sender
from ingress.batch.files import Files
from ingress.batch.runner import BatchWork
from ingress.batch.store import BatchStore, line_request_id
from ingress.chat.targets import Target
from ingress.http.errors import ApiError
from ingress.metrics import IngressMetrics
from orchestrator.core import keys
from orchestrator.core.deployments import DeploymentConfig, OverflowEntry
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.redis_replies import text
from orchestrator.core.settings import Settings
from orchestrator.worker.upstream import AzureUpstream

log = structlog.get_logger(__name__)

ROUND_S = 2.0
PLAN_LEASE_S = 30.0
GUARD_FRACTION = 0.1
GUARD_MIN_S = 5.0
DEFER_SLACK_ROUNDS = 3
"""A deferred move happens once its last safe start is this many rounds away."""
MIN_SAMPLES = 3
"""Rounds measured before the first line moves (a plan from the prior alone would move all)."""
HISTORY_S = 8 * 86_400
SCAN = 200
_FIELDS = (
    "status", "priority", "deployment", "total", "completed", "failed", "cursor", "expires_at",
    "created_at", "line_tokens_in", "line_tokens_out", "overflow_sent", "overflow_done",
    "plan_t", "plan_ptu_done", "plan_samples", "tenant", "reply_key", "input_file_id",
    "final_status", "forecast_first", "overflow_rescan", "scan_t", "expanded",
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
        self._owner = owner or f"overflow-{id(self):x}"
        # longer than the claimant's own calls of a line can take (every attempt and wait)
        self._claim_lease_s = (
            settings.max_attempts * (settings.request_timeout_s + settings.backoff_max_s) + 10.0
        )
        remote = RemoteBatches(store, work.results, self._claims, self._client_for, clock=clock)
        self._remote = remote
        self._sender = Sender(store, files, work, targets, settings, remote, concurrency)
        self._concurrency = concurrency
        self._clients: dict[str, openai.AsyncAzureOpenAI] = {}
        self._metrics = metrics
        self._shown: set[str] = set()

    async def run(self) -> None:
        """Plan every `round_s` until cancelled."""
        while True:
            try:
                await self.round()
            except StoreUnavailable as exc:
                log.warning("deadline_round_failed", error=repr(exc))
            except (openai.OpenAIError, ApiError) as exc:
                # a Batch deployment or a file the round needed failed: the next round retries
                log.error("deadline_round_failed", error=repr(exc))
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
                if any(e.kind == "batch" for e in d.overflow):
                    await self._remote.poll(batch_id, d.overflow, self._owner)
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
        # measured once every line is queued: before, the worker may be waiting for lines
        if f.get("expanded") == "1" and f.get("plan_t") and on_ptu > 0 and now > float(f["plan_t"]):
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
        p = plan(
            total - done, low_lines, deadline - guard - now, options, moved=sent - sent_done,
            wave=(self._concurrency, self._sender.line_s),
            slack_s=DEFER_SLACK_ROUNDS * self._round_s,
        )  # fmt: skip
        moving = p.send if measured or now >= deadline - guard else {}
        moved = 0
        if sent > sent_done and (
            f.get("overflow_rescan") or now - float(f.get("scan_t") or 0) > self._claim_lease_s / 2
        ):
            await self._take_over(f, d, options, now)
        for name, count in moving.items():
            moved += await self._move(f, d, name, count, options, now)
        shown = {
            "at": int(now), "basis": fc.basis, "ptu_tokens": round(fc.tokens),
            "sigma": round(fc.sigma), "rate": round(fc.rate, 1),
            "remaining_tokens": round((total - done) * line_tokens), "ptu_lines": p.ptu_lines,
            "plan": p.reason if measured or not p.send else "measuring",
            "deferred_lines": p.deferred,
            "overflow_lines": sent + moved, "ptu_lines_done": ptu_done,
        }  # fmt: skip
        first = (
            {} if f.get("forecast_first") or not measured else {"forecast_first": json.dumps(shown)}
        )
        await self._store.update(
            batch_id, forecast=json.dumps(shown), plan_t=repr(now), plan_ptu_done=str(ptu_done),
            plan_samples=json.dumps(samples), **first,
        )  # fmt: skip

    def _client_for(self, entry: OverflowEntry) -> openai.AsyncAzureOpenAI:
        """The `openai` client of the resource of a Batch deployment (the PTU's resource)."""
        ptu = next(d for d in self._settings.deployments if entry in d.overflow)
        endpoint = self._settings.endpoint_of(ptu) or ""
        if endpoint not in self._clients:
            up = AzureUpstream.from_settings(
                self._settings, endpoint=endpoint, api_key=self._settings.api_key_of(ptu)
            )
            self._clients[endpoint] = up.client
        return self._clients[endpoint]

    def _show(self, batch_id: str, values: dict[str, float] | None) -> None:
        if self._metrics is None:
            return
        self._metrics.batch_plan(batch_id, values)
        if values is None:
            self._shown.discard(batch_id)
        else:
            self._shown.add(batch_id)

    def _options(self, d: DeploymentConfig, tok_in: float, tok_out: float) -> list[Option]:
        """The overflow entries as the planner sees them, each named `name:kind`."""
        return [
            Option(f"{e.name}:{e.kind}", e.kind,
                   price_per_line(e.price_in, e.price_out, tok_in, tok_out), e.turnaround_s)
            for e in d.overflow
            if e.kind == "batch" or e.name in self._targets
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

    async def _take_over(
        self, f: dict[str, str], d: DeploymentConfig, options: Sequence[Option], now: float
    ) -> None:
        """Send again the lines whose claim was abandoned (a claimant died, a remote batch
        left them): every claimed line of the batch is looked at, the claim script takes
        only those past their lease. Synchronous targets first: time is short by now."""
        taken: list[str] = []
        cursor = int(f.get("cursor") or 0)
        for start in range(0, cursor, SCAN):
            ids = [line_request_id(f["id"], i) for i in range(start, min(cursor, start + SCAN))]
            statuses = await self._claims.statuses(ids)
            stale = [r for r, s in zip(ids, statuses, strict=True) if s == "overflow"]
            taken += (await self._claims.claim(stale, self._owner, now, self._claim_lease_s))[1]
        await self._store.update(f["id"], scan_t=repr(now))
        await self._store.forget_fields(f["id"], "overflow_rescan")
        if taken:
            ranked = sorted(options, key=lambda o: (o.kind == "batch", o.price_per_line))
            await self._sender.send(f, d, ranked[0].name, options, set(taken))
            log.info("batch_lines_taken_over", batch_id=f["id"], lines=len(taken))

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
        await self._sender.send(f, d, name, options, {*fresh, *taken})
        log.info("batch_lines_overflowed", batch_id=batch_id, target=name, lines=len(fresh),
                 taken_over=len(taken))  # fmt: skip
        return len(fresh)

    async def stop(self) -> None:
        """Cancel the calls in flight (their claims are taken over after the lease); close
        the Batch deployments' clients."""
        await self._sender.stop()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    def __repr__(self) -> str:
        return f"<DeadlineOverflow owner={self._owner} sender={self._sender!r}>"
