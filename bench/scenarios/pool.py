"""`ptu bench pool`: two PTU deployments of one model, busy and idle, and a batch for both.

One simulator serves both members (`east`, 15 PTU, and `west`, 10 PTU, of gpt-4o-mini);
interactive traffic goes through the ingress to each member by its own name, heavy on
east and light on west, the same seeded calls under every policy. Only the batch's way
changes:

- static: today's per-deployment queues, the batch split between them in proportion to
  their PTUs (what an operator would configure), each drained by its member's throttle;
- round-robin: APIM-like weighted round robin (weights = PTUs) of the batch's calls
  straight to the members at a fixed concurrency with the SDK's retries, blind to how
  full each member is;
- pool: both members in one pool (`"pool"` in `PTU_DEPLOYMENTS`), the whole batch sent to
  the pool's name: one queue that both members' lanes drain, each at its own throttle's
  pace.

Between policies the simulator is reset, Redis flushed and the orchestrator restarted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2
import structlog

from bench.harness.runner import Policy, prepare
from bench.harness.sampler import Sampler
from bench.harness.stack import SimulatorOptions, Stack, sigterm_as_interrupt
from bench.harness.traffic import (
    Clock,
    chat_url,
    collect_results,
    run_direct_batch,
    run_interactive,
    submit_batch,
    sweep_results,
)
from bench.harness.workload import Capacity, MixedWorkload, batch_calls, interactive_calls
from bench.report import tables as report
from bench.scenarios.pool_measures import MemberRun, PoolRun, compare, row_of
from bench.scenarios.pool_report import NOTES, keys, write_report
from orchestrator.core import logs
from simulator.config import parse_deployment

log = structlog.get_logger(__name__)

POOL = "gpt-4o-mini-pool"
MODEL = "gpt-4o-mini"
MEMBERS = {"east": 15, "west": 10}
POLICIES = ("static", "round-robin", "pool")
SIM = SimulatorOptions(specs=tuple(f"{n}={MODEL}:{p}" for n, p in MEMBERS.items()))


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Everything one `bench pool` run needs."""

    duration_s: float
    batch: int
    heavy: float = 0.65
    """East's interactive share of its capacity (its burst: `heavy + 0.15`)."""
    light: float = 0.10
    """West's interactive share (its burst: `light + 0.05`)."""
    lower: float = 0.2
    upper: float = 0.9
    max_concurrency: int = 20
    grace_s: float = 30.0
    seed: int = 7
    policies: tuple[str, ...] = POLICIES
    sim: SimulatorOptions = field(default_factory=lambda: SIM)

    def workload(self, share: float, burst: float) -> MixedWorkload:
        """The interactive workload of one member (and the batch's shape and time)."""
        return MixedWorkload(
            duration_s=self.duration_s, hp_share=share, burst_share=burst, lp_requests=self.batch
        )


def quick_config(seed: int = 7) -> PoolConfig:
    """CI-sized: about 90 s per policy. The batch is several times what the two members'
    buckets absorb at once (one window of capacity each), so the makespan measures the
    members' sustained spare capacity, not their burst room."""
    return PoolConfig(duration_s=80.0, batch=150, grace_s=20.0, seed=seed)


def full_config(seed: int = 7) -> PoolConfig:
    """The run docs/benchmarks.md quotes: about four minutes per policy."""
    return PoolConfig(duration_s=200.0, batch=420, seed=seed)


def capacity(ptus: int, sim: SimulatorOptions) -> Capacity:
    """A member's capacity as the workload generator sees it."""
    spec = parse_deployment(f"m={MODEL}:{ptus}")
    return Capacity(spec.capacity_tpm, spec.output_weight, sim.window_s)


def deployments(pooled: bool) -> str:
    """`PTU_DEPLOYMENTS` of the members, in one pool or not."""
    entries = [
        {"name": n, "model": MODEL, "ptus": p, **({"pool": POOL} if pooled else {})}
        for n, p in MEMBERS.items()
    ]
    return json.dumps(entries)


