"""The `/sim/state` document of a deployment: counters, in-flight, faults, its reality.

`utilization` is the true level as a fraction (DESIGN.md §5, Simulator); the reality
block says how a provisioned deployment departs from the orchestrator's model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulator.openai.deployments import Deployment


def state_of(d: Deployment, now: float) -> dict[str, Any]:
    """The `/sim/state` entry of deployment `d`."""
    c = d.counters
    return {
        "kind": d.spec.kind,
        "model": d.spec.model,
        "capacity_tpm": d.capacity_tpm,
        "window_s": d.window_s,
        "utilization": d.utilization(now),
        "in_flight": sum(d.in_flight.values()),
        "in_flight_by_priority": dict(d.in_flight),
        "peak_in_flight_by_priority": dict(d.peak_in_flight),
        "requests": c.requests,
        "throttled": c.throttled,
        "errors": c.errors,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "spilled": c.spilled,
        "spillover_errors": c.spillover_errors,
        "spillover_served": c.spillover_served,
        "by_priority": {k: dict(v) for k, v in c.by_priority.items()},
        "tbt_ms": d.tbt_ms,
        "ttft_ms": d.ttft_ms,
        "faults": {
            k: getattr(d.faults, k)
            for k in ("error_rate", "timeout_rate", "spike_rate", "spike_ms")
        },
        **_reality(d, now),
    }


def _reality(d: Deployment, now: float) -> dict[str, Any]:
    """How `d` departs from the orchestrator's model (provisioned only)."""
    if d.meter is None:
        return {}
    bg = d.background_counters
    return {
        "ptus": d.meter.capacity_tpm / d.spec.input_tpm_per_ptu,
        "spillover": d.spillover,
        "utilisation_model": d.utilisation_model,
        "utilisation_header": d.header.mode,
        "header_lag_s": d.header.lag_s,
        "header_smoothing_s": d.header.smoothing_s,
        "background": {
            "share": d.background.share_at(now),
            "profile": str(d.background.profile),
            "requests": bg.requests,
            "throttled": bg.throttled,
            "prompt_tokens": bg.prompt_tokens,
            "completion_tokens": bg.completion_tokens,
        },
    }
