"""The body of `PATCH /sim/deployments/{name}`: which fields exist and what each accepts.

Parsing is pure and all-or-nothing: a body with one bad field raises `ValueError` naming
it before anything changes, so the admin API answers 400 and the deployment is as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulator.openai.background import Profile, parse_profile
from simulator.openai.header import HEADER_MODES
from simulator.openai.meter import MODELS

NUMBERS = (
    "ptus",
    "tpm",
    "tbt_ms",
    "ttft_ms",
    "error_rate",
    "timeout_rate",
    "spike_rate",
    "spike_ms",
    "background_share",
    "window_s",
    "header_lag_s",
    "header_smoothing_s",
)
"""Fields that take a non-negative number."""
PATCHABLE = NUMBERS  # the name bench and older callers know
CHOICES: dict[str, tuple[str, ...]] = {
    "utilisation_model": MODELS,
    "utilisation_header": HEADER_MODES,
}
"""Fields of a PATCH body that take one of a few names rather than a number."""
PROFILE = "background_profile"
SPILLOVER = "spillover"
PROVISIONED_ONLY = (
    "ptus",
    "background_share",
    PROFILE,
    SPILLOVER,
    "window_s",
    "header_lag_s",
    "header_smoothing_s",
    *CHOICES,
)
RATES = ("error_rate", "timeout_rate", "spike_rate", "background_share")
POSITIVE = ("ptus", "tpm", "window_s")


@dataclass(frozen=True, slots=True)
class Changes:
    """A parsed PATCH body; only the fields it named are set."""

    numbers: dict[str, float] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    profile: Profile | None = None
    spillover: str | None = None
    """The standard deployment to spill to; None with `sets_spillover` removes it."""
    sets_spillover: bool = False


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key} must be a non-negative number")
    if key in RATES and value > 1:
        raise ValueError(f"{key} must be between 0 and 1")
    if key in POSITIVE and value <= 0:
        raise ValueError(
            "capacity must be positive" if key != "window_s" else f"{key} must be positive"
        )
    return float(value)


def _check_fields(changes: dict[str, Any], provisioned: bool) -> None:
    unknown = sorted(set(changes) - set(NUMBERS) - set(CHOICES) - {PROFILE, SPILLOVER})
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    if not provisioned:
        misplaced = [k for k in PROVISIONED_ONLY if k in changes]
        if misplaced:
            hint = "; use tpm" if "ptus" in misplaced else ""
            raise ValueError(f"{misplaced[0]} applies to provisioned deployments only{hint}")
    elif "tpm" in changes:
        raise ValueError("tpm applies to standard deployments only; use ptus")


def _profile(changes: dict[str, Any]) -> Profile | None:
    if PROFILE not in changes:
        return None
    if "background_share" in changes:
        raise ValueError(f"give background_share or {PROFILE}, not both")
    if not isinstance(changes[PROFILE], str):
        raise ValueError(f"{PROFILE} must be a string such as square:0,0.5,15")
    return parse_profile(changes[PROFILE])


def parse_changes(changes: dict[str, Any], *, provisioned: bool) -> Changes:
    """Validate a PATCH body for a provisioned (or a standard) deployment."""
    _check_fields(changes, provisioned)
    numbers: dict[str, float] = {}
    names: dict[str, str] = {}
    for key, value in changes.items():
        if key in CHOICES:
            if value not in CHOICES[key]:
                raise ValueError(f"{key} must be one of {', '.join(CHOICES[key])}")
            names[key] = value
        elif key in NUMBERS:
            numbers[key] = _number(key, value)
    profile = _profile(changes)
    spillover = changes.get(SPILLOVER)
    if spillover is not None and (not isinstance(spillover, str) or not spillover):
        raise ValueError(f"{SPILLOVER} must be a deployment name or null")
    return Changes(numbers, names, profile, spillover, SPILLOVER in changes)