def policies(cfg: PoolConfig) -> dict[str, Policy]:
    """The three policies and their orchestrator settings."""
    common = {
        "PTU_LOWER_THRESHOLD": f"{cfg.lower:g}",
        "PTU_UPPER_THRESHOLD": f"{cfg.upper:g}",
        "PTU_MAX_CONCURRENCY": str(cfg.max_concurrency),
    }
    split = " / ".join(f"{n} {p / sum(MEMBERS.values()):.0%}" for n, p in MEMBERS.items())
    return {
        "static": Policy(
            "static",
            f"per-deployment queues, the batch split by PTUs ({split})",
            "queued",
            {**common, "PTU_DEPLOYMENTS": deployments(False)},
        ),
        "round-robin": Policy(
            "round-robin",
            f"weighted round robin by PTUs straight to the members, {cfg.max_concurrency} "
            "concurrent in all, SDK retries (APIM-like)",
            "direct",
            {**common, "PTU_DEPLOYMENTS": deployments(False)},
            direct_concurrency=cfg.max_concurrency,
        ),
        "pool": Policy(
            "pool",
            f"one pool '{POOL}': one queue, drained by both members' lanes",
            "queued",
            {**common, "PTU_DEPLOYMENTS": deployments(True)},
        ),
    }


def split_by_weight(calls: list[Any], weights: dict[str, int]) -> dict[str, list[Any]]:
    """Smooth weighted round robin (nginx's): each call to the member furthest behind."""
    out: dict[str, list[Any]] = {n: [] for n in weights}
    current = dict.fromkeys(weights, 0)
    total = sum(weights.values())
    for call in calls:
        for n, w in weights.items():
            current[n] += w
        chosen = max(current, key=lambda n: current[n])
        current[chosen] -= total
        out[chosen].append(call)
    return out


async def drive(stack: Stack, policy: Policy, cfg: PoolConfig) -> tuple[PoolRun, dict[str, int]]:
    """One policy's run: interactive calls on both members, the batch its policy's way."""
    clock = Clock()
    members = {n: MemberRun(n) for n in MEMBERS}
    run = PoolRun(policy.name, policy.description, members)
    shares = {"east": (cfg.heavy, cfg.heavy + 0.15), "west": (cfg.light, cfg.light + 0.05)}
    limits = httpx2.Limits(max_connections=400, max_keepalive_connections=100)
    async with httpx2.AsyncClient(timeout=120.0, limits=limits, verify=stack.verify) as client:
        samplers = {n: Sampler(client, stack.sim_url, n, clock.t0) for n in MEMBERS}
        for s in samplers.values():
            s.start()
        stop = asyncio.Event()
        tasks = []
        for i, (name, ptus) in enumerate(MEMBERS.items()):
            wl = cfg.workload(*shares[name])
            calls = interactive_calls(wl, capacity(ptus, cfg.sim), name, cfg.seed + i)
            url = chat_url(stack.ingress_url, name)
            headers = {"x-priority": "high"}
            tasks.append(run_interactive(client, url, calls, clock, headers, members[name].hp))
        interactive = asyncio.ensure_future(asyncio.gather(*tasks))
        batch = asyncio.create_task(_batch(stack, policy, cfg, client, clock, run, stop))
        try:
            while clock.offset() < cfg.duration_s + cfg.grace_s:
                stack.check_alive()
                if batch.done():
                    batch.result()  # raises what the batch's task raised
                    if interactive.done():
                        break
                await asyncio.sleep(0.25)
        finally:
            stop.set()
            for task in (interactive, batch):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for s in samplers.values():
                await s.stop()
            if policy.batch == "queued":
                await sweep_results(client, stack.ingress_url, run.lp, clock)
    for name, s in samplers.items():
        members[name].samples = s.samples
    run.hp_end = min(cfg.duration_s, clock.offset())
    run.run_end = clock.offset()
    served = {n: (s.latest.low_requests if s.latest else 0) for n, s in samplers.items()}
    return run, served


