"""Between the store and the filter: what a token event tells, what a reading shows."""

from __future__ import annotations

from orchestrator.core.schemas import TokenEvent
from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.base import Calibration
from orchestrator.utilisation.estimate.filter import Estimate, Signal
from orchestrator.utilisation.estimate.state import FilterState


def signal_of(
    event: TokenEvent,
    d: DeploymentConfig,
    *,
    full: float,
    charged: tuple[float, float] | None,
    calibrated: bool,
    controlled: bool,
) -> Signal:
    """What `event` tells the filter: its charge in fractions of `full` (the level of 100 %,
    in tokens), and with calibration on what the deployment said. `charged` is the
    (input, max_tokens) its `admit` charged, when one was applied."""
    input_tokens = max(0, event.prompt_tokens - event.cached_tokens)
    if event.phase == "admit":
        tokens = input_tokens + event.max_tokens * d.weight
    elif event.phase == "complete" and charged is not None:
        tokens = (event.completion_tokens - charged[1]) * d.weight
        # the actual prompt (less cached) replaces the gateway's estimate when known
        if event.prompt_tokens > 0:
            tokens += input_tokens - charged[0]
    elif event.phase == "complete":
        tokens = input_tokens + event.completion_tokens * d.weight
    else:
        tokens = 0.0
    delta = tokens / full
    if not calibrated:
        return Signal(delta=delta)
    saturated = event.retry_after_ms is not None or event.spilled
    used = None
    if event.remaining_tokens is not None:
        limit = event.limit_tokens or d.capacity_tpm
        used = max(0.0, 1.0 - event.remaining_tokens / limit)
    return Signal(
        delta=delta,
        controlled=controlled,
        utilisation=event.utilisation,
        age_s=event.utilisation_age_s,
        saturated=saturated,
        retry_after_s=None if event.retry_after_ms is None else event.retry_after_ms / 1000,
        used=used,
        went_through=event.phase == "complete" and not saturated,
    )


def calibration_of(estimate: Estimate, state: FilterState, now: float) -> Calibration:
    """How the reading was made, for `ptu status`, the metrics and the benchmarks."""
    observed_age = None if state.obs_at is None else max(0.0, now - state.obs_at)
    return Calibration(
        model=estimate.model,
        correction=estimate.value - estimate.model,
        correction_age_s=observed_age,
        observed=state.obs,
        observed_age_s=observed_age,
        throttled_s=estimate.held_s,
        model_kind=estimate.hypothesis or "bucket",
        unseen=estimate.unseen,
        uncertainty=estimate.sigma,
        trusted=estimate.trusted,
        ahead=estimate.ahead,
    )
