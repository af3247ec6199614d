"""The estimate's filter: one state per deployment, `step` by signal, `read` at any time.

Pure (no I/O, `now` passed in): the reference of what the estimate means. The store keeps
the state in Redis and applies `step` under a compare-and-set, so every worker, ingress
replica and `ptu estimator` builds one shared state per deployment.

Levels are fractions of the deployment's nominal 100 % (`window_s` seconds of the table
capacity); our bucket drains at `1 / window_s` per second (AZURE_FACTS.md §1).

What each signal tells, and the part of the state it feeds:

- **our charges** (`admit`, `complete`): `m`, our own bucket, exactly as the open-loop
  model (`PTU_CALIBRATION=off` reads it alone). Its recent past is kept (`hist`, a quarter
  of a second a slot) with exponential averages of it (`ema`) and of our charge rate (`rate`).
- **the utilisation header**, whose delay and smoothing are unknown (Microsoft calls it
  unreliable): a bank of hypotheses about what it reports, each a linear relation
  `k x feature + c` fitted by a Kalman filter (both drift as random walks): the level
  `d` seconds ago (`LAGS_S`), an exponential average of it (`SMOOTHING_S`), or our charges
  over the trailing window `d` seconds ago (a sliding window, a rate-like meaning such as
  Azure Monitor's "PTUs consumed / deployed"; `win`). `k` absorbs a bucket
  or capacity other than the table's, `c` the load of other applications. Each hypothesis
  is scored by its one-step prediction error (mean square over `score_s`). The header's
  estimate of the level **now** is the best hypothesis's `k x feature(now) + c` plus `z`
  times the fit's own uncertainty about it: the relation is learnt on the past and applied
  to the present, so a late header never lags the charges we just made. The header is
  *trusted* once it has predicted well (`trust_rmse`) for `TRUST_N` reports over `TRUST_S`;
  until then, and once it falls silent, the newest report may only raise the reading.
- **saturation** (a 429 of any priority, or a response that spilled to a standard
  deployment): the censored observation "the level is at least 100 % now". It holds the
  reading at 100 % for `retry-after`, at most `hold_s` (a minute-window limiter asks up to
  60 s, which is its window, not how full the deployment is), lifts every header
  hypothesis to at least 100 %, and teaches `s`, the unseen inflow: the level our bucket
  missed, spread over the time since it was last empty (or, when it was empty, the share
  of capacity our own recent rate leaves: the least that could have filled the deployment).
  `s` feeds `mu`, a bucket of our charges plus that inflow. `s` is kept for minutes
  (fading over `unseen_decay_s`), so it is learnt once, not at every saturation; a call
  that went through while `mu` said full lowers it.
- **`x-ratelimit-remaining-tokens`** (gateways, standard deployments, other limiters): the
  share of the limit used, exact and on time; our charges since it was read are added.
- **the Azure Monitor minute** (its maximum): when it was fuller than `mu`'s own peak of
  that minute, the unseen inflow was too low.

The reading is the largest of: the headerless estimate `mu`, the header's estimate (or
only the header's, once trusted), the remaining-tokens estimate while fresh, and 100 %
while a 429 holds; never below `scale_floor x m` (a deployment's bucket may be up to
`1 / scale_floor` times the one assumed, not more).
"""

from __future__ import annotations

