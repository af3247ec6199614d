"""The circuit breaker of one upstream deployment, as a state machine with no clock of its own.

closed ──trip──▶ open ──(open time over)──▶ half_open ──probe succeeds──▶ closed
                   ▲                            │
                   └──────probe fails───────────┘

It trips on any of:
- the failure rate over a sliding window (`window_s`, kept in `BUCKETS` buckets) reaching
  `failure_rate` once the window holds at least `min_calls` calls;
- a run of `min_calls` consecutive failures, so successes from before an outage (still
  in the window) cannot keep the circuit closed while every call fails;
- a 429 whose `retry-after` exceeds `throttle_grace_s` (the spillover wait): the
  deployment has said it is full for longer than anyone is willing to wait;
- an unreachable or misconfigured upstream (connection refused, DNS, 404), or a refused
  credential (401/403, outcome `credentials`): no request can succeed until an operator
  or the network fixes it. A `credentials` trip is this process's own (its key or
  token): `shared.py` keeps it out of Redis.

It stays open for the upstream's `retry-after` when one was given, else `open_s`
(capped at `max_open_s`; a throttled trip at `max_throttled_open_s`). Then exactly one
caller is let through as the probe; while it runs everyone else is rejected; a probe that
never reports is given up after `probe_timeout_s`. A 429 with a short `retry-after` is
load, not failure: it counts as neither. `adopt` folds in the state other processes shared
(see `shared.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]
Verdict = Literal["call", "probe", "reject"]
Outcome = Literal["ok", "error", "throttled", "unreachable", "credentials"]
Transition = Literal["opened", "closed"]

BUCKETS = 10
GAUGE = {"closed": 0, "half_open": 1, "open": 2}
"""A state as the number the `*_circuit_state` gauges show."""


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Thresholds and durations of one breaker."""

    failure_rate: float = 0.5
    min_calls: int = 5
    window_s: float = 30.0
    open_s: float = 10.0
    max_open_s: float = 300.0
    throttle_grace_s: float = 0.0
    probe_timeout_s: float = 30.0
    max_throttled_open_s: float = 5.0
    """A throttled trip opens for its retry-after, at most this long: a minute-window limiter
    (APIM token limits, standard deployments) asks up to 60 s, which is its window, not how
    long the deployment stays full; the estimate's own signals tell when room comes back."""

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must lie in (0, 1]")
        if self.min_calls < 1 or self.window_s <= 0 or self.open_s <= 0:
            raise ValueError("min_calls, window_s and open_s must be positive")
        if self.max_open_s < self.open_s or self.probe_timeout_s <= 0:
            raise ValueError("max_open_s must be at least open_s; probe_timeout_s positive")


