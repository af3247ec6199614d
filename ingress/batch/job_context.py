"""What a batch job works with, in the offload process: its connections, its lease, its input.

A job opens its own connections (the process is not the ingress) and closes them
(`context`). It holds the batch's job lease (`BatchStore.lease`), renewed before each
chunk of work (`renew`): a job that lost it stops with `LeaseLost`. `input_chunks` walks
the batch's input file in chunks of `CHUNK`, the unit a crash may repeat.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog

from ingress.batch.files import Files
from ingress.batch.filestore.base import FileMissing
from ingress.batch.filestore.factory import make_file_store
from ingress.batch.lines import requests_from
from ingress.batch.store import BatchStore
from ingress.chat.governance import Governance
from orchestrator.core import redis_client
from orchestrator.core.results import ResultStore
from orchestrator.core.settings import Settings
from orchestrator.queues.base import Queue
from orchestrator.queues.factory import make_queue, pool_queues
from orchestrator.tenants.config import Tenancy

log = structlog.get_logger(__name__)

CHUNK = 500
"""Lines enqueued (or looked up) per round trip batch; the unit a crash may repeat."""
PARALLEL = 32
"""Single commands in flight at once (a cluster client's pool raises rather than waits)."""
LEASE_S = 15.0
"""A job's lease; renewed every chunk, so it only runs out when the job's process died
(another ingress then resumes the batch this long after)."""

Line = tuple[int, dict[str, Any]]
"""A line of the input file: its index and its request object."""


class LeaseLost(Exception):
    """Another job holds the batch now."""


class JobContext:
    """What a job works with, built from the settings in the job's process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_client.connect_view(
            settings.redis, max_connections=64, pool_timeout_s=10.0
        )
        self.batches = BatchStore(self.redis)
        self.results = ResultStore(self.redis, settings.reply_ttl_s)
        self.files = Files(self.redis, make_file_store(settings))
        consumer = f"batch-jobs-{socket.gethostname()}-{os.getpid()}"
        self.queues: dict[str, Queue] = pool_queues(
            settings,
            lambda name: make_queue(settings, name, self.redis, consumer),
            [d for d in settings.deployments if d.kind == "provisioned"],
        )
        self.tenancy = Tenancy(settings.tenants, settings.api_keys)
        self.governance = Governance.of(settings.deployments, settings.default_max_tokens)

    def ceiling(self, tenant: str) -> int:
        """The tenant's `max_tokens` ceiling."""
        own = self.tenancy.config(tenant).max_tokens_ceiling
        return own if own is not None else self.settings.max_tokens_ceiling

    async def close(self) -> None:
        """Close every connection."""
        for queue in {id(q): q for q in self.queues.values()}.values():
            await queue.close()
        await self.files.store.close()
        await self.redis.aclose()


@asynccontextmanager
async def context(settings: Settings) -> AsyncIterator[JobContext]:
    """A JobContext, closed afterwards."""
    ctx = JobContext(settings)
    try:
        yield ctx
    finally:
        await ctx.close()


async def renew(ctx: JobContext, batch_id: str, owner: str) -> None:
    """Extend the job's lease on the batch; LeaseLost when another job holds it now."""
    if not await ctx.batches.lease(batch_id, owner, LEASE_S):
        raise LeaseLost(batch_id)


async def input_chunks(
    ctx: JobContext, batch: dict[str, str], owner: str
) -> AsyncIterator[list[Line]]:
    """The batch's input lines in chunks of `CHUNK`, the lease renewed before each chunk.

    A missing input file ends the walk (logged): the lines read so far still come.
    """
    batch_id = batch["id"]
    pending: list[Line] = []
    try:
        async for i, obj, _ in requests_from(ctx.files.store.read(batch["input_file_id"]), 0, 0):
            pending.append((i, obj))
            if len(pending) >= CHUNK:
                await renew(ctx, batch_id, owner)
                yield pending
                pending = []
    except FileMissing:
        log.error("batch_input_missing", batch_id=batch_id)
    if pending:
        await renew(ctx, batch_id, owner)
        yield pending
