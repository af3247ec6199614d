"""What runs beside the ingress's requests, from start-up to shutdown: the estimate's
heartbeat, the incarnation watch, the reconciler (requests whose queue entry Redis
lost), the batch sweeper, the offload warm-up, the one subscription that wakes waiting
calls; at shutdown the batch work stops and every client the app owns is closed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import structlog
from starlette.applications import Starlette

from ingress.batch.job import warm as job_warm
from ingress.batch.validate import warm as validate_warm
from ingress.wiring import Wired
from orchestrator.core.incarnation import watch_incarnation

log = structlog.get_logger(__name__)


def make_lifespan(
    w: Wired, *, owns_tracing: bool
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan over `w`; `owns_tracing`: shut the tracer down at the end."""
    parts, jobs, work, tracer = w.parts, w.jobs, w.work, w.tracer
    validator, job_runner, files = w.validator, w.job_runner, w.files
    incarnation, deployments, tenants = w.incarnation, w.deployments, w.tenants

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # this ingress folds high priority into the estimate itself: it is a feeder
        beat = asyncio.create_task(
            parts.estimate.keep_alive() if parts.estimate else asyncio.Event().wait()
        )
        watch = asyncio.create_task(watch_incarnation(incarnation))
        reconciler = asyncio.create_task(w.reconciler.run())
        sweeper = asyncio.create_task(jobs.run())
        planner = asyncio.create_task(w.overflow.run())
        completions = asyncio.create_task(w.waiting.completions.run())
        warming = [
            asyncio.create_task(validator.warm(validate_warm)),
            asyncio.create_task(job_runner.warm(job_warm)),
        ]
        log.info("ingress_started", deployments=list(deployments), open=tenants.open)
        try:
            yield
        finally:
            for task in (beat, watch, reconciler, sweeper, planner, completions, *warming):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await jobs.stop()
            await w.overflow.stop()
            await work.stop()
            for offload in (validator, job_runner):
                await offload.close()
            await files.store.close()
            await parts.close()
            if owns_tracing:
                tracer.shutdown()

    return lifespan