class Breaker:
    """closed / open / half_open, driven by `allow`, `record` and `adopt` with `now` passed in."""

    __slots__ = (
        "_buckets",
        "_consecutive",
        "config",
        "epoch",
        "open_until",
        "probing_since",
        "reason",
        "state",
    )

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.state: State = "closed"
        self.open_until = 0.0
        self.probing_since: float | None = None
        self.reason = ""
        self.epoch = 0
        """Count of closings seen in the shared state (a newer one closes this copy too)."""
        self._buckets: dict[int, list[int]] = {}  # bucket index -> [calls, failures]
        self._consecutive = 0

    # -- decisions ---------------------------------------------------------------------

    def allow(self, now: float) -> Verdict:
        """May a call start now? `probe`: yes, as the one half-open trial call."""
        self.advance(now)
        if self.state == "open":
            return "reject"
        if self.state == "half_open":
            since = self.probing_since
            if since is not None and now - since < self.config.probe_timeout_s:
                return "reject"
            self.probing_since = now
            return "probe"
        return "call"

    def advance(self, now: float) -> bool:
        """Open becomes half-open once the open time is over; True when it just did.

        Every reader of `state` advances first: a process that only looks at the
        state (a worker lane deciding whether to take a message) would otherwise see
        `open` forever once the open time passed, and never send the probe.
        """
        if self.state == "open" and now >= self.open_until:
            self.state, self.probing_since = "half_open", None
            return True
        return False

    def open_left(self, now: float) -> float:
        """Seconds until the circuit may be probed (0 when closed or half-open)."""
        return max(0.0, self.open_until - now) if self.state == "open" else 0.0

    def record(
        self,
        now: float,
        outcome: Outcome,
        *,
        retry_after_s: float | None = None,
        probe: bool = False,
    ) -> Transition | None:
        """Fold one finished call in; the transition it caused, if any."""
        if outcome == "throttled" and (retry_after_s or 0.0) <= self.config.throttle_grace_s:
            if probe and self.state == "half_open":
                self.probing_since = None  # the deployment answers: let the next caller probe
            return None
        failed = outcome != "ok"
        if self.state == "half_open" and (probe or self.probing_since is None):
            if failed:
                return self._trip(now, outcome, retry_after_s)
            return self._close()
        if self.state == "open":
            seconds = self._open_for(outcome, retry_after_s)
            if failed and retry_after_s is not None and now + seconds > self.open_until:
                self.open_until = now + seconds
            return None
        self._count(now, failed)
        if outcome in ("throttled", "unreachable", "credentials"):
            return self._trip(now, outcome, retry_after_s)
        if failed and self._tripping(now):
            return self._trip(now, outcome, retry_after_s)
        return None

    def trip(self, now: float, seconds: float, reason: str) -> None:
        """Open for `seconds` (never shortening a longer open time)."""
        until = now + min(max(seconds, 0.0), self.config.max_open_s)
        if self.state != "open" or until > self.open_until:
            self.open_until = until
        self.state, self.probing_since, self.reason = "open", None, reason

    def adopt(self, now: float, state: State, open_left_s: float, epoch: int) -> None:
        """Take in the shared state: open there is open here; a newer closing closes here."""
        if state == "open":
            self.trip(now, open_left_s, self.reason or "shared")
        elif state == "half_open":
            if self.state == "closed":
                self.state, self.probing_since = "half_open", None
            elif self.state == "open":
                self.open_until = min(self.open_until, now)
                self.advance(now)
        elif epoch > self.epoch and self.state != "closed":
            self._close()
        self.epoch = max(self.epoch, epoch)

    # -- internals ---------------------------------------------------------------------

    def _open_for(self, outcome: Outcome, retry_after_s: float | None) -> float:
        seconds = retry_after_s if retry_after_s is not None else self.config.open_s
        if outcome == "throttled":
            seconds = min(seconds, self.config.max_throttled_open_s)
        return min(seconds, self.config.max_open_s)

    def _trip(self, now: float, outcome: Outcome, retry_after_s: float | None) -> Transition:
        self.trip(now, self._open_for(outcome, retry_after_s), outcome)
        return "opened"

    def _close(self) -> Transition:
        self.state, self.probing_since, self.reason = "closed", None, ""
        self.open_until = 0.0
        self._buckets.clear()
        self._consecutive = 0
        return "closed"

    def _count(self, now: float, failed: bool) -> None:
        width = self.config.window_s / BUCKETS
        index = int(now // width)
        for old in [i for i in self._buckets if i <= index - BUCKETS]:
            del self._buckets[old]
        bucket = self._buckets.setdefault(index, [0, 0])
        bucket[0] += 1
        bucket[1] += int(failed)
        self._consecutive = self._consecutive + 1 if failed else 0

    def _tripping(self, now: float) -> bool:
        if self._consecutive >= self.config.min_calls:
            return True
        calls = sum(b[0] for b in self._buckets.values())
        failures = sum(b[1] for b in self._buckets.values())
        return calls >= self.config.min_calls and failures >= self.config.failure_rate * calls

    def __repr__(self) -> str:
        calls = sum(b[0] for b in self._buckets.values())
        failures = sum(b[1] for b in self._buckets.values())
        return (
            f"<Breaker state={self.state} open_until={self.open_until:.3f} "
            f"window={failures}/{calls} consecutive={self._consecutive} reason={self.reason!r}>"
        )
