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
  until then, and once it falls silent, the newest report, or the best relation so far
  applied to our level now less its own error, may only raise the reading. Other
  applications only add load: every fit is projected on `c >= 0`. Before trust a window
  meaning keeps room for growth (`ahead`) until the reports make it `RULE_OUT_ODDS` times
  less likely than the best other meaning.
- **saturation** (a 429 of any priority, or a response that spilled to a standard
  deployment): the censored observation "the level is at least 100 % now". It holds the
  reading at 100 % for `retry-after`, at most `hold_s` (a minute-window limiter asks up to
  60 s, which is its window, not how full the deployment is), lifts every header
  hypothesis to at least 100 %, and teaches `s`, the unseen inflow: the level our bucket
  missed, spread over the time since it was last known (empty, or full at the last
  saturation; when it was empty, the share of capacity our own recent rate leaves: the
  least that could have filled the deployment). Saturations within one hold are one
  overflow. `s` feeds `mu`, a bucket of our charges plus that inflow. `s` is kept (fading
  over `unseen_decay_s`, and not at all while the Azure Monitor minute keeps telling the
  level), so it is learnt in a few saturations, not at every one; a call that went through
  while `mu` said full lowers it.
- **`x-ratelimit-remaining-tokens`** (gateways, standard deployments, other limiters): the
  share of the limit used, exact and on time; our charges since it was read are added.
- **the Azure Monitor minute** (its maximum): when it was fuller than `mu`'s own peak of
  that minute, the unseen inflow was too low, and `mu`'s level was short by the difference
  (near full a missed level does not drain away: `mu` takes it unless known since).

