"""The estimate filter's tunables and state: what one deployment's shared estimate holds.

`filter.py` says what each part means and how the signals change it; this module holds it,
copies it and turns it into the compact form kept in Redis.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass, field
from typing import Any

LAGS_S = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0)
"""Header delays tried: the header reports the level of this many seconds before."""
SMOOTHING_S = (2.5, 5.0, 10.0)
"""Header smoothings tried: the header reports an exponential average of this time constant."""
RATE_HORIZONS = (2.0,)
"""Horizon of our charge rate, in windows: it explains a saturation our bucket did not see
coming while it was empty (longer horizons forget a recent rise of ours, shorter a lull)."""
SLOT_S = 0.25
HISTORY = 40
"""Our bucket's past, `SLOT_S` a slot: enough for the longest lag plus an observation's age."""
HYPOTHESES = (
    *(f"lag {d:g}s" for d in LAGS_S),
    *(f"avg {t:g}s" for t in SMOOTHING_S),
    *(f"window lag {d:g}s" for d in LAGS_S),
)
FREE_RATE_S = (2.0, 6.0)
"""Over how long the rate of the traffic we do not control is measured (the higher counts:
the short one sees a burst start, the long one remembers it)."""
WINDOW_SLOTS = 20
"""Our charges are booked in slots of `window_s / WINDOW_SLOTS` for the sliding-window sums."""


@dataclass(frozen=True, slots=True)
class FilterParams:
    """The filter's tunables, each with its reason."""

    drift: float = 0.002
    """How fast other applications' load may change: the variance a hypothesis's `c` gains
    per second (0.002: about 0.045 of capacity in one second, 0.14 in ten)."""
    score_s: float = 20.0
    """Horizon of the prediction-error scores that choose among hypotheses."""
    z: float = 1.0
    """Safety margin of the header's estimate, in standard deviations of the fit's own
    uncertainty about the level now."""
    trust_rmse: float = 0.08
    """The header may lower the reading only while its best hypothesis predicts this well."""
    unseen_decay_s: float = 3600.0
    """The learnt unseen inflow fades this slowly. Other applications' load lasts minutes to
    hours, and in a bucket any shortfall of it adds up until the deployment fills (a 429),
    so it must not fade faster than the evidence comes; too much of it is unlearnt on
    evidence instead (calls that go through while the estimate reads full)."""
    hold_s: float = 3.0
    """A 429 holds the reading at 100 % for its retry-after, at most this long."""
    max_age_s: float = 5.0
    """A header or remaining-tokens reading older than this describes a past: ignored."""
    scale_floor: float = 0.5
    """The reading never falls below this x our own bucket (largest plausible bucket: 2x)."""

    def __post_init__(self) -> None:
        if min(self.drift, self.score_s, self.unseen_decay_s, self.max_age_s) <= 0:
            raise ValueError("filter horizons must be positive")
        if self.z < 0 or self.trust_rmse <= 0 or self.hold_s < 0:
            raise ValueError("z and hold_s must not be negative, trust_rmse must be positive")
        if not 0 < self.scale_floor <= 1:
            raise ValueError("scale_floor must be in (0, 1]")


@dataclass(slots=True)
class Hypothesis:
    """One meaning of the header: `k x feature + c`, its fit's covariance and its score."""

    k: float = 1.0
    c: float = 0.0
    p1: float = 0.1
    p2: float = 0.0
    p3: float = 0.1
    e: float = 0.0
    """Mean square of the prediction errors (before learning from them), over score_s."""


