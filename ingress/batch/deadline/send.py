"""Sending claimed lines to their overflow target: synchronous calls or a remote batch.

Flex and standard: each line is called through the high-priority proxy (`BatchWork.call`:
the worker's attempt loop and result document), `concurrency` at a time, at the chosen
target, then, if it still refuses (429, 408, 5xx after the retries), at the pricier
synchronous entries in turn; `service_tier: "flex"` on Flex entries. The result is written once
(`ResultStore.complete`) and counted in `overflow_done`. A Batch deployment: all the
lines of the round in one remote batch (`deadline/remote`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping, Sequence

import structlog

from ingress.batch.deadline.planner import Option
from ingress.batch.deadline.remote import RemoteBatches
from ingress.batch.files import Files
from ingress.batch.lines import line_request, requests_from
from ingress.batch.runner import BatchWork
from ingress.batch.store import BatchStore, line_request_id
from ingress.chat.governance import Governance
from ingress.chat.targets import Target
from orchestrator.core.deployments import DeploymentConfig, OverflowEntry
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.schemas import QueuedRequest
from orchestrator.core.settings import Settings
from orchestrator.tenants.config import Tenancy

log = structlog.get_logger(__name__)

LINE_S = 10.0
"""The time a synchronous overflow line is assumed to take before one was measured."""


class Sender:
    """Calls (or submits) the lines the planner moved."""

    def __init__(
        self, store: BatchStore, files: Files, work: BatchWork, targets: Mapping[str, Target],
        settings: Settings, remote: RemoteBatches, concurrency: int,
    ) -> None:  # fmt: skip
        self._store = store
        self._files = files
        self._work = work
        self._targets = targets
        self._settings = settings
        self._remote = remote
        self._gate = asyncio.Semaphore(concurrency)
        self._governance = Governance.of(settings.deployments, settings.default_max_tokens)
        self._tenancy = Tenancy(settings.tenants, settings.api_keys)
        self._running: set[asyncio.Task[None]] = set()
        self.line_s = LINE_S
        """How long one line's calls take here (a moving average; `LINE_S` before any)."""

    async def send(
        self, f: dict[str, str], d: DeploymentConfig, label: str, options: Sequence[Option],
        ids: set[str],
    ) -> None:  # fmt: skip
        """Send the lines `ids` of batch `f` to the option `label` (`name:kind`)."""
        entries = {f"{e.name}:{e.kind}": e for e in d.overflow}
        reqs = await self._requests(f, ids)
        if not reqs:
            return
        if entries[label].kind == "batch":
            await self._remote.submit(f["id"], entries[label], reqs)
            return
        chain = self._chain(entries, label, options)
        for req in reqs:
            task = asyncio.create_task(self._call(f, req, chain))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _chain(
        self, entries: Mapping[str, OverflowEntry], label: str, options: Sequence[Option]
    ) -> list[Target]:
        """The chosen target, then the pricier synchronous ones, in price order."""
        chosen = next(o for o in options if o.name == label)
        later = sorted(
            (o for o in options if o.kind != "batch" and o.price_per_line > chosen.price_per_line),
            key=lambda o: o.price_per_line,
        )

        def target(o: Option) -> Target:
            e = entries[o.name]
            tier = "flex" if e.kind == "flex" else None
            return dataclasses.replace(self._targets[e.name], service_tier=tier, spillover=())

        return [target(chosen), *(target(o) for o in later)]

    async def _requests(self, f: dict[str, str], ids: set[str]) -> list[QueuedRequest]:
        """The claimed lines as requests, read from the input file."""
        out: list[QueuedRequest] = []
        own = self._tenancy.config(f["tenant"]).max_tokens_ceiling
        ceiling = own if own is not None else self._settings.max_tokens_ceiling
        chunks = await self._files.chunks(f["tenant"], f["input_file_id"])
        async for index, obj, _ in requests_from(chunks):
            if line_request_id(f["id"], index) in ids:
                out.append(line_request(
                    obj, index, batch_id=f["id"], tenant=f["tenant"], reply_key=f["reply_key"],
                    deadline=float(f["expires_at"]), now=float(f.get("created_at") or 0),
                    ceiling=ceiling, governance=self._governance,
                ))  # fmt: skip
        return out

    async def _call(self, f: dict[str, str], req: QueuedRequest, chain: list[Target]) -> None:
        """Each target in turn (with the worker's retries) until one answers or refuses for
        good. Not the proxy's spillover chain: a Flex 429 is Flex's own contention, which
        must not open the breaker the standard entry of the same deployment shares."""
        async with self._gate:
            started = time.monotonic()
            try:
                for i, target in enumerate(chain):
                    moved = req.model_copy(update={"deployment": target.name})
                    doc = await self._work.call(moved, target)
                    again = doc.status_code in (408, 429) or (doc.status_code or 0) >= 500
                    if doc.status == "completed" or not again or i == len(chain) - 1:
                        break
                self.line_s = 0.8 * self.line_s + 0.2 * (time.monotonic() - started)
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
        return f"<Sender calls={len(self._running)}>"
