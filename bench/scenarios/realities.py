"""Realities for `ptu bench robustness`: ways a deployment disagrees with our model of it.

A reality spec is `+`-joined knobs, each `name` (its default magnitude) or `name=value`:

| knob | default | the deployment... |
|---|---|---|
| `nominal` | - | is exactly what the orchestrator assumes |
| `bypass=S` | 0.3 | also serves other applications, using S of its capacity, that bypass us |
| `square=LOW,HIGH,HALF` | 0,0.5,15 | ...whose share alternates LOW / HIGH every HALF seconds |
| `capacity=F` | 0.8 | serves F of the capacity the table promises (told 15 PTU, serves 12) |
| `step=F,AT,FOR` | 0.6,5,20 | serves F of that from AT s after the batch is sent, for FOR s |
| `bucket=F` | 0.5 | has a bucket F times the window we assume (`PTU_ESTIMATE_WINDOW_S`) |
| `sliding` / `model=M` | - | means by utilisation the charges over the trailing window |
| `noisy` / `absent` / `header=H` | - | reports the utilisation header late + noisy, or not |
| `lagged=S` | 3 | reports in the header the level of S seconds earlier |
| `smoothed=S` | 5 | reports in the header an exponential average (time constant S s) |
| `overask` | - | is sent batch lines that ask max_tokens 4000 and use ~100 output tokens |

so `bypass=0.2+capacity=0.85` is a deployment shared with another app at 20 % that serves
85 % of its table capacity, and `absent+bypass=0.3` one that sends no header while another
app uses 30 % of it. Parsing is pure; `simulator_options` / `simulator_patch` turn a reality
into simulator flags or a PATCH body, `timed_patches` into the PATCHes a step makes during
the run; the orchestrator is always told the nominal deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.harness.stack import SimulatorOptions
from orchestrator.core.errors import ConfigError
from simulator.openai.header import HEADER_MODES
from simulator.openai.meter import MODELS

DEFAULT_REALITIES = (
    "nominal",
    "bypass",
    "capacity",
    "bucket",
    "sliding",
    "noisy",
    "lagged=2",
    "lagged=5",
    "smoothed=5",
    "smoothed=10",
    "absent+bypass=0.3",
    "square",
    "step",
    "overask",
)
QUICK_REALITIES = ("bypass=0.2+lagged=3",)
_DEFAULTS = {"bypass": 0.3, "capacity": 0.8, "bucket": 0.5, "lagged": 3.0, "smoothed": 5.0}
_RANGES = {
    "bypass": (0.0, 0.9),
    "capacity": (0.1, 2.0),
    "bucket": (0.1, 4.0),
    "lagged": (0.1, 60.0),
    "smoothed": (0.1, 120.0),
}
_TRIPLES = {
    # knob: (default, (low, high) of each of the three numbers)
    "square": ((0.0, 0.5, 15.0), ((0.0, 0.9), (0.0, 0.9), (1.0, 600.0))),
    "step": ((0.6, 5.0, 20.0), ((0.1, 2.0), (0.0, 600.0), (1.0, 600.0))),
}
_ALIASES = {
    "sliding": ("model", "sliding"),
    "noisy": ("header", "noisy"),
    "absent": ("header", "absent"),
}
_SLOT = {"lagged": "header", "smoothed": "header", "square": "bypass"}
"""Knobs that set what another knob sets: giving both is an error (`given twice`)."""
HEADER_CHOICES = tuple(dict.fromkeys((*HEADER_MODES, "lagged", "smoothed")))
OVERASK_MAX_TOKENS = 4000
"""What an over-asking batch line asks for (the ingress caps it at `PTU_MAX_TOKENS_CEILING`)."""
OVERASK_USES = 100
"""Output tokens an over-asking line uses (the simulator's `completion_tokens` knob)."""
_KNOWN = (
    "nominal, bypass[=S], square[=LOW,HIGH,HALF], capacity[=F], step[=F,AT,FOR], "
    "bucket[=F], sliding, model=bucket|sliding, noisy, absent, header=H, lagged[=S], "
    "smoothed[=S], overask"
)


@dataclass(frozen=True, slots=True)
class Reality:
    """How the simulated deployment departs from what the orchestrator is told."""

    name: str
    bypass: float = 0.0
    capacity: float = 1.0
    bucket: float = 1.0
    model: str = "bucket"
    header: str = "exact"
    header_lag_s: float | None = None
    header_smoothing_s: float | None = None
    square: tuple[float, float, float] | None = None
    """(low, high, half period s) of the bypassing traffic's share, when it alternates."""
    step: tuple[float, float, float] | None = None
    """(share of capacity, start s after the batch is sent, length s) of a capacity cut."""
    overask: bool = False

    @property
    def header_present(self) -> bool:
        """Whether PTU responses carry the utilisation header."""
        return self.header != "absent"

    @property
    def background_profile(self) -> str | None:
        """The simulator's `--background-profile` value, when the bypass share alternates."""
        if self.square is None:
            return None
        return "square:" + ",".join(f"{v:g}" for v in self.square)

    def describe(self) -> str:
        """What differs from the orchestrator's model, in words."""
        parts = []
        if self.bypass:
            parts.append(f"other apps use {self.bypass:.0%} of capacity directly")
        if self.square is not None:
            low, high, half = self.square
            parts.append(f"other apps use {low:.0%} <-> {high:.0%} of capacity, every {half:g} s")
        if self.capacity != 1.0:
            parts.append(f"serves {self.capacity:.0%} of the table capacity")
        if self.step is not None:
            share, at, length = self.step
            parts.append(f"capacity x{share:g} from {at:g} s after the batch, for {length:g} s")
        if self.bucket != 1.0:
            parts.append(f"bucket {self.bucket:g} x the assumed window")
        if self.model != "bucket":
            parts.append(f"utilisation = {self.model} window")
        if self.header == "lagged":
            parts.append(f"header {self.header_lag_s:g} s late")
        elif self.header == "smoothed":
            parts.append(f"header a {self.header_smoothing_s:g} s average")
        elif self.header != "exact":
            parts.append(f"header {self.header}")
        if self.overask:
            parts.append(f"batch asks max_tokens {OVERASK_MAX_TOKENS}, uses ~{OVERASK_USES}")
        return "; ".join(parts) or "as the orchestrator assumes"


def _number(knob: str, text: str, bounds: tuple[float, float] | None = None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"reality knob {knob}={text!r}: not a number") from None
    low, high = bounds or _RANGES[knob]
    if not low <= value <= high:
        raise ConfigError(f"reality knob {knob}={text!r}: must be between {low:g} and {high:g}")
    return value


def _triple(knob: str, text: str) -> tuple[float, float, float]:
    default, bounds = _TRIPLES[knob]
    parts = text.split(",")
    if len(parts) not in (1, 3):
        raise ConfigError(f"reality knob {knob}={text!r}: one number or three, comma-separated")
    given = [_number(knob, p, b) for p, b in zip(parts, bounds, strict=False)]
    a, b, c = (*given, *default[len(given) :])
    return a, b, c


def _choice(knob: str, text: str, allowed: tuple[str, ...]) -> str:
    if text not in allowed:
        raise ConfigError(f"reality knob {knob}={text!r}: one of {', '.join(allowed)}")
    return text


def _apply(reality: Reality, knob: str, value: str | None) -> Reality:
    """`reality` with one knob set (`value` None: the knob's default)."""
    if knob in ("bypass", "capacity", "bucket"):
        amount = _DEFAULTS[knob] if value is None else _number(knob, value)
        if knob == "bypass":
            return replace(reality, bypass=amount)
        return (
            replace(reality, capacity=amount)
            if knob == "capacity"
            else replace(reality, bucket=amount)
        )
    if knob == "lagged":
        lag = _DEFAULTS[knob] if value is None else _number(knob, value)
        return replace(reality, header="lagged", header_lag_s=lag)
    if knob == "smoothed":
        tau = _DEFAULTS[knob] if value is None else _number(knob, value)
        return replace(reality, header="smoothed", header_smoothing_s=tau)
    if knob in _TRIPLES:
        triple = _TRIPLES[knob][0] if value is None else _triple(knob, value)
        return (
            replace(reality, square=triple) if knob == "square" else replace(reality, step=triple)
        )
    if knob == "model" and value is not None:
        return replace(reality, model=_choice(knob, value, MODELS))
    if knob == "header" and value is not None:
        header = _choice(knob, value, HEADER_CHOICES)
        if header in ("lagged", "smoothed"):  # the magnitude comes with the knob of that name
            return _apply(reality, header, None)
        return replace(reality, header=header)
    if knob == "overask" and value is None:
        return replace(reality, overask=True)
    if knob == "nominal" and value is None:
        return reality
    raise ConfigError(f"reality {reality.name!r}: unknown knob {knob!r} (known: {_KNOWN})")


def parse_reality(spec: str) -> Reality:
    """One reality from its spec (`bypass`, `capacity=0.85`, `bypass=0.2+lagged=3`...)."""
    name = spec.strip()
    if not name:
        raise ConfigError("empty reality spec")
    reality = Reality(name)
    seen: set[str] = set()
    for raw in name.split("+"):
        knob, sep, text = raw.strip().partition("=")
        value: str | None = text if sep else None
        if knob in _ALIASES and not sep:
            knob, value = _ALIASES[knob]
        slot = _SLOT.get(knob, knob)
        if slot in seen:
            raise ConfigError(f"reality {name!r}: {slot} given twice")
        seen.add(slot)
        reality = _apply(reality, knob, value)
    return reality


def split_specs(text: str) -> list[str]:
    """Comma-separated specs, where a part that starts with a number continues the one before.

    `lagged=3,square=0,0.5,15+bypass=0.1,step=0.6` is three specs: a knob's name never
    starts with a digit, so the commas of a triple (`square`, `step`) need no quoting.
    """
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if specs and part[0] in "0123456789.-":
            specs[-1] += f",{part}"
        else:
            specs.append(part)
    return specs


def parse_realities(text: str) -> tuple[Reality, ...]:
    """A comma-separated list of reality specs, in order, without duplicates."""
    specs = split_specs(text)
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
        header_lag_s=reality.header_lag_s,
        header_smoothing_s=reality.header_smoothing_s,
        background_profile=reality.background_profile,
    )