The reading is the largest of: the headerless estimate `mu`, the header's estimate (or
only the header's, once trusted), the remaining-tokens estimate while fresh, and 100 %
while a 429 holds; never below `scale_floor x m` (a deployment's bucket may be up to
`1 / scale_floor` times the one assumed, not more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.utilisation.estimate.charges import book, rates, window_ahead, window_sum
from orchestrator.utilisation.estimate.hypotheses import (
    STALE_HEADER_S,
    current_features,
    features,
    fit,
    header_estimate,
    window_plausible,
)
from orchestrator.utilisation.estimate.state import (
    FREE_RATE_S,
    HISTORY,
    HYPOTHESES,
    LAGS_S,
    RATE_HORIZONS,
    SLOT_S,
    SMOOTHING_S,
    FilterParams,
    FilterState,
)

FILL_HORIZON = 0
"""The index of that horizon in `RATE_HORIZONS`."""
THROUGH_WINDOWS = 8.0
"""A call that went through while `mu` read over 100 %: the excess was never there, so the
inflow it came from is lowered by the excess spread over this many windows."""
NEED_MARGIN = 0.05
"""An inflow just at the capacity fills nothing: a little more than the least that could."""
MAX_UNSEEN = 0.95
"""The unseen share never reaches the whole capacity: our own calls still go through."""
MONITOR_FRESH_S = 1200.0
"""The newest Azure Monitor minute still describes the deployment this long after it began
(ingestion takes 30 s to 15 min, AZURE_FACTS.md §4)."""


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
    if not _monitored(st, now):
        st.s *= math.exp(-dt / p.unseen_decay_s)
    st.t = max(st.t, now)


def _monitored(st: FilterState, now: float) -> bool:
    """Whether the Azure Monitor minute keeps telling the level (its newest minute is fresh).

    Then the unseen inflow does not fade: near full, a fading inflow is a level that drifts
    up unseen (0.3 of capacity fading over an hour is ~0.1 of level missed after 150 s), and
    every minute's maximum tells when it was too low. Without it, fading is how an inflow
    that stopped is unlearnt where no call shows it.
    """
    return st.monitor_minute > 0 and now - st.monitor_minute * 60.0 <= MONITOR_FRESH_S


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


def _saturate(st: FilterState, sig: Signal, now: float, window_s: float, p: FilterParams) -> None:
    hold = p.hold_s if sig.retry_after_s is None else min(sig.retry_after_s, p.hold_s)
    # within an earlier saturation's hold it is the same overflow: nothing more to learn
    if st.mu < 1.0 and now >= st.hold_until:
        known = st.filled_at
        if known is not None and now - known >= window_s / 2:
            # the deployment filled beside `mu` since `mu` was last known (empty, or full at
            # the last saturation): the inflow we missed is the level we missed, spread over
            # that time
            need = st.s + (1.0 - st.mu) * window_s / (now - known)
        elif known is not None and st.hold_until >= known:
            # full again soon after a saturation: the level may have stayed over 100 % since,
            # which tells no inflow
            need = st.s
        else:
            # our bucket was (nearly) empty: the deployment can only have filled if everyone's
            # inflow passed its capacity, so others use at least what our rate leaves
            need = 1.0 - rates(st, now, window_s)[FILL_HORIZON] + NEED_MARGIN
        st.s = min(MAX_UNSEEN, max(st.s, need))
    st.mu = max(st.mu, 1.0)
    st.filled_at = now  # `mu` is known again: at least full
    st.hold_until = max(st.hold_until, now + hold)
    for h, x in zip(st.hyps, current_features(st, window_s), strict=True):
        h.c = max(h.c, 1.0 - h.k * x)


def _monitor(st: FilterState, sig: Signal, window_s: float) -> None:
    if sig.monitor is None or sig.monitor_minute <= st.monitor_minute:
        return
    st.monitor_minute = sig.monitor_minute
    # a minute without our charges: our bucket-with-inflow was empty or draining
    peak = st.peaks.get(str(sig.monitor_minute), 0.0)
    if sig.monitor <= peak:
        return
    missed = sig.monitor - peak
    # fuller than our bucket-with-inflow reached: the inflow was short by at least the
    # difference spread over the minute (the bucket meaning; a rate-like metric asks more)
    st.s = min(MAX_UNSEEN, st.s + missed * window_s / 60.0)
    # and the level itself was short by the difference. A bucket's level is what its inflow
    # and drain left: where the deployment runs near full (everyone's inflow about its
    # capacity, as when the throttle holds it at the upper threshold) a level we missed does
    # not drain away, it stays missed until the next saturation. So `mu` takes it too, unless
    # `mu` was known since that minute (a saturation, or empty); where the deployment was not
    # near full, the added level drains within seconds like any other.
    known = st.filled_at
    if known is not None and known < (sig.monitor_minute + 1) * 60.0:
        st.mu = min(st.mu + missed, max(st.mu, 1.0))


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
        book(st, sig.delta, now if sig.charged_at is None else sig.charged_at, window_s)
    if sig.utilisation is not None and sig.age_s <= p.max_age_s:
        t_obs = now - sig.age_s
        since = 0.0 if st.obs_at is None else max(0.0, t_obs - st.obs_at)
        first = st.obs_at is None
        for h, x in zip(st.hyps, features(st, t_obs, window_s), strict=True):
            fit(h, x, sig.utilisation, since, p, first)
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
        return window_ahead(st, now, window_s) - window_sum(st, now, window_s)

    if st.obs_at is not None and now - st.obs_at <= STALE_HEADER_S:
        # the header speaks for the deployment's level: the headerless inflow is not needed
        header, best, sigma, trusted = header_estimate(st, now, window_s, p)
        name = HYPOTHESES[best]
        value = header if trusted else max(st.m, header)
        if not trusted and window_plausible(st, p):
            # the meaning is not known yet and may be a window, where charges stay
            ahead = value + growth()
        elif best >= len(LAGS_S) + len(SMOOTHING_S):
            # a window meaning: as much higher as our window sum is going to get
            ahead = header + st.hyps[best].k * growth()
    elif st.obs_at is not None:  # a header that fell silent: shown, not counted
        header, best, sigma, _ = header_estimate(st, now, window_s, p)
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
