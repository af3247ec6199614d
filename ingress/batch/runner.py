"""Work done for batches in the background: high-priority lines, and closing lines early.

High priority (`x-priority: high` on batch create): the lines do not wait in the
queue; this ingress process calls the deployment for them right away through the
high-priority proxy (spillover and token events included), `concurrency` at a
time, retrying as the worker does (`orchestrator.core.retry.decide`: 429/408/5xx,
`retry-after-ms` or a capped jittered backoff, up to `PTU_MAX_ATTEMPTS`). This
run lives in the process that accepted the batch: if that process stops, its
unfinished lines stay queued-state and the batch stays in progress until cancelled.
Low priority, the default, is durable.

Cancelling, expiring and finalising any batch are jobs (`ingress.batch.job`);
`ResultStore.complete` is idempotent, so a line is never counted twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import structlog
from redis.exceptions import RedisError

from ingress.chat.proxy import Call, Proxy
from ingress.chat.targets import Target
from ingress.http.errors import ApiError
from orchestrator.calls.signals import read_signals
from orchestrator.core.errors import UpstreamError
from orchestrator.core.results import ResultStore
from orchestrator.core.retry import RetryPolicy, decide
from orchestrator.core.schemas import QueuedRequest, ResultDocument, error_object
from orchestrator.core.tokens import estimate_prompt_tokens, requested_max_tokens
from orchestrator.tenants.quota import QUOTA_STATUS, QuotaGate, quota_error

log = structlog.get_logger(__name__)


class BatchWork:
    """Background tasks of batches, referenced until they finish."""

    def __init__(
        self,
        results: ResultStore,
        proxy: Proxy,
        targets: Mapping[str, Target],
        *,
        query: str,
        concurrency: int,
        retry: RetryPolicy,
        quota: QuotaGate | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._results = results
        self._proxy = proxy
        self._targets = targets
        self._query = query
        self._concurrency = concurrency
        self._retry = retry
        self._quota = quota
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        """Run `coro` in the background, logging a failure."""

        async def guarded() -> None:
            try:
                await coro
            except (RedisError, ApiError) as exc:
                log.error("batch_task_failed", task=name, error=repr(exc))

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_high(self, reqs: AsyncIterator[QueuedRequest]) -> None:
        """Call the deployment for every line now, `concurrency` at a time, reading the
        lines as they are needed (never more than `concurrency` ahead of the calls)."""
        gate = asyncio.Semaphore(self._concurrency)
        running: set[asyncio.Task[None]] = set()

        async def one(req: QueuedRequest) -> None:
            try:
                state = await self._results.get(req.id)
                if state is not None and state.result is not None:
                    return  # cancelled (or otherwise finished) meanwhile
                await self._results.mark_in_progress(req.id)
                refused = await quota_error(self._quota, req.tenant, req.body)
                if refused is not None:
                    doc = self._doc(req, QUOTA_STATUS, {"error": refused}, 0)
                else:
                    doc = await self._call(req)
                await self._results.complete(doc, req.reply_key)
            finally:
                gate.release()

        try:
            async for req in reqs:
                await gate.acquire()
                await self._results.register(req, only_new=True)
                task = asyncio.ensure_future(one(req))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running)
        finally:
            for task in running:
                task.cancel()

    async def _call(self, req: QueuedRequest) -> ResultDocument:
        target = self._targets[req.deployment]
        call = Call(
            target=target,
            payload=json.dumps(req.body, separators=(",", ":")).encode(),
            query=self._query if req.endpoint == "chat/completions" else "",
            client_headers=[],
            request_id=req.id,
            prompt_tokens=estimate_prompt_tokens(req.body),
            max_tokens=requested_max_tokens(req.body, 0),
            tenant=req.tenant,
            endpoint=req.endpoint,
        )
        attempt = 0
        while True:
            attempt += 1
            retry_after_s: float | None = None
            body: dict[str, Any] | None
            try:
                resp = await self._proxy.forward(call)
            except ApiError as exc:
                status, body = exc.status, {"error": {"code": exc.code, "message": exc.message}}
            else:
                status, body = resp.status_code, _json(bytes(resp.body))
                retry_after_s = read_signals(resp.headers).retry_after_s
            if 200 <= status < 300:
                break
            failure = UpstreamError(
                f"upstream answered {status}", status_code=status, retry_after_s=retry_after_s
            )
            decision = decide(failure, attempt, self._retry, self._rand)
            if decision.action == "fail":
                break
            await self._sleep(decision.delay_s)
        return self._doc(req, status, body, attempt)

    def _doc(
        self, req: QueuedRequest, status: int, body: dict[str, Any] | None, attempts: int
    ) -> ResultDocument:
        when = self._clock()
        if not 200 <= status < 300:
            error = error_object(status, body)
            return ResultDocument.for_request(
                req, "failed", completed_at=when, attempts=attempts, status_code=status, error=error
            )
        usage = (body or {}).get("usage")
        return ResultDocument.for_request(
            req, "completed", completed_at=when, attempts=attempts, status_code=status,
            response=body, usage=usage if isinstance(usage, dict) else None,
        )  # fmt: skip

    async def stop(self) -> None:
        """Cancel the background work (shutdown); unfinished lines stay queued-state."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __repr__(self) -> str:
        return f"<BatchWork tasks={len(self._tasks)} concurrency={self._concurrency}>"


def _json(content: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