import base64
import json
import math
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
FILL_HORIZON = 0
"""The index of that horizon in `RATE_HORIZONS`."""
THROUGH_WINDOWS = 8.0
"""A call that went through while `mu` read over 100 %: the excess was never there, so the
inflow it came from is lowered by the excess spread over this many windows."""
NEED_MARGIN = 0.05
"""An inflow just at the capacity fills nothing: a little more than the least that could."""
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
GROWTH = 2.0
"""Under a window meaning a charge stays a whole window, so the throttle steers by where
the window goes if the traffic we do not control goes on at this x its recent rate while
the oldest charges leave: an interactive burst then still fits."""
WINDOW_SLOTS = 20
"""Our charges are booked in slots of `window_s / WINDOW_SLOTS` for the sliding-window sums."""
TRUST_N = 20
"""Reports before the header may lower the reading..."""
TRUST_S = 12.0
"""... over at least this long: longer than the longest lag tried, so each lag has been
compared with reports that describe the same past."""
RULE_OUT_N = 10
RULE_OUT_RATIO = 2.0
"""A window meaning is ruled out, before the header is trusted, once `RULE_OUT_N` reports
show its best hypothesis erring more than this x the best other one (RMS): a bucket drains
while a window holds its charges, so a few seconds of load tell them apart."""
MAX_UNSEEN = 0.95
"""The unseen share never reaches the whole capacity: our own calls still go through."""
STALE_HEADER_S = 30.0
"""A header silent this long no longer counts (the headerless estimate is read): the
deployment may have stopped sending it, or changed."""
NOISE = 0.03**2
"""Variance of a header's error around its hypothesis (rounding, sampling, noise)."""
K_DRIFT = 0.0002
"""Variance `k` gains per second: a bucket or capacity changes seldom."""
K_RANGE = (0.5, 3.0)


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
    unseen_decay_s: float = 300.0
    """The learnt unseen inflow fades this slowly: other applications' load lasts minutes,
    and unlearning it costs a saturation (interactive 429s) to learn it again."""
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


@dataclass(frozen=True, slots=True)
class Signal:
    """What one event tells: a charge, and what the deployment said about itself."""

    delta: float = 0.0
    """Change of our charges, in fractions of 100 % (negative: a refund at completion)."""
    utilisation: float | None = None
    """The utilisation header (fraction)."""
    age_s: float = 0.0
    """How long before the step the header or remaining tokens were read."""
    saturated: bool = False
    """A 429, or a response that spilled: the level was at least 100 %."""
    retry_after_s: float | None = None
    used: float | None = None
    """Share of a token limit used (1 - x-ratelimit-remaining-tokens / limit)."""
    controlled: bool = False
    """The charge is the throttle's own (a low-priority call): it stops when the throttle
    says so, unlike interactive traffic, whose growth the window look-ahead allows for."""
    charged_at: float | None = None
    """When the charge a refund corrects was made (a sliding window drops it then)."""
    went_through: bool = False
    """A call completed normally (no 429, no spill): the deployment was not full."""
    monitor: float | None = None
    """The Azure Monitor maximum of the minute `monitor_minute` (fraction)."""
    monitor_minute: int = 0


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
    """Since when `mu` has not been empty (None: it is empty)."""
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


@dataclass(frozen=True, slots=True)
class Estimate:
    """What `read` returns: the reading and what it was made of."""

    value: float
    model: float
    """Our bucket alone (the open-loop model)."""
    headerless: float
    """`mu`: our bucket plus the learnt unseen inflow."""
    header: float | None
    """The header's estimate of the level now (with its margin), if the header was seen."""
    hypothesis: str | None
    """The header meaning that predicts best (`lag 3s`, `avg 5s`, `window lag 0s`)."""
    sigma: float | None
    """The filter's uncertainty: the fit's standard deviation of the level now once the
    header is trusted, before that the hypothesis's RMS prediction error."""
    trusted: bool
    unseen: float
    """The learnt unseen inflow, as a share of capacity."""
    held_s: float
    """Seconds a 429 still holds the reading at 100 %."""
    ahead: float | None = None
    """Under a window meaning (learnt, not yet ruled out, or a token limit): the highest level
    the window reaches while nothing of ours that the throttle controls starts (see
    `GROWTH`); None otherwise."""


def _drain(level: float, dt: float, per_s: float) -> float:
    return max(0.0, level - per_s * dt)


