"""The batch job sweeper: what each active batch needs next, run one job at a time.

Every ingress runs a sweeper. Each `SWEEP_S` (or at once when a batch is created
or cancelled) it reads the active batches (`keys.BATCHES_ACTIVE`), decides each
one's next step with `next_action` (a pure function of the batch's fields and the
time), takes the batch's job lease and hands the job to the offload process
(`ingress.batch.job`). The lease in Redis makes one job per batch at a time across
all ingress replicas; its expiry lets another replica take over from one that died,
and the jobs resume from what is in Redis (the cursor, the results), so a restart
loses nothing and repeats nothing. A batch stays active until it is terminal.

A high-priority batch's lines run in the ingress that accepted it (`batch.runner`), which
beats `runner_at` into the batch every `RUNNER_BEAT_S` while they run. When that process
died (or stopped) before its lines had their results, the beat goes stale and any
ingress's sweeper resumes the run (`resume`): under the batch's job lease it checks the
beat again, claims the run by beating, and calls the lines without a result, still at
high priority (a line may have been called by the dead run, not answered: it is called
again; its result is written once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

import structlog

from ingress.batch.job import CLOSE_GRACE_S, LEASE_S, run_job
from ingress.batch.offload import Offload
from ingress.batch.store import TERMINAL, BatchStore
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.settings import Settings

log = structlog.get_logger(__name__)

SWEEP_S = 1.0
RUNNER_BEAT_S = 2.0
"""How often a high-priority batch's run writes `runner_at`."""
RUNNER_STALE_S = 10.0
"""A run whose last beat is older than this is gone (five beats: a Redis blip or a busy
loop does not start a second run); any ingress resumes it."""
_FIELDS = (
    "status", "total", "completed", "failed", "expanded", "final_status", "closed",
    "expires_at", "priority", "closed_at", "runner_at",
)  # fmt: skip
_URGENT = ("finalize", "close", "expire")
"""Jobs run before expansions: they finish batches and free their state."""


def next_action(f: Mapping[str, str], now: float) -> str | None:
    """What the batch needs next: `forget` (terminal or gone), `expire`, `close` (give the
    remaining lines their cancelled/expired result), `expand`, `finalize`, `resume` (a
    high-priority run whose process is gone), or None (its lines are with the worker or a
    live run, or lines that were running when it stopped still are)."""
    status = f.get("status")
    if not status or status in TERMINAL:
        return "forget"
    done = int(f.get("completed") or 0) + int(f.get("failed") or 0) >= int(f.get("total") or 0)
    if status == "finalizing":
        return "finalize"
    stopping = status == "cancelling" or f.get("final_status") == "expired"
    if not stopping and now >= float(f.get("expires_at") or "inf"):
        return "expire"
    if stopping:
        if done:
            return "finalize"
        if f.get("closed") != "1":
            return "close"
        # running lines finish and are counted; past the grace, the second close ends them
        closed_at = float(f.get("closed_at") or 0)
        return "close" if now >= closed_at + CLOSE_GRACE_S else None
    if f.get("priority") != "high" and f.get("expanded") != "1":
        return "expand"
    if done:
        return "finalize"
    if f.get("priority") == "high" and runner_gone(f, now):
        return "resume"
    return None


def runner_gone(f: Mapping[str, str], now: float) -> bool:
    """Whether a high-priority batch's run has stopped beating."""
    return now - float(f.get("runner_at") or 0) >= RUNNER_STALE_S


class BatchJobs:
    """The sweeper of one ingress process."""

    def __init__(
        self,
        store: BatchStore,
        settings: Settings,
        offload: Offload,
        *,
        clock: Callable[[], float] = time.time,
        sweep_s: float = SWEEP_S,
    ) -> None:
        self._store = store
        self._settings = settings
        self._offload = offload
        self._clock = clock
        self._sweep_s = sweep_s
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._kick = asyncio.Event()
        self._job: asyncio.Task[None] | None = None
        self.outcomes: list[tuple[str, str, str]] = []
        """(batch, action, outcome) of the last jobs, newest last (tests, logs)."""
        self.resume: Callable[[str], Awaitable[bool]] | None = None
        """Resumes a high-priority batch's run in this process (`BatchRoutes.resume`)."""

    def kick(self) -> None:
        """Sweep now rather than at the next tick."""
        self._kick.set()

    async def run(self) -> None:
        """Sweep until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self._sweep_s)
            self._kick.clear()
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                log.warning("batch_sweep_failed", error=repr(exc))

    async def sweep(self) -> None:
        """Start the most urgent job that is due, unless one is running here."""
        if self._job is not None:
            return
        ids = await self._store.active()
        if not ids:
            return
        rows = await self._store.some_fields(ids, _FIELDS)
        now = self._clock()
        due: list[tuple[int, str, str]] = []
        for batch_id, fields in zip(ids, rows, strict=True):
            action = next_action(fields, now)
            if action == "forget":
                await self._store.deactivate(batch_id)
            elif action is not None:
                due.append((0 if action in _URGENT else 1, batch_id, action))
        for _, batch_id, action in sorted(due, key=lambda d: d[0]):
            if action == "resume":
                await self._resume(batch_id)
                continue
            if await self._store.lease(batch_id, self.owner, LEASE_S):
                self._job = asyncio.create_task(self._run(batch_id, action))
                return

    async def _resume(self, batch_id: str) -> None:
        """Resume a high-priority run, under the job lease (one replica at a time)."""
        if self.resume is None or not await self._store.lease(batch_id, self.owner, LEASE_S):
            return
        try:
            resumed = await self.resume(batch_id)
        finally:
            await self._store.release(batch_id, self.owner)
        if resumed:
            log.warning("batch_run_resumed", batch_id=batch_id, priority="high")

    async def _run(self, batch_id: str, action: str) -> None:
        outcome = "error"
        try:
            outcome = await self._offload.run(run_job, self._settings, action, batch_id, self.owner)
        except Exception as exc:
            # a job that failed is retried at a later sweep from what Redis holds
            log.error("batch_job_failed", batch_id=batch_id, action=action, error=repr(exc))
        finally:
            self.outcomes = [*self.outcomes[-99:], (batch_id, action, outcome)]
            try:
                await self._store.release(batch_id, self.owner)
            except StoreUnavailable as exc:
                log.warning("batch_lease_release_failed", batch_id=batch_id, error=repr(exc))
            self._job = None
            self.kick()
        log.info("batch_job_done", batch_id=batch_id, action=action, outcome=outcome)

    async def stop(self) -> None:
        """Abandon a running job (its lease runs out; another sweep resumes it)."""
        if self._job is not None:
            self._job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._job

    def __repr__(self) -> str:
        return f"<BatchJobs owner={self.owner} running={self._job is not None}>"
