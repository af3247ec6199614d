"""Work done for batches in the background: high-priority lines, and closing lines early.

High priority (`x-priority: high` on batch create): the lines do not wait in the
queue; this ingress process calls the deployment for them right away through the
high-priority proxy (spillover and token events included), `concurrency` at a
time, through the worker's attempt loop (`calls.attempts.run_attempts`: 429/408/5xx
retried, `retry-after-ms` or a capped jittered backoff, up to `PTU_MAX_ATTEMPTS`) and the
worker's result document (`calls.outcome.settlement`). This
run lives in the process that accepted the batch, which beats while it runs: if that
process stops, the sweeper of any ingress resumes the run once the beat is stale
(`batch.jobs`), calling the lines that have no result yet. Low priority, the default,
is queued.

Cancelling, expiring and finalising any batch are jobs (`ingress.batch.job`);
`ResultStore.complete` is idempotent, so a line is never counted twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

import structlog

from ingress.chat.call import Call
from ingress.chat.proxy import Proxy
from ingress.chat.targets import Target
from ingress.http.errors import ApiError
from orchestrator.calls.attempts import Ungated, run_attempts
from orchestrator.calls.outcome import UpstreamResponse, settlement, upstream_error
from orchestrator.calls.signals import read_signals
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.results import ResultStore
from orchestrator.core.retry import RetryPolicy
from orchestrator.core.runtime import Pacing
from orchestrator.core.schemas import QueuedRequest, ResultDocument
from orchestrator.core.tasks import TaskSet
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
        pacing: Pacing | None = None,
    ) -> None:
        self._results = results
        self._proxy = proxy
        self._targets = targets
        self._query = query
        self._concurrency = concurrency
        self._retry = retry
        self._quota = quota
        self._pacing = pacing or Pacing()
        self._tasks = TaskSet()

    @property
    def results(self) -> ResultStore:
        """Where the lines' results are written."""
        return self._results

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        """Run `coro` in the background, logging a failure."""

        async def guarded() -> None:
            try:
                await coro
            except (StoreUnavailable, ApiError) as exc:
                log.error("batch_task_failed", task=name, error=repr(exc))

        self._tasks.spawn(guarded())

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
                    doc = self._doc(req, QUOTA_STATUS, refused)
                else:
                    doc = await self.call(req)
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

    async def call(self, req: QueuedRequest, target: Target | None = None) -> ResultDocument:
        """One line's result from calls through the proxy to `target` (default: the line's
        deployment) and its spillover chain, retried as the worker retries."""
        target = target or self._targets[req.deployment]
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

        async def send(attempt: int) -> UpstreamResponse:
            try:
                resp = await self._proxy.forward(call)
            except ApiError as exc:
                error: dict[str, object] = {"error": {"code": exc.code, "message": exc.message}}
                raise upstream_error(exc.status, error) from exc
            body = _json(bytes(resp.body))
            if 200 <= resp.status_code < 300:
                return UpstreamResponse(body or {}, resp.status_code)
            raise upstream_error(resp.status_code, body, read_signals(resp.headers))

        attempted = await run_attempts(
            send, Ungated(self._pacing.sleep), policy=self._retry, deadline=None,
            pacing=self._pacing,
        )  # fmt: skip
        settled = settlement(req, attempted, self._pacing.clock())
        assert settled is not None  # ungated attempts without a deadline always end
        return settled[0]

    def _doc(self, req: QueuedRequest, status: int, error: dict[str, Any]) -> ResultDocument:
        return ResultDocument.for_request(
            req, "failed", completed_at=self._pacing.clock(), attempts=0, status_code=status,
            error=error,
        )  # fmt: skip

    async def stop(self) -> None:
        """Cancel the background work (shutdown); unfinished lines stay queued-state."""
        await self._tasks.cancel()

    def __repr__(self) -> str:
        return f"<BatchWork tasks={len(self._tasks)} concurrency={self._concurrency}>"


def _json(content: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