def _advance(st: FilterState, now: float, window_s: float, p: FilterParams) -> None:
    """Let time pass from `st.t` to `now`: drains, averages, history, fading."""
    dt = max(0.0, now - st.t)
    drain = 1.0 / window_s
    slot = math.floor(now / SLOT_S)
    if slot > st.slot:
        # the level at each slot boundary passed (only drains between events)
        for i in range(max(st.slot + 1, slot - HISTORY + 1), slot + 1):
            st.hist[i % HISTORY] = _drain(st.m, i * SLOT_S - st.t, drain)
        st.slot = slot
    m = _drain(st.m, dt, drain)
    for i, tau in enumerate(SMOOTHING_S):
        st.ema[i] += (1.0 - math.exp(-dt / tau)) * ((st.m + m) / 2 - st.ema[i])
    for i, h in enumerate(RATE_HORIZONS):
        st.rate[i] *= math.exp(-dt / (h * window_s))
    for i, tau in enumerate(FREE_RATE_S):
        st.free[i] *= math.exp(-dt / tau)
    st.m = m
    st.mu = _drain(st.mu, dt, (1.0 - st.s) * drain)
    if st.mu <= 0.0:
        st.filled_at = None
    st.s *= math.exp(-dt / p.unseen_decay_s)
    st.t = max(st.t, now)


def _charge(st: FilterState, delta: float, window_s: float) -> None:
    st.m = max(0.0, st.m + delta)
    st.mu = max(0.0, st.mu + delta)
    if st.mu > 0.0 and st.filled_at is None:
        st.filled_at = st.t
    st.q += delta
    for i, h in enumerate(RATE_HORIZONS):
        # a leaky integrator of charges / horizon: the rate as a share of capacity
        st.rate[i] = max(0.0, st.rate[i] + delta / h)
    minute = str(math.floor(st.t / 60.0))
    st.peaks[minute] = max(st.peaks.get(minute, 0.0), st.mu)
    if len(st.peaks) > 5:
        del st.peaks[min(st.peaks, key=int)]


def _past(st: FilterState, t: float) -> float:
    """Our bucket at time `t` (interpolated between slots; the oldest kept before them)."""
    if t >= st.t:
        return st.m
    pos = t / SLOT_S
    i = math.floor(pos)
    if i >= st.slot:
        return st.hist[st.slot % HISTORY] + (st.m - st.hist[st.slot % HISTORY]) * min(
            1.0, (t - st.slot * SLOT_S) / max(st.t - st.slot * SLOT_S, 1e-9)
        )
    i = max(i, st.slot - HISTORY + 1)
    a = st.hist[i % HISTORY]
    b = st.hist[(i + 1) % HISTORY] if i + 1 <= st.slot else st.m
    return a + (b - a) * min(1.0, max(0.0, pos - i))


def _ring(window_s: float) -> tuple[float, int]:
    """(slot width, slots kept) of the window sums: a window plus the longest lag."""
    width = window_s / WINDOW_SLOTS
    return width, WINDOW_SLOTS + math.ceil(max(LAGS_S) / width) + 2


def _book(st: FilterState, delta: float, at: float, window_s: float) -> None:
    """Book a charge (or a refund, in the slot of the charge it corrects) for window sums."""
    width, keep = _ring(window_s)
    if len(st.win) != keep:
        st.win, st.win_slot = [0.0] * keep, math.floor(st.t / width)
    now_slot = math.floor(st.t / width)
    for i in range(max(st.win_slot + 1, now_slot - keep + 1), now_slot + 1):
        st.win[i % keep] = 0.0  # slots entered since: empty
    st.win_slot = max(st.win_slot, now_slot)
    slot = min(math.floor(at / width), now_slot)
    if now_slot - slot < keep:
        st.win[slot % keep] += delta


