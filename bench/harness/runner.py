"""One policy run: the stack restarted for the policy, the workload driven, everything recorded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import httpx2
import redis
import structlog

from bench.harness.oracle import ORACLE_WORKER
from bench.harness.sampler import Sampler
from bench.harness.traffic import (
    Clock,
    chat_url,
    collect_results,
    run_direct_batch,
    run_interactive,
    submit_batch,
    sweep_results,
)
from bench.harness.workload import PlannedCall
from bench.report.metrics import PolicyRun
from bench.report.views import worker_view
from devstack.stack import Stack
from orchestrator.core.errors import PTUError

log = structlog.get_logger(__name__)

BatchMode = Literal["none", "direct", "queued"]
ORCHESTRATOR_PROCESSES = ("ingress", "estimator", "worker")
"""Name prefixes of the processes `prepare` restarts for each run."""
Tick = Callable[["LiveRun"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Policy:
    """How the low-priority batch reaches the deployment, and the worker's PTU_* settings."""

    name: str
    description: str
    batch: BatchMode
    worker_env: Mapping[str, str] = field(default_factory=dict)
    direct_concurrency: int = 10
    worker_module: str = "orchestrator"
    """What `python -m` runs as the worker (`orchestrator`: `ptu worker`; see `Stack`)."""

    @property
    def source(self) -> str:
        """The worker's utilisation source."""
        return self.worker_env.get("PTU_UTILIZATION_SOURCE", "estimate")


@dataclass
class LiveRun:
    """A run in progress: what a dashboard shows while it goes."""

    run: PolicyRun
    clock: Clock
    sampler: Sampler
    duration_s: float
    stack_check: Callable[[], None]


def prepare(
    stack: Stack,
    policy: Policy,
    workers: int = 1,
    *,
    sim_patch: Mapping[str, object] | None = None,
    fresh_metrics: bool = False,
) -> None:
    """Give `policy` a clean stack: fresh ingress, estimator and workers, empty Redis, reset sim.

    `sim_patch` is applied to the simulated deployment first (a robustness reality);
    `fresh_metrics` also forgets the simulator's Azure Monitor history. An upstream the
    stack does not run (`Stack.use_upstream`) is left as it is.
    """
    for name in [n for n in stack.children if n.startswith(ORCHESTRATOR_PROCESSES)]:
        stack.stop(name)  # the simulator and a benchmark's helpers serve every run
    with redis.Redis.from_url(stack.redis_url) as client:
        client.flushall()
    if stack.simulated:
        _reset_simulator(stack, sim_patch, fresh_metrics)
    elif sim_patch:
        raise PTUError("a simulator patch needs the stack's own simulator")
    env = stack.base_env(**policy.worker_env)
    queued = policy.batch == "queued"
    stack.start_orchestrator(
        env,
        estimator=queued and policy.source == "estimate",
        workers=workers if queued else 0,
        worker_module=policy.worker_module,
    )


def _reset_simulator(
    stack: Stack, sim_patch: Mapping[str, object] | None, fresh_metrics: bool
) -> None:
    sim = stack.sim_url
    if sim_patch:
        httpx2.patch(
            f"{sim}/sim/deployments/{stack.sim.deployment}",
            json=dict(sim_patch),
            verify=stack.verify,
            timeout=5.0,
        ).raise_for_status()
    reset = f"{sim}/sim/reset" + ("?metrics=1" if fresh_metrics else "")
    httpx2.post(reset, verify=stack.verify, timeout=5.0).raise_for_status()


async def drive(
    stack: Stack,
    policy: Policy,
    hp_calls: Sequence[PlannedCall],
    lp_calls: Sequence[PlannedCall],
    duration_s: float,
    grace_s: float,
    tick: Tick | None = None,
    *,
    end_after_batch_s: float | None = None,
) -> PolicyRun:
    """Send the workload under `policy`; stop at duration_s (+ grace for an unfinished batch).

    With `end_after_batch_s` the run ends that long after the batch has finished, even if
    interactive calls remain planned: long enough for the calls that met the batch to end.
    """
    deployment = stack.sim.deployment
    clock = Clock()
    settings = {k: v for k, v in policy.worker_env.items() if k.startswith("PTU_")}
    run = PolicyRun(policy.name, policy.description, settings=settings)
    if policy.worker_module == ORACLE_WORKER:
        run.view_source = "oracle"
    limits = httpx2.Limits(max_connections=400, max_keepalive_connections=100)
    exits = contextlib.AsyncExitStack()
    async with (
        exits,
        httpx2.AsyncClient(timeout=120.0, limits=limits, verify=stack.verify) as client,
    ):
        sampler = Sampler(client, stack.sim_url, deployment, clock.t0)
        if stack.simulated:  # only our simulator tells its true level (`/sim/state`)
            if policy.batch == "queued":
                sampler.view = await worker_view(
                    stack, policy.worker_env, exits, policy.worker_module
                )
            sampler.start()
        stop = asyncio.Event()
        hp = asyncio.create_task(
            run_interactive(
                client,
                chat_url(stack.ingress_url, deployment),
                hp_calls,
                clock,
                {"x-priority": "high"},
                run.hp,
            )
        )
        batch = asyncio.create_task(_batch(stack, policy, client, lp_calls, clock, run, stop))
        live = LiveRun(run, clock, sampler, duration_s, stack.check_alive)
        try:
            limit = duration_s + grace_s
            await _until_done(hp, batch, clock, limit, live, tick, end_after_batch_s)
        finally:
            stop.set()
            for task in (hp, batch):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if stack.simulated:
                await sampler.stop()
            if policy.batch == "queued":
                await sweep_results(client, stack.ingress_url, run.lp, clock)
    run.samples = sampler.samples
    run.hp_end = min(duration_s, clock.offset())
    run.run_end = clock.offset()
    last = sampler.latest
    if last is not None:
        run.lp_429 = last.low_throttled
        run.hp_429_sim = last.high_throttled
    return run


async def _until_done(
    hp: asyncio.Task[None],
    batch: asyncio.Task[None],
    clock: Clock,
    limit_s: float,
    live: LiveRun,
    tick: Tick | None,
    end_after_batch_s: float | None = None,
) -> None:
    batch_done_at: float | None = None
    while clock.offset() < limit_s and not (hp.done() and batch.done()):
        for task in (hp, batch):
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if end_after_batch_s is not None and batch.done():
            batch_done_at = clock.offset() if batch_done_at is None else batch_done_at
            if clock.offset() >= batch_done_at + end_after_batch_s:
                return
        live.stack_check()
        if tick is not None:
            await tick(live)
        await asyncio.sleep(0.25)


async def _batch(
    stack: Stack,
    policy: Policy,
    client: httpx2.AsyncClient,
    calls: Sequence[PlannedCall],
    clock: Clock,
    run: PolicyRun,
    stop: asyncio.Event,
) -> None:
    if policy.batch == "none" or not calls:
        return
    run.batch_start = calls[0].at_s
    if policy.batch == "direct":
        await run_direct_batch(
            calls,
            stack.sim_url,
            stack.sim.api_key,
            stack.sim.deployment,
            policy.direct_concurrency,
            stack.verify,
            clock,
            run.lp,
            stop,
        )
        return
    await submit_batch(client, stack.ingress_url, stack.sim.deployment, calls, clock, run.lp)
    await collect_results(client, stack.ingress_url, run.lp, clock, stop)
