"""The circuit breaker as a pure state machine, from tables (no clock, no Redis)."""

from __future__ import annotations

import pytest

from orchestrator.breaker.machine import Breaker, BreakerConfig, Outcome

CFG = BreakerConfig(
    failure_rate=0.5, min_calls=4, window_s=10.0, open_s=5.0, max_open_s=60.0,
    throttle_grace_s=0.5, probe_timeout_s=3.0,
)  # fmt: skip

# (now, outcome, retry_after_s) steps, then the expected state and open_until
CASES: list[tuple[str, list[tuple[float, Outcome, float | None]], str, float]] = [
    ("three failures stay closed", [(t, "error", None) for t in (1, 2, 3)], "closed", 0.0),
    ("four in a row open", [(t, "error", None) for t in (1, 2, 3, 4)], "open", 9.0),
    (
        "rate: 2 of 4 opens",
        [(1, "ok", None), (2, "error", None), (3, "ok", None), (4, "error", None)],
        "open", 9.0,
    ),
    (
        "rate below threshold stays closed",
        [(1, "ok", None), (2, "ok", None), (3, "error", None), (4, "ok", None)],
        "closed", 0.0,
    ),
    (
        "old successes slide out of the window",
        [*[(t, "ok", None) for t in (0, 0.5, 1)], (11.5, "error", None), (11.6, "ok", None),
         (11.7, "ok", None), (11.8, "error", None)],
        "open", 16.8,
    ),
    ("short 429 is load, not failure", [(1, "throttled", 0.2)] * 6, "closed", 0.0),
    ("429 beyond the grace opens for its retry-after", [(1, "throttled", 4.0)], "open", 5.0),
    ("a minute-window 429 opens for max_throttled_open_s", [(1, "throttled", 54.0)], "open", 6.0),
    ("a failure's retry-after is capped at max_open_s", [(2, "unreachable", 3600.0)], "open", 62.0),
    ("unreachable opens at once", [(2, "unreachable", None)], "open", 7.0),
]  # fmt: skip


@pytest.mark.parametrize(("name", "steps", "state", "until"), CASES, ids=[c[0] for c in CASES])
def test_transitions(
    name: str, steps: list[tuple[float, Outcome, float | None]], state: str, until: float
) -> None:
    b = Breaker(CFG)
    for now, outcome, retry_after in steps:
        assert b.allow(now) == "call"
        b.record(now, outcome, retry_after_s=retry_after)
    assert b.state == state
    assert b.open_until == pytest.approx(until)


def test_a_throttled_call_that_ends_while_open_extends_it_as_long() -> None:
    b = Breaker(CFG)
    b.record(1, "throttled", retry_after_s=54)
    b.record(3, "throttled", retry_after_s=54)  # started before the trip, ended after it
    assert b.open_until == pytest.approx(3 + CFG.max_throttled_open_s)


def _opened(now: float = 0.0) -> Breaker:
    b = Breaker(CFG)
    b.record(now, "unreachable")
    return b


def test_open_rejects_until_its_time_then_lets_one_probe() -> None:
    b = _opened()
    assert [b.allow(t) for t in (1.0, 4.9)] == ["reject", "reject"]
    assert b.allow(5.0) == "probe" and b.state == "half_open"
    assert b.allow(5.1) == "reject"  # one probe at a time
    assert b.allow(8.1) == "probe"  # the first probe never reported: given up after 3 s


def test_an_open_time_that_is_over_reads_as_half_open_without_a_call() -> None:
    b = Breaker(CFG)
    b.adopt(0.0, "open", 5.0, 0)  # adopted from another process, never called here
    assert not b.advance(4.9) and b.state == "open"
    assert b.advance(5.0) and b.state == "half_open"
    assert b.allow(5.0) == "probe"


@pytest.mark.parametrize(
    ("outcome", "state", "until"),
    [("ok", "closed", 0.0), ("error", "open", 11.0), ("unreachable", "open", 11.0)],
)
def test_probe_result_closes_or_reopens(outcome: Outcome, state: str, until: float) -> None:
    b = _opened()
    assert b.allow(6.0) == "probe"
    assert b.record(6.0, outcome, probe=True) == ("closed" if state == "closed" else "opened")
    assert (b.state, b.open_until) == (state, until)


def test_closing_clears_the_window() -> None:
    b = _opened()
    b.allow(5.0)
    b.record(5.0, "ok", probe=True)
    for t in (6.0, 7.0, 8.0):
        b.record(t, "error")
    assert b.state == "closed"  # three fresh failures, not seven


@pytest.mark.parametrize(
    ("local", "shared", "left", "epoch", "state", "until"),
    [
        ("closed", "open", 4.0, 0, "open", 14.0),
        ("closed", "half_open", 0.0, 0, "half_open", 0.0),
        ("open", "half_open", 0.0, 0, "half_open", 10.0),  # shared says the time is over
        ("open", "closed", 0.0, 1, "closed", 0.0),  # someone's probe succeeded
        ("open", "closed", 0.0, 0, "open", 15.0),  # same epoch: our own trip not shared yet
    ],
)
def test_adopt_the_shared_state(
    local: str, shared: str, left: float, epoch: int, state: str, until: float
) -> None:
    b = Breaker(CFG)
    if local == "open":
        b.record(10.0, "unreachable")
    b.adopt(10.0, shared, left, epoch)  # type: ignore[arg-type]
    assert (b.state, b.open_until) == (state, pytest.approx(until))


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(failure_rate=0.0)
    with pytest.raises(ValueError):
        BreakerConfig(open_s=10.0, max_open_s=5.0)