@dataclass(slots=True)
class FilterState:
    """Everything the filter knows about one deployment (serialised to one Redis field)."""

    t: float
    """Time of the last step (server clock, epoch s)."""
    born: float = 0.0
    """Time of the first step."""
    m: float = 0.0
    """Our bucket: our charges, drained at the table capacity."""
    hist: list[float] = field(default_factory=lambda: [0.0] * HISTORY)
    slot: int = 0
    """Index of the newest slot of `hist` (`t // SLOT_S`)."""
    ema: list[float] = field(default_factory=lambda: [0.0] * len(SMOOTHING_S))
    rate: list[float] = field(default_factory=lambda: [0.0] * len(RATE_HORIZONS))
    """Our charge rate over each horizon, as a share of capacity."""
    win: list[float] = field(default_factory=list)
    """Our charges per slot of `window_s / WINDOW_SLOTS`, a ring (enough for a window and
    the longest lag); `win_slot` is the newest slot's index."""
    win_slot: int = 0
    free: list[float] = field(default_factory=lambda: [0.0] * len(FREE_RATE_S))
    """The rate of the charges we do not control (fractions of 100 % a second), over each
    of `FREE_RATE_S`."""
    q: float = 0.0
    """Our charges ever made (fractions of 100 %): charges since a reading are a difference."""
    hyps: list[Hypothesis] = field(default_factory=lambda: [Hypothesis() for _ in HYPOTHESES])
    n: int = 0
    first_obs: float | None = None
    obs: float | None = None
    obs_at: float | None = None
    mu: float = 0.0
    """Our bucket plus the unseen inflow `s`: the headerless estimate."""
    filled_at: float | None = None
    """Since when `mu` has been known: it was last empty, or full at a saturation (None: it
    is empty)."""
    s: float = 0.0
    """Unseen inflow, as a share of capacity (other applications, less capacity)."""
    hold_until: float = 0.0
    used: float | None = None
    used_at: float | None = None
    used_q: float = 0.0
    peaks: dict[str, float] = field(default_factory=dict)
    """`mu`'s highest level per minute (the last few), for the Azure Monitor minute."""
    monitor_minute: int = 0

    def clone(self) -> FilterState:
        """An independent copy (reading advances a copy, never the shared state)."""
        return FilterState.from_json(self.to_json())

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (hypotheses as rows of numbers)."""
        data = {name: getattr(self, name) for name in _SCALARS}
        for name in _LISTS:
            data[name] = list(getattr(self, name))
        data["peaks"] = dict(self.peaks)
        data["hyps"] = [[h.k, h.c, h.p1, h.p2, h.p3, h.e] for h in self.hyps]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FilterState:
        """The inverse of `to_json`."""
        state = cls(**{name: data[name] for name in _SCALARS if name in data})
        for name in _LISTS:
            if name in data:
                setattr(state, name, list(data[name]))
        state.peaks = dict(data.get("peaks", {}))
        rows = data.get("hyps", [])
        if len(rows) == len(HYPOTHESES):
            state.hyps = [Hypothesis(*row) for row in rows]
        return state

    def dumps(self) -> str:
        """The compact form kept in Redis: JSON for the scalars, the numbers packed."""
        rows = [getattr(self, name) for name in _LISTS]
        rows.append([x for h in self.hyps for x in (h.k, h.c, h.p1, h.p2, h.p3, h.e)])
        numbers = [x for row in rows for x in row]
        head = {name: getattr(self, name) for name in _SCALARS}
        head["peaks"] = self.peaks
        head["lens"] = [len(row) for row in rows]
        packed = base64.b64encode(struct.pack(f"<{len(numbers)}d", *numbers)).decode()
        return json.dumps(head, separators=(",", ":")) + "\n" + packed

    @classmethod
    def loads(cls, raw: str) -> FilterState:
        """The inverse of `dumps`."""
        text, _, packed = raw.partition("\n")
        head = json.loads(text)
        lens = head.pop("lens")
        numbers = struct.unpack(f"<{sum(lens)}d", base64.b64decode(packed))
        rows, at = [], 0
        for n in lens:
            rows.append(list(numbers[at : at + n]))
            at += n
        data = {**head, **dict(zip(_LISTS, rows, strict=False))}
        hyps = rows[len(_LISTS)]
        data["hyps"] = [hyps[i : i + 6] for i in range(0, len(hyps), 6)]
        return cls.from_json(data)


_LISTS = ("hist", "ema", "rate", "win", "free")
_SCALARS = tuple(
    name for name in FilterState.__dataclass_fields__ if name not in (*_LISTS, "peaks", "hyps")
)