async def _batch(
    stack: Stack,
    policy: Policy,
    cfg: PoolConfig,
    client: httpx2.AsyncClient,
    clock: Clock,
    run: PoolRun,
    stop: asyncio.Event,
) -> None:
    calls = batch_calls(cfg.workload(0.0, 0.0), POOL, cfg.seed)
    run.batch_start = calls[0].at_s
    weights = dict(MEMBERS)
    if policy.name == "pool":
        await submit_batch(client, stack.ingress_url, POOL, calls, clock, run.lp)
    elif policy.batch == "queued":  # static: each member's share to its own queue, by PTUs
        total, cut = sum(weights.values()), 0
        for i, (name, w) in enumerate(weights.items()):
            end = len(calls) if i == len(weights) - 1 else cut + round(len(calls) * w / total)
            part = [_named(c, name) for c in calls[cut:end]]
            cut = end
            await submit_batch(client, stack.ingress_url, name, part, clock, run.lp)
    else:  # round-robin: straight to the members, blind to how full they are
        parts = split_by_weight(calls, weights)
        total = sum(weights.values())
        await asyncio.gather(
            *(
                run_direct_batch(
                    [_named(c, name) for c in part],
                    stack.sim_url,
                    stack.sim.api_key,
                    name,
                    max(1, round(policy.direct_concurrency * weights[name] / total)),
                    stack.verify,
                    clock,
                    run.lp,
                    stop,
                )
                for name, part in parts.items()
            )
        )
        return
    await collect_results(client, stack.ingress_url, run.lp, clock, stop)


def _named(call: Any, name: str) -> Any:
    return replace(call, body={**call.body, "model": name})


def run_pool(cfg: PoolConfig, out: Path) -> list[dict[str, Any]]:
    """Run every policy of `cfg`, write results.json, results.md and the plot; the rows."""
    out.mkdir(parents=True, exist_ok=True)
    table = policies(cfg)
    runs: list[PoolRun] = []
    rows = []
    with sigterm_as_interrupt(), Stack(out / "run", cfg.sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        for name in cfg.policies:
            log.info("policy_started", policy=name)
            prepare(stack, table[name])
            run, served = asyncio.run(drive(stack, table[name], cfg))
            runs.append(run)
            rows.append(row_of(run, dict.fromkeys(MEMBERS, cfg.upper), served))
            log.info("policy_finished", policy=name)
    compare(rows)
    write_report(out, rows, runs, _notes(cfg, rows), list(MEMBERS), cfg.upper)
    return rows


def _notes(cfg: PoolConfig, rows: list[dict[str, Any]]) -> list[str]:
    sim = cfg.sim
    return [
        f"members: {', '.join(f'{n} {MODEL} x {p} PTU' for n, p in MEMBERS.items())}, one "
        f"simulator, window {sim.window_s:g} s, TTFT {sim.ttft_ms:g} ms, TBT {sim.tbt_ms:g} ms",
        f"interactive (x-priority: high, to each member by name) over {cfg.duration_s:g} s: "
        f"east at {cfg.heavy:.0%} of its capacity (burst {cfg.heavy + 0.15:.0%}), west at "
        f"{cfg.light:.0%} (burst {cfg.light + 0.05:.0%})",
        f"batch: {cfg.batch} requests of ~2500 prompt tokens, max_tokens 150, at 3 s",
        f"thresholds lower {cfg.lower:g} / upper {cfg.upper:g}, max concurrency "
        f"{cfg.max_concurrency} per member; seed {cfg.seed}",
        *NOTES,
        *(f"{r['policy']}: {r['description']}" for r in rows),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ptu bench pool` (besides --out, --quick, --seed)."""
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset")
    parser.add_argument("--batch", type=int, help="batch size")
    parser.add_argument("--duration-s", type=float, help="interactive traffic per policy")


def run(args: argparse.Namespace) -> int:
    """Run the scenario from the command line."""
    logs.configure("warning", "console")
    cfg = quick_config(args.seed) if args.quick else full_config(args.seed)
    chosen = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    unknown = sorted(set(chosen) - set(POLICIES))
    if unknown:
        print(f"ptu bench pool: unknown policies {unknown} (known: {', '.join(POLICIES)})")
        return 2
    cfg = replace(
        cfg,
        policies=tuple(p for p in POLICIES if p in chosen),
        batch=args.batch or cfg.batch,
        duration_s=args.duration_s or cfg.duration_s,
    )
    out = Path(args.out)
    rows = run_pool(cfg, out)
    print(report.markdown_table(rows, keys(list(MEMBERS))))
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.md'}, {out / 'pool.png'}")
    return 0