def simulator_patch(told: SimulatorOptions, reality: Reality) -> dict[str, object]:
    """The same as a `PATCH /sim/deployments/{name}` body, every knob set (nothing carries over).

    One simulator then serves a whole benchmark: restarting it per run would cost seconds of
    start-up each time on a loaded machine. The bypass traffic is a `background_share` (a
    constant profile: it ends any square wave) or a `background_profile`; a header delay or
    time constant is sent with the header mode that reads it (elsewhere it means nothing).
    """
    sim = simulator_options(told, reality)
    patch: dict[str, object] = {
        "ptus": sim.served_ptus,
        "window_s": sim.window_s,
        "utilisation_model": sim.utilisation_model,
        "utilisation_header": sim.utilisation_header,
    }
    if sim.background_profile is not None:
        patch["background_profile"] = sim.background_profile
    else:
        patch["background_share"] = sim.background_share
    if sim.header_lag_s is not None:
        patch["header_lag_s"] = sim.header_lag_s
    if sim.header_smoothing_s is not None:
        patch["header_smoothing_s"] = sim.header_smoothing_s
    return patch


def timed_patches(
    told: SimulatorOptions, reality: Reality, batch_at_s: float
) -> tuple[tuple[float, dict[str, object]], ...]:
    """(offset s from the run's start, PATCH body) the run applies while it goes: a step's
    cut and its end, at fixed offsets from when the batch is sent."""
    if reality.step is None:
        return ()
    share, at, length = reality.step
    served = told.ptus * reality.capacity
    start = batch_at_s + at
    return ((start, {"ptus": served * share}), (start + length, {"ptus": served}))
