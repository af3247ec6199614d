"""What the utilisation header means: a bank of hypotheses, each fitted and scored.

Each hypothesis says what the header reports (our level some seconds ago, an average of it,
or our charges over the trailing window some seconds ago) as `k x feature + c`, fitted by a
two-state Kalman filter and scored by its one-step prediction error; see `filter.py`.
"""

from __future__ import annotations

import math

from orchestrator.utilisation.estimate.charges import Booked, past, window_sum
from orchestrator.utilisation.estimate.state import (
    LAGS_S,
    SMOOTHING_S,
    FilterParams,
    FilterState,
    Hypothesis,
)

TRUST_N = 20
"""Reports before the header may lower the reading..."""
TRUST_S = 12.0
"""... over at least this long: longer than the longest lag tried, so each lag has been
compared with reports that describe the same past."""
RULE_OUT_N = 10
RULE_OUT_ODDS = 20.0
"""A window meaning is ruled out, before the header is trusted, once `RULE_OUT_N` reports
make its best hypothesis this many times less likely than the best other one (Gaussian
errors, the other's mean square as their variance, no less than `TIMING`): a bucket drains
while a window holds its charges, so a few seconds of load tell them apart."""
ERROR_CORRELATION_S = 1.0
"""Consecutive reports err alike (the header is sampled, our level moves in steps): the
evidence counts one independent report per this many seconds."""
STALE_HEADER_S = 30.0
"""A header silent this long no longer counts (the headerless estimate is read): the
deployment may have stopped sending it, or changed."""
NOISE = 0.03**2
"""Variance of a header's error around its hypothesis (rounding, sampling, noise)."""
TIMING = 0.01**2
"""The least error variance of a report around the right meaning: our clock and the
deployment's disagree by a request's latency, during which our level moves a point or so."""
K_DRIFT = 0.0002
"""Variance `k` gains per second: a bucket or capacity changes seldom."""
K_RANGE = (0.5, 3.0)


def features(st: FilterState, t_obs: float, window_s: float) -> list[float]:
    """Each hypothesis's feature at the time an observation describes."""
    lagged = [past(st, t_obs - d) for d in LAGS_S]
    booked = Booked(st, window_s)
    windows = [booked.window(t_obs - d, window_s) for d in LAGS_S]
    return [*lagged, *st.ema, *windows]


def current_features(st: FilterState, window_s: float) -> list[float]:
    """Each hypothesis's feature of the level now (the truth is undelayed, unsmoothed)."""
    window = window_sum(st, st.t, window_s)
    return [st.m] * (len(LAGS_S) + len(SMOOTHING_S)) + [window] * len(LAGS_S)


def fit(h: Hypothesis, x: float, y: float, since: float, p: FilterParams, first: bool) -> None:
    """One Kalman update of (k, c), both random walks, from the observation `y` of `x`."""
    err = y - (h.k * x + h.c)
    if first:
        h.c = max(0.0, y - h.k * x)
        return
    h.e += (1.0 - math.exp(-since / p.score_s)) * (err * err - h.e)
    # the relation drifts: c (other applications' load) faster than k (bucket, capacity)
    h.p1 += K_DRIFT * since
    h.p3 += p.drift * since
    q1, q2 = h.p1 * x + h.p2, h.p2 * x + h.p3
    denom = NOISE + x * q1 + q2
    g1, g2 = q1 / denom, q2 / denom
    k, c = h.k + g1 * err, h.c + g2 * err
    h.p1, h.p2, h.p3 = h.p1 - g1 * q1, h.p2 - g1 * q2, h.p3 - g2 * q2
    if c < 0.0:
        # other applications add load, they never take any away: the fit is projected on
        # c >= 0 (k moves with c as their covariance says), so a meaning that needs a
        # negative load to follow the header errs, and is scored so
        k -= h.p2 / h.p3 * c if h.p3 > 0 else 0.0
        c = 0.0
    h.k, h.c = min(K_RANGE[1], max(K_RANGE[0], k)), c


def header_estimate(
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
    x = current_features(st, window_s)[best]
    if not (fresh and proven):
        # not (or no longer) shown to predict: the newest report itself, a level the
        # deployment has been at, or the best relation so far applied to our level now less
        # its own prediction error (it sees our charges since that report) may only raise
        # the reading
        projected = h.k * x + h.c - rmse if fresh else 0.0
        return max(st.obs or 0.0, projected), best, rmse, False
    # the margin is the fit's own uncertainty about the level now (not the header's noise)
    sigma = math.sqrt(max(0.0, x * x * h.p1 + 2 * x * h.p2 + h.p3))
    estimate = h.k * x + h.c
    if best < len(LAGS_S) + len(SMOOTHING_S) and abs(estimate - x) <= p.z * sigma:
        # a report of our own level that does not show our model wrong confirms it: the
        # model itself is read, with no margin (it is what `off` reads)
        return x, best, sigma, True
    return estimate + p.z * sigma, best, sigma, True


def window_plausible(st: FilterState, p: FilterParams) -> bool:
    """Whether a window meaning is still in the running: too few reports to tell, or a
    window hypothesis predicting about as well as the best of the others."""
    if st.n < RULE_OUT_N or st.first_obs is None or st.obs_at is None:
        return True
    first = len(LAGS_S) + len(SMOOTHING_S)
    window = min(h.e for h in st.hyps[first:])
    other = min(h.e for h in st.hyps[:first])
    # independent reports within the scores' horizon, and the log-likelihood ratio they give
    span = min(st.obs_at - st.first_obs, p.score_s)
    independent = min(float(st.n), span / ERROR_CORRELATION_S)
    log_odds = independent * (window - other) / (2.0 * max(other, TIMING))
    return log_odds < math.log(RULE_OUT_ODDS)


def header_delay_s(hypothesis: str) -> float | None:
    """The delay (or averaging time) a hypothesis name stands for; None for none."""
    for prefix, values in (("lag ", LAGS_S), ("avg ", SMOOTHING_S), ("window lag ", LAGS_S)):
        for value in values:
            if hypothesis == f"{prefix}{value:g}s":
                return value
    return None
