"""`ptu bench SCENARIO`: each scenario is a module with add_arguments and run."""

from __future__ import annotations

import argparse
import importlib

from orchestrator.core.settings import Settings

SCENARIOS: dict[str, tuple[str, str]] = {
    "mixed": ("bench.scenarios.mixed", "policies side by side on one seeded mixed workload"),
    "overhead": ("bench.scenarios.overhead", "added latency and throughput of ingress and worker"),
    "saturation": (
        "bench.scenarios.saturation",
        "closed-loop load against the simulator's leaky bucket",
    ),
    "robustness": (
        "bench.scenarios.robustness",
        "the mixed workload under realities that disagree with our model: off, auto, oracle",
    ),
    "throttle-curve": ("bench.scenarios.throttle_curve", "low-priority concurrency vs utilisation"),
    "fairness": ("bench.scenarios.fairness", "one tenant's big batch beside another's small one"),
    "foreign": (
        "bench.scenarios.foreign",
        "the product against an upstream we did not write (already running at --upstream)",
    ),
    "batch-scale": (
        "bench.scenarios.batch_scale",
        "a 100,000-line ~200 MB batch beside interactive traffic",
    ),
    "cost": (
        "bench.scenarios.cost",
        "Redis commands, Redis CPU and process CPU per request; one process's saturation",
    ),
    "deadline": (
        "bench.scenarios.deadline",
        "a batch needing 2x the idle PTU before its deadline: PTU, PAYG, Batch, planned",
    ),
    "pool": (
        "bench.scenarios.pool",
        "two PTU deployments of one model, busy and idle: static split, round robin, a pool",
    ),
    "waiting": (
        "bench.scenarios.waiting",
        "waiting low-priority calls behind a batch, and thousands held by one ingress",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-command per scenario."""
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name, (module_name, text) in SCENARIOS.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--out", default=f"bench-out/{name}", help="output directory")
        p.add_argument("--quick", action="store_true", help="CI-sized run")
        p.add_argument("--seed", type=int, default=7)
        p.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        module.add_arguments(p)


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Run the chosen scenario."""
    module = importlib.import_module(args._module)
    code: int = module.run(args)
    return code