class _Booked:
    """Our charges booked up to any time, from the slots of `win` (a charge spread evenly in
    its slot): prefix sums, so each window sum is two look-ups."""

    __slots__ = ("_first", "_prefix", "_t", "_values", "_width")

    def __init__(self, st: FilterState, window_s: float) -> None:
        width, keep = _ring(window_s)
        self._width, self._t = width, st.t
        self._first = st.win_slot - keep + 1
        self._values = (
            [st.win[j % keep] for j in range(self._first, st.win_slot + 1)]
            if (len(st.win) == keep)
            else []
        )
        self._prefix = [0.0]
        for v in self._values:
            self._prefix.append(self._prefix[-1] + v)

    def until(self, t: float) -> float:
        """Charges booked in slots before `t`, the slot holding `t` pro rata."""
        if not self._values:
            return 0.0
        pos = (t - self._first * self._width) / self._width
        i = math.floor(pos)
        if i < 0:
            return 0.0
        if i >= len(self._values):
            return self._prefix[-1]
        start = (self._first + i) * self._width
        end = (
            min(start + self._width, self._t) if i == len(self._values) - 1 else start + self._width
        )
        share = min(1.0, max(0.0, (t - start) / max(end - start, 1e-9)))
        return self._prefix[i] + self._values[i] * share

    def window(self, t: float, window_s: float) -> float:
        """Our charges within the window ending at `t`."""
        return max(0.0, self.until(t) - self.until(t - window_s))


def _window(st: FilterState, t: float, window_s: float) -> float:
    """Our charges within the window ending at `t`."""
    return _Booked(st, window_s).window(t, window_s)


def _features(st: FilterState, t_obs: float, window_s: float) -> list[float]:
    """Each hypothesis's feature at the time an observation describes."""
    lagged = [_past(st, t_obs - d) for d in LAGS_S]
    booked = _Booked(st, window_s)
    windows = [booked.window(t_obs - d, window_s) for d in LAGS_S]
    return [*lagged, *st.ema, *windows]


def _current(st: FilterState, window_s: float) -> list[float]:
    """Each hypothesis's feature of the level now (the truth is undelayed, unsmoothed)."""
    window = _window(st, st.t, window_s)
    return [st.m] * (len(LAGS_S) + len(SMOOTHING_S)) + [window] * len(LAGS_S)


def _fit(h: Hypothesis, x: float, y: float, since: float, p: FilterParams, first: bool) -> None:
    """One Kalman update of (k, c), both random walks, from the observation `y` of `x`."""
    err = y - (h.k * x + h.c)
    if first:
        h.c = y - h.k * x
        return
    h.e += (1.0 - math.exp(-since / p.score_s)) * (err * err - h.e)
    # the relation drifts: c (other applications' load) faster than k (bucket, capacity)
    h.p1 += K_DRIFT * since
    h.p3 += p.drift * since
    q1, q2 = h.p1 * x + h.p2, h.p2 * x + h.p3
    denom = NOISE + x * q1 + q2
    g1, g2 = q1 / denom, q2 / denom
    h.k = min(K_RANGE[1], max(K_RANGE[0], h.k + g1 * err))
    h.c += g2 * err
    h.p1, h.p2, h.p3 = h.p1 - g1 * q1, h.p2 - g1 * q2, h.p3 - g2 * q2


def _rates(st: FilterState, now: float, window_s: float) -> list[float]:
    """Our charge rate over each horizon, corrected for a horizon longer than the state's
    life (a young integrator has not filled yet: read raw, it would understate our rate; at
    most doubled, since what came before the state is unknown)."""
    age = max(now - st.born, SLOT_S)
    return [
        r / max(0.5, 1.0 - math.exp(-age / (h * window_s)))
        for h, r in zip(RATE_HORIZONS, st.rate, strict=True)
    ]


