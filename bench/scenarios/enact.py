"""Making a reality happen during a run of `ptu bench robustness` (`realities.py` says what
it is): a capacity step's PATCHes at their offsets, the over-asking batch and the proxy that
makes its outputs short. Everything the simulator can be told before a run is in
`realities.simulator_patch`; this is what has to act while the run goes or beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import httpx2
import structlog

from bench.harness.runner import LiveRun, Tick
from bench.harness.stack import Stack
from bench.harness.workload import MixedWorkload
from bench.scenarios.realities import OVERASK_MAX_TOKENS, OVERASK_USES
from orchestrator.core.serving import free_port

log = structlog.get_logger(__name__)

OUTPUT_PROXY = "bench.harness.output_proxy"
"""The module `python -m` runs as the overask reality's proxy."""


def stepper(stack: Stack, patches: Sequence[tuple[float, dict[str, object]]]) -> Tick | None:
    """A run's tick applying each (offset, PATCH body) once the run's clock passes its offset."""
    if not patches:
        return None
    pending = sorted(patches, key=lambda p: p[0])
    url = f"{stack.sim_url}/sim/deployments/{stack.sim.deployment}"

    async def tick(live: LiveRun) -> None:
        while pending and live.clock.offset() >= pending[0][0]:
            _, body = pending.pop(0)
            async with httpx2.AsyncClient(verify=stack.verify, timeout=5.0) as client:
                (await client.patch(url, json=body)).raise_for_status()
            log.info("reality_step", at_s=round(live.clock.offset(), 2), patch=body)

    return tick


def overasking(workload: MixedWorkload) -> MixedWorkload:
    """The same batch, its lines asking max_tokens `OVERASK_MAX_TOKENS` (the overask reality)."""
    return replace(workload, lp=replace(workload.lp, max_tokens=OVERASK_MAX_TOKENS))


def start_output_proxy(stack: Stack) -> str:
    """Start the overask reality's proxy in front of the simulator; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--port", str(port), "--upstream", stack.sim_url]
    args += ["--completion-tokens", str(OVERASK_USES)]
    stack.start_module("output-proxy", OUTPUT_PROXY, args, f"{url}/sim/state")
    return url
