"""Realities for `ptu bench robustness`: ways a deployment disagrees with our model of it.

A reality spec is `+`-joined knobs, each `name` (its default magnitude) or `name=value`:

| knob | default | the deployment... |
|---|---|---|
| `nominal` | - | is exactly what the orchestrator assumes |
| `bypass=S` | 0.3 | also serves other applications, using S of its capacity, that bypass us |
| `capacity=F` | 0.8 | serves F of the capacity the table promises (told 15 PTU, serves 12) |
| `bucket=F` | 0.5 | has a bucket F times the window we assume (`PTU_ESTIMATE_WINDOW_S`) |
| `sliding` / `model=M` | - | means by utilisation the charges over the trailing window |
| `noisy` / `absent` / `header=H` | - | reports the utilisation header late + noisy, or not |

so `bypass=0.2+capacity=0.85` is a deployment shared with another app at 20 % that serves
85 % of its table capacity. Parsing is pure; `simulator_options` / `simulator_patch` turn a
reality into simulator flags or a PATCH body; the orchestrator is always told the nominal
deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.harness.stack import SimulatorOptions
from orchestrator.core.errors import ConfigError
from simulator.openai.header import HEADER_MODES
from simulator.openai.meter import MODELS

DEFAULT_REALITIES = ("nominal", "bypass", "capacity", "bucket", "sliding", "noisy", "absent")
QUICK_REALITIES = ("bypass+noisy",)
_DEFAULTS = {"bypass": 0.3, "capacity": 0.8, "bucket": 0.5}
_RANGES = {"bypass": (0.0, 0.9), "capacity": (0.1, 2.0), "bucket": (0.1, 4.0)}
_ALIASES = {
    "sliding": ("model", "sliding"),
    "noisy": ("header", "noisy"),
    "absent": ("header", "absent"),
}


@dataclass(frozen=True, slots=True)
class Reality:
    """How the simulated deployment departs from what the orchestrator is told."""

    name: str
    bypass: float = 0.0
    capacity: float = 1.0
    bucket: float = 1.0
    model: str = "bucket"
    header: str = "exact"

    @property
    def header_present(self) -> bool:
        """Whether PTU responses carry the utilisation header."""
        return self.header != "absent"

    def describe(self) -> str:
        """What differs from the orchestrator's model, in words."""
        parts = []
        if self.bypass:
            parts.append(f"other apps use {self.bypass:.0%} of capacity directly")
        if self.capacity != 1.0:
            parts.append(f"serves {self.capacity:.0%} of the table capacity")
        if self.bucket != 1.0:
            parts.append(f"bucket {self.bucket:g} x the assumed window")
        if self.model != "bucket":
            parts.append(f"utilisation = {self.model} window")
        if self.header != "exact":
            parts.append(f"header {self.header}")
        return "; ".join(parts) or "as the orchestrator assumes"


def _number(knob: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"reality knob {knob}={text!r}: not a number") from None
    low, high = _RANGES[knob]
    if not low <= value <= high:
        raise ConfigError(f"reality knob {knob}={text!r}: must be between {low:g} and {high:g}")
    return value


def _choice(knob: str, text: str, allowed: tuple[str, ...]) -> str:
    if text not in allowed:
        raise ConfigError(f"reality knob {knob}={text!r}: one of {', '.join(allowed)}")
    return text


def _with_number(reality: Reality, knob: str, amount: float) -> Reality:
    if knob == "bypass":
        return replace(reality, bypass=amount)
    if knob == "capacity":
        return replace(reality, capacity=amount)
    return replace(reality, bucket=amount)


def parse_reality(spec: str) -> Reality:
    """One reality from its spec (`bypass`, `capacity=0.85`, `bypass=0.2+header=noisy`...)."""
    name = spec.strip()
    if not name:
        raise ConfigError("empty reality spec")
    reality = Reality(name)
    seen: set[str] = set()
    for raw in name.split("+"):
        knob, sep, value = raw.strip().partition("=")
        if knob in _ALIASES and not sep:
            knob, value = _ALIASES[knob]
            sep = "="
        if knob in seen:
            raise ConfigError(f"reality {name!r}: {knob} given twice")
        seen.add(knob)
        if knob == "nominal" and not sep:
            continue
        if knob in _DEFAULTS:
            amount = _number(knob, value) if sep else _DEFAULTS[knob]
            reality = _with_number(reality, knob, amount)
        elif knob == "model" and sep:
            reality = replace(reality, model=_choice(knob, value, MODELS))
        elif knob == "header" and sep:
            reality = replace(reality, header=_choice(knob, value, HEADER_MODES))
        else:
            known = "nominal, bypass[=S], capacity[=F], bucket[=F], sliding, noisy, absent, "
            raise ConfigError(
                f"reality {name!r}: unknown knob {raw!r} (known: {known}"
                "model=bucket|sliding, header=exact|noisy|absent)"
            )
    return reality


def parse_realities(text: str) -> tuple[Reality, ...]:
    """A comma-separated list of reality specs, in order, without duplicates."""
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise ConfigError("--realities: give at least one reality")
    realities = tuple(parse_reality(s) for s in specs)
    names = [r.name for r in realities]
    if len(set(names)) != len(names):
        raise ConfigError(f"--realities: duplicate reality in {names}")
    return realities


def simulator_options(told: SimulatorOptions, reality: Reality) -> SimulatorOptions:
    """The simulator flags that make `reality` out of the deployment the orchestrator is told."""
    return replace(
        told,
        served_ptus=told.ptus * reality.capacity,
        window_s=told.window_s * reality.bucket,
        utilisation_model=reality.model,
        utilisation_header=reality.header,
        background_share=reality.bypass,
    )


def simulator_patch(told: SimulatorOptions, reality: Reality) -> dict[str, object]:
    """The same as a `PATCH /sim/deployments/{name}` body, every knob set (nothing carries over).

    One simulator then serves a whole benchmark: restarting it per run would cost seconds of
    start-up each time on a loaded machine.
    """
    sim = simulator_options(told, reality)
    return {
        "ptus": sim.served_ptus,
        "window_s": sim.window_s,
        "utilisation_model": sim.utilisation_model,
        "utilisation_header": sim.utilisation_header,
        "background_share": sim.background_share,
    }