def _saturate(st: FilterState, sig: Signal, now: float, window_s: float, p: FilterParams) -> None:
    hold = p.hold_s if sig.retry_after_s is None else min(sig.retry_after_s, p.hold_s)
    st.hold_until = max(st.hold_until, now + hold)
    if st.mu < 1.0:
        filled = 0.0 if st.filled_at is None else now - st.filled_at
        if filled >= window_s / 2:
            # the deployment filled beside our bucket since it was last empty: the inflow we
            # missed is the level we missed, spread over that time
            need = st.s + (1.0 - st.mu) * window_s / filled
        else:
            # our bucket was (nearly) empty: the deployment can only have filled if everyone's
            # inflow passed its capacity, so others use at least what our rate leaves
            need = 1.0 - _rates(st, now, window_s)[FILL_HORIZON] + NEED_MARGIN
        st.s = min(MAX_UNSEEN, max(st.s, need))
        st.mu = 1.0
    for h, x in zip(st.hyps, _current(st, window_s), strict=True):
        h.c = max(h.c, 1.0 - h.k * x)


def _monitor(st: FilterState, sig: Signal, window_s: float) -> None:
    if sig.monitor is None or sig.monitor_minute <= st.monitor_minute:
        return
    st.monitor_minute = sig.monitor_minute
    # a minute without our charges: our bucket-with-inflow was empty or draining
    peak = st.peaks.get(str(sig.monitor_minute), 0.0)
    if sig.monitor <= peak:
        return
    # fuller than our bucket-with-inflow reached: the inflow was short by at least the
    # difference spread over the minute (the bucket meaning; a rate-like metric asks more)
    st.s = min(MAX_UNSEEN, st.s + (sig.monitor - peak) * window_s / 60.0)


def step(
    state: FilterState | None, sig: Signal, now: float, window_s: float, p: FilterParams
) -> FilterState:
    """The state after `sig` at `now` (`window_s`: seconds of table capacity that read 100 %)."""
    st = state if state is not None else FilterState(t=now, born=now, slot=math.floor(now / SLOT_S))
    _advance(st, now, window_s, p)
    if sig.delta:
        _charge(st, sig.delta, window_s)
        if not sig.controlled and sig.delta > 0:
            for i, tau in enumerate(FREE_RATE_S):
                st.free[i] += sig.delta / tau
    if sig.delta or st.win:
        _book(st, sig.delta, now if sig.charged_at is None else sig.charged_at, window_s)
    if sig.utilisation is not None and sig.age_s <= p.max_age_s:
        t_obs = now - sig.age_s
        since = 0.0 if st.obs_at is None else max(0.0, t_obs - st.obs_at)
        first = st.obs_at is None
        for h, x in zip(st.hyps, _features(st, t_obs, window_s), strict=True):
            _fit(h, x, sig.utilisation, since, p, first)
        st.n += 1
        st.first_obs = t_obs if st.first_obs is None else st.first_obs
        if st.obs_at is None or t_obs >= st.obs_at:
            st.obs, st.obs_at = sig.utilisation, t_obs
    if sig.used is not None and sig.age_s <= p.max_age_s:
        st.used, st.used_at, st.used_q = sig.used, now - sig.age_s, st.q
    if sig.saturated:
        _saturate(st, sig, now, window_s, p)
    elif sig.went_through and st.mu > 1.0:
        # it went through, so the deployment was below 100 %: less unseen inflow
        st.s = max(0.0, st.s - (st.mu - 1.0) / THROUGH_WINDOWS)
        st.mu = 1.0
    _monitor(st, sig, window_s)
    return st


def _header(
    st: FilterState, now: float, window_s: float, p: FilterParams
) -> tuple[float, int, float, bool]:
    """(estimate now, hypothesis index, its RMS, trusted) of the header's bank."""
    best = min(range(len(st.hyps)), key=lambda i: st.hyps[i].e)
    h = st.hyps[best]
    rmse = math.sqrt(h.e)
    fresh = st.obs_at is not None and now - st.obs_at <= STALE_HEADER_S
    proven = (
        st.n >= TRUST_N
        and st.first_obs is not None
        and now - st.first_obs >= TRUST_S
        and rmse <= p.trust_rmse
    )
    if not (fresh and proven):
        # not (or no longer) shown to predict: the newest report itself, a level the
        # deployment has been at, may only raise the reading
        return st.obs or 0.0, best, rmse, False
    x = _current(st, window_s)[best]
    # the margin is the fit's own uncertainty about the level now (not the header's noise)
    sigma = math.sqrt(max(0.0, x * x * h.p1 + 2 * x * h.p2 + h.p3))
    return h.k * x + h.c + p.z * sigma, best, sigma, True


def read(state: FilterState, now: float, window_s: float, p: FilterParams) -> Estimate:
    """The estimate at `now` (the state is not changed)."""
    st = state.clone()
    _advance(st, now, window_s, p)
    value = st.mu
    header: float | None = None
    name: str | None = None
    sigma: float | None = None
    trusted = False
    ahead: float | None = None

    def growth() -> float:
        return _ahead(st, now, window_s) - _window(st, now, window_s)

    if st.obs_at is not None and now - st.obs_at <= STALE_HEADER_S:
        # the header speaks for the deployment's level: the headerless inflow is not needed
        header, best, sigma, trusted = _header(st, now, window_s, p)
        name = HYPOTHESES[best]
        value = header if trusted else max(st.m, header)
        if not trusted and _window_plausible(st):
            # the meaning is not known yet and may be a window, where charges stay
            ahead = value + growth()
        elif best >= len(LAGS_S) + len(SMOOTHING_S):
            # a window meaning: as much higher as our window sum is going to get
            ahead = header + st.hyps[best].k * growth()
    elif st.obs_at is not None:  # a header that fell silent: shown, not counted
        header, best, sigma, _ = _header(st, now, window_s, p)
        name = HYPOTHESES[best]
    if st.used is not None and st.used_at is not None and now - st.used_at <= p.max_age_s:
        # our charges since it was read, as a share of a minute of capacity (the limit's);
        # a token limit counts over a window, so it looks ahead the same way
        used = st.used + (st.q - st.used_q) * window_s / 60.0
        value = max(value, used)
        ahead = max(ahead or 0.0, used + growth() * window_s / 60.0)
    held = max(0.0, st.hold_until - now)
    if held > 0:
        value = max(value, 1.0)
    value = max(value, p.scale_floor * st.m, 0.0)
    return Estimate(value, st.m, st.mu, header, name, sigma, trusted, st.s, held, ahead)


def _window_plausible(st: FilterState) -> bool:
    """Whether a window meaning is still in the running: too few reports to tell, or a
    window hypothesis predicting about as well as the best of the others."""
    if st.n < RULE_OUT_N:
        return True
    first = len(LAGS_S) + len(SMOOTHING_S)
    window = min(h.e for h in st.hyps[first:])
    other = min(h.e for h in st.hyps[:first])
    return window <= RULE_OUT_RATIO**2 * other


def _ahead(st: FilterState, now: float, window_s: float) -> float:
    """The highest our window sum gets over the next window if only the traffic we do not
    control goes on, at `GROWTH` x its recent rate, while the oldest charges leave."""
    rate = GROWTH * max(st.free)
    width, _ = _ring(window_s)
    booked = _Booked(st, window_s)
    current = booked.window(now, window_s)
    gone = booked.until(now - window_s)
    best = current
    for i in range(1, WINDOW_SLOTS + 1):
        h = i * width
        best = max(best, current - (booked.until(now - window_s + h) - gone) + rate * h)
    return best


def header_delay_s(hypothesis: str) -> float | None:
    """The delay (or averaging time) a hypothesis name stands for; None for none."""
    for prefix, values in (("lag ", LAGS_S), ("avg ", SMOOTHING_S), ("window lag ", LAGS_S)):
        for value in values:
            if hypothesis == f"{prefix}{value:g}s":
                return value
    return None
